"""The serving processes' side of ``MODELGUARD_EVENTS = "redis://..."``: their
worker thread only encodes query events and publishes them to the stream
(one round trip per batch); detection runs in ``flask modelguard worker``.
Framework-free.

Nothing goes unnoticed: events the stream refuses (its backlog full) are
dropped and counted; what cannot be published at shutdown is spilled (kind
``entries``) and published by the next process; and every tick asks
whether a worker reads the stream, so health and the log say when none does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .events import QueryEvent
from .spill import SpillDirectory
from .stream import Entry, EventStream, encode
from .worker import EventWorker

log = logging.getLogger("flask_modelguard")

#: The spill files' kind for stream entries (query-log rows are "events").
SPILL_KIND = "entries"


class Publisher:
    """An :class:`EventWorker` that publishes to ``stream``, and what it knows of the stream's readers."""

    def __init__(self, stream: EventStream, spill: SpillDirectory | None, **worker: Any) -> None:
        self.stream = stream
        self.spill = spill
        self.worker: EventWorker[QueryEvent] = EventWorker(
            encode, self._publish, probe=self._ping, name="modelguard-publisher",
            spill=None if spill is None else (lambda rows: spill.write(rows, SPILL_KIND)), **worker)
        #: The consumer group at the last check (see :meth:`EventStream.readers`).
        self.readers: dict[str, Any] = {}
        self._warned = False

    def _publish(self, entries: Any) -> None:
        refused = self.stream.publish(entries)
        if refused:
            dropped = self.worker.count_dropped(refused)
            if dropped == refused or dropped % 10_000 < refused:
                log.error("modelguard: the event stream %s holds %d unconsumed events (MODELGUARD_EVENTS_BACKLOG): "
                          "%d events dropped so far; is `flask modelguard worker` running?",
                          self.stream.name, self.stream.backlog, dropped)

    def _ping(self) -> bool:
        return bool(self.stream.client.ping())

    def replay_spilled(self) -> None:
        """Entries an earlier process could not publish: published with the next batch."""
        rows: list[Entry] | list[dict[str, Any]] = self.spill.claim(SPILL_KIND) if self.spill is not None else []
        if rows:
            self.worker.replay(list(rows))
            log.warning("modelguard: %d events spilled by an earlier process are being published", len(rows))

    def check_readers(self, warn: Callable[..., None] = log.warning) -> None:
        """Whether a worker reads the stream; says so once when none does while
        events wait, or when the stream cannot be reached, and once when it is back."""
        try:
            self.readers = self.stream.readers()
        except Exception as exc:
            self.readers = {"error": exc.__class__.__name__}
        problem = self.problem
        if problem and not self._warned:
            warn("modelguard: %s: nothing is judged meanwhile (docs/deployment.md)", problem)
        elif not problem and self._warned:
            log.warning("modelguard: a worker reads the event stream %s again", self.stream.name)
        self._warned = problem is not None

    @property
    def unread(self) -> bool:
        """Events wait in the stream and no consumer was active in the last 60 s."""
        return bool(self.readers.get("backlog")) and not self.readers.get("active")

    @property
    def problem(self) -> str | None:
        """Why events are not being judged, at the last check (None: a worker reads them)."""
        if "error" in self.readers:
            return (f"the event stream {self.stream.name} cannot be reached ({self.readers['error']}); events wait "
                    f"in this process's queue ({self.worker.depth} now)")
        if self.unread:
            return (f"no `flask modelguard worker` reads the event stream {self.stream.name} "
                    f"({self.readers['backlog']} events waiting)")
        return None

    def status(self) -> dict[str, Any]:
        problem = self.problem
        return {"mode": "stream", "stream": self.stream.name, "why": problem or "judged by `flask modelguard worker`",
                **self.readers}

    def stats(self) -> dict[str, Any]:
        return {"stream_backlog": self.stream.backlog, "stream_published": self.stream.published,
                "stream_refused": self.stream.refused, "stream_readers": self.readers.get("active")}
