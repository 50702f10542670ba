"""The out-of-process worker (``flask modelguard worker``): reads the query
events every serving process publishes to the Redis stream and runs the
same pipeline the embedded worker thread runs (account states, detectors,
the flag policy, the query log, merges, refits). Framework-free.

The main thread reads the stream; an :class:`~flask_modelguard.worker.EventWorker`
thread judges and writes in batches, with its retries, backoff and spill. An
entry is acknowledged once its row is written (or dropped and counted, or
spilled at shutdown): a worker killed mid-batch leaves its entries pending
and reads them again when it restarts; entries another consumer left pending
for ``claim_idle`` seconds are taken over.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .events import QueryEvent
from .stream import Entry, EventStream, decode
from .worker import EventWorker, Row

log = logging.getLogger("flask_modelguard")

Item = tuple[bytes, Entry]


class StreamConsumer:
    """Feeds stream entries through ``prepare`` (event → row) and ``write`` (rows)."""

    def __init__(self, stream: EventStream, prepare: Callable[[QueryEvent], Row],
                 write: Callable[[Sequence[Row]], None], adapters: Mapping[str, Any], *, consumer: str,
                 claim_idle: float = 60.0, **worker: Any) -> None:
        self.stream = stream
        self._prepare_event = prepare
        self._write_rows = write
        self.adapters = adapters
        self.consumer = consumer
        self.claim_idle = claim_idle
        self.worker: EventWorker[Item] = EventWorker(
            self._prepare, self._write, discard=self._discard, spill=self._leave_pending, name="modelguard-consumer",
            **worker)
        self._acks: list[bytes] = []  # entries done whose acknowledgement failed: retried by the reading thread
        self._acked: list[bytes] = []  # entries acknowledged, for the reading thread to forget
        self._acks_lock = threading.Lock()
        self._unacked: set[bytes] = set()
        #: Entries read from the stream, and Redis errors met reading it.
        self.consumed = 0
        self.errors = 0

    # -- the worker thread ---------------------------------------------------------------

    def _prepare(self, item: Item) -> Row:
        entry_id, entry = item
        try:
            row = self._prepare_event(decode(entry, self.adapters))
        except Exception:
            self._done([entry_id])  # dropped and counted by the worker: not to be read again
            raise
        row["_entry"] = entry_id
        return row

    def _write(self, rows: Sequence[Row]) -> None:
        self._write_rows(rows)
        self._done([row["_entry"] for row in rows if "_entry" in row])

    def _discard(self, row: Row) -> None:
        if "_entry" in row:
            self._done([row["_entry"]])

    def _done(self, ids: list[bytes]) -> None:
        """Acknowledge at once (the window in which a killed worker leaves written
        rows to be written again is one round trip); the reading thread retries
        what Redis refused, and forgets what is acknowledged."""
        try:
            self.stream.done(ids)
        except Exception:
            with self._acks_lock:
                self._acks.extend(ids)
            return
        with self._acks_lock:
            self._acked.extend(ids)

    # -- the reading thread --------------------------------------------------------------

    def run(self, stop: threading.Event, limit: int | None = None) -> int:
        """Consume until ``stop`` is set (or ``limit`` entries were read and
        written); flush, spill what storage refuses, acknowledge; returns the
        entries read."""
        self.stream.join()
        self.worker.start()
        self._take(self.stream.read(self.consumer, self.worker.batch_size, 0, pending=True), pending=True)
        next_claim = time.monotonic() + self.claim_idle / 2
        backoff = 0.0
        while not stop.is_set() and (limit is None or self.consumed < limit):
            try:
                self._acknowledge()
                if self.worker.depth >= self.worker.batch_size:
                    stop.wait(0.01)  # the worker thread is behind: leave the entries in Redis
                    continue
                if time.monotonic() >= next_claim:
                    next_claim = time.monotonic() + self.claim_idle / 2
                    self._take(self.stream.claim(self.consumer, self.claim_idle, self.worker.batch_size))
                self._take(self.stream.read(self.consumer, self.worker.batch_size, 0.5))
                backoff = 0.0
            except Exception as exc:  # Redis away: retried with backoff, nothing read is lost
                backoff = self._failed(exc, backoff)
                stop.wait(backoff)
        self.close()
        return self.consumed

    def _take(self, items: list[Item], pending: bool = False) -> None:
        for entry_id, entry in items:
            if entry_id in self._unacked:
                continue  # still in this process's queue
            self._unacked.add(entry_id)
            self.consumed += 1
            self.worker.submit((entry_id, entry), sum(len(v) for v in entry.values()))
        if pending and items:
            log.warning("modelguard: %d events this worker read before it stopped are judged again", len(items))

    def _acknowledge(self) -> None:
        with self._acks_lock:
            ids, self._acks = self._acks, []
            acked, self._acked = self._acked, []
        self._unacked.difference_update(acked)
        if ids:
            try:
                self.stream.done(ids)
            except Exception:
                with self._acks_lock:
                    self._acks[:0] = ids
                raise
            self._unacked.difference_update(ids)

    def _failed(self, exc: BaseException, backoff: float) -> float:
        self.errors += 1
        backoff = min(5.0, max(0.1, backoff * 2))
        if self.errors == 1 or self.errors % 100 == 0:
            log.warning("modelguard: reading the event stream failed (%s: %s); retrying in %.1f s",
                        exc.__class__.__name__, exc, backoff)
        return backoff

    def close(self) -> None:
        """Write what was read and acknowledge it; what storage refuses now
        stays pending in the stream, for the next worker to judge."""
        self.worker.stop()
        try:
            self._acknowledge()
        except Exception as exc:
            log.warning("modelguard: could not acknowledge written events (%s); they will be judged again",
                        exc.__class__.__name__)
        if self._unacked:
            log.warning("modelguard: %d events not written stay pending in the stream for the next worker",
                        len(self._unacked))

    @staticmethod
    def _leave_pending(rows: list[Row]) -> None:
        """The final flush's spill: unacknowledged entries stay in the stream."""

    def stats(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "stream_errors": self.errors, **self.worker.stats()}
