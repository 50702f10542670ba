"""Query events over a Redis stream (``MODELGUARD_EVENTS = "redis://..."``):
serving processes publish them, ``flask modelguard worker`` consumes them
with a consumer group. Framework-free.

- An event is one stream entry of byte fields: ``h`` a small JSON header
  (account, key, route, time, status, latency, cost, canary, watermark
  answers, the inputs' fingerprints), ``b`` the request body as received,
  ``o`` the answer as served, ``p`` the model's own answer when protection
  changed it. The serving process encodes nothing it already holds as bytes.
- Publishing is one pipelined round trip per batch (from the serving
  process's background thread, never a request); it also reads the stream's
  length. Consumed entries are acknowledged and deleted, so the length is the
  backlog; once it reaches ``max_backlog`` (no worker is reading) publishers
  stop adding and count what they refuse as dropped.
- Delivery is at least once: an entry is acknowledged after its row is
  written; a worker that dies leaves its entries pending, and the next one
  (or another after ``claim_idle`` seconds) takes them over.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .events import QueryEvent
from .spill import jsonable

log = logging.getLogger("flask_modelguard")

#: A stream entry: field name → bytes (names are bytes as Redis returns them, str as encoded).
Entry = dict[Any, bytes]

#: The consumer group every ``flask modelguard worker`` reads in.
GROUP = "modelguard-workers"

#: Seconds a Redis call may take before it counts as failed.
TIMEOUT = 2.0


def _dumps(value: Any) -> bytes:
    return json.dumps(value, default=jsonable, separators=(",", ":")).encode()


def encode(event: QueryEvent) -> Entry:
    """The stream entry of ``event`` (in the serving process's worker thread)."""
    header = [event.account_id, event.key_id, event.route, event.ts, event.status, event.latency_ms,
              event.n_instances, event.canary, event.marks or None, event.fingerprints]
    entry: Entry = {"h": _dumps(header)}
    if event.request_json is not None:
        entry["b"] = event.raw_body if event.raw_body is not None else _dumps(event.request_json)
    served = event.response_json
    if served is not None:
        entry["o"] = bytes(served) if isinstance(served, (bytes, bytearray)) else _dumps(served)
    if event.model_json is not None:
        entry["p"] = _dumps(event.model_json)
    if event.client is not None:
        entry["c"] = event.client.encode(errors="replace")
    return entry


def decode(entry: Mapping[Any, bytes], adapters: Mapping[str, Any]) -> QueryEvent:
    """The event of a stream entry; ``adapters``: route name → its payload adapter."""
    entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
    (account_id, key_id, route, ts, status, latency_ms, cost, canary, marks,
     fingerprints) = json.loads(entry["h"])
    body, model, client = entry.get("b"), entry.get("p"), entry.get("c")
    return QueryEvent(
        int(account_id), int(key_id), str(route), float(ts), int(status), float(latency_ms), int(cost),
        json.loads(body) if body is not None else None, entry.get("o"),
        [tuple(mark) for mark in marks] if marks else [], bool(canary),
        json.loads(model) if model is not None else None, adapters.get(route),
        fingerprints=fingerprints, raw_body=body, client=None if client is None else client.decode(errors="replace"),
    )


def _client(url: str) -> Any:
    try:
        import redis
    except ImportError:  # pragma: no cover - an install without the redis extra
        raise RuntimeError("MODELGUARD_EVENTS is a Redis URL but the redis package is missing: "
                           "pip install 'flask-modelguard[redis]'") from None
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


class EventStream:
    """One Redis stream of query events (``name``) and its consumer group."""

    def __init__(self, url: str, name: str, *, max_backlog: int = 1_000_000, client: Any = None) -> None:
        self.url = url
        self.name = name
        self.max_backlog = max_backlog
        self.client = client if client is not None else _client(url)
        #: The stream's length at the last publish (what no worker has consumed yet).
        self.backlog = 0
        #: Entries published, and refused because the backlog was full.
        self.published = 0
        self.refused = 0

    # -- publishers ---------------------------------------------------------------------

    def publish(self, entries: Sequence[Entry]) -> int:
        """Add ``entries`` in one round trip; returns how many were refused
        because the backlog was full (they are not added)."""
        pipe = self.client.pipeline(transaction=False)
        full = self.backlog >= self.max_backlog
        if not full:
            for entry in entries:
                pipe.xadd(self.name, entry)
        pipe.xlen(self.name)
        self.backlog = int(pipe.execute()[-1])
        if full:
            self.refused += len(entries)
            return len(entries)
        self.published += len(entries)
        return 0

    def readers(self) -> dict[str, Any]:
        """The consumer group as publishers see it: ``{"group", "consumers",
        "active", "backlog"}`` (``active``: consumers seen in the last 60 s; a
        worker busy with a long refit or behind on its writes reads less often)."""
        backlog = int(self.client.xlen(self.name))
        groups = {_text(g["name"]): g for g in self.client.xinfo_groups(self.name)} if backlog else {}
        if backlog and GROUP not in groups:
            return {"group": False, "consumers": 0, "active": 0, "backlog": backlog}
        consumers = self.client.xinfo_consumers(self.name, GROUP) if GROUP in groups else []
        active = sum(1 for c in consumers if int(c.get("inactive", c.get("idle", 0)) or 0) < 60_000)
        return {"group": True, "consumers": len(consumers), "active": active, "backlog": backlog}

    # -- the consumer --------------------------------------------------------------------

    def join(self) -> None:
        """Create the consumer group (from the stream's start, so that what was
        published before any worker ran is read too); nothing if it exists."""
        try:
            self.client.xgroup_create(self.name, GROUP, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, count: int, block: float, pending: bool = False) -> list[tuple[bytes, Entry]]:
        """Up to ``count`` new entries for ``consumer`` (waiting up to ``block``
        seconds), or, with ``pending``, those it read before and did not acknowledge."""
        found = self.client.xreadgroup(GROUP, consumer, {self.name: "0" if pending else ">"}, count=count,
                                       block=None if pending else max(1, int(block * 1000)))
        return [(entry_id, fields) for _, entries in found or () for entry_id, fields in entries if fields]

    def claim(self, consumer: str, idle: float, count: int) -> list[tuple[bytes, Entry]]:
        """Entries other consumers read and left unacknowledged for ``idle`` seconds."""
        found = self.client.xautoclaim(self.name, GROUP, consumer, int(idle * 1000), "0-0", count=count)
        return [(entry_id, fields) for entry_id, fields in found[1] if fields]

    def done(self, ids: Sequence[bytes]) -> None:
        """Acknowledge and delete consumed entries (one round trip)."""
        if ids:
            pipe = self.client.pipeline(transaction=False)
            pipe.xack(self.name, GROUP, *ids)
            pipe.xdel(self.name, *ids)
            pipe.execute()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def consumer_name() -> str:
    """This host's consumer name: a restarted worker finds its own pending entries."""
    return socket.gethostname()


def route_adapters(view_functions: Mapping[str, Callable[..., Any]]) -> dict[str, Any]:
    """Route name → payload adapter of every ``@protect``-ed view (the worker
    reads answers as the serving process did)."""
    found: dict[str, Any] = {}
    for endpoint, view in view_functions.items():
        options = getattr(view, "__modelguard__", None)
        if options is not None:
            found[options.name or endpoint] = options.adapter
    return found
