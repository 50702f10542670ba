"""The in-process worker: a bounded queue and one background thread that writes
query events in batches. Framework-free.

- The request path calls :meth:`EventWorker.submit`, which appends to a deque
  (no lock, no I/O) or, when the queue is full, counts the event as dropped.
- The thread starts lazily on the first submit in each process, so it is safe
  under gunicorn's pre-fork model: a forked child starts its own thread and
  does not inherit the parent's queued events.
- A failed write is retried with exponential backoff (capped at
  ``max_backoff``, 5 s); while it waits, a cheap ``probe`` (a ``SELECT 1``)
  runs every second and cuts the wait short once storage answers. The batch
  stays in memory until it is written; the queue is bounded in items
  (``max_queue``) and in bytes of request bodies (``max_bytes``).
- A batch the storage refuses for good (bad data, not an outage) is halved
  until the offending rows are found; they are dropped and counted.
- :meth:`flush` writes everything now; it runs at interpreter exit too. What
  a final flush cannot write goes to ``spill`` (a local file, replayed at the
  next start) or, without one, is counted in ``dropped``, with one log line.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from . import lifecycle

log = logging.getLogger("flask_modelguard")

E = TypeVar("E")
Row = dict[str, Any]

class EventWorker(Generic[E]):
    """Batches items from the request path into ``write`` on a background thread."""

    def __init__(
        self,
        prepare: Callable[[E], Row],
        write: Callable[[Sequence[Row]], None],
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
        max_backoff: float = 5.0,
        max_bytes: int = 64 * 2**20,
        shutdown_timeout: float = 5.0,
        probe: Callable[[], bool] | None = None,
        spill: Callable[[list[Row]], Any] | None = None,
        permanent: Callable[[BaseException], bool] = lambda exc: False,
        on_tick: Callable[[], None] | None = None,
        tick_interval: float = 30.0,
        discard: Callable[[Row], None] | None = None,
        name: str = "modelguard-worker",
    ) -> None:
        self.prepare = prepare
        self.write = write
        #: Whether a write error is the data's fault (retrying cannot help).
        self.permanent = permanent
        #: Told of each row dropped because storage refused it for good.
        self.discard = discard
        #: Called from the thread every ``tick_interval`` seconds (refreshing caches).
        self.on_tick = on_tick
        self.tick_interval = tick_interval
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_backoff = max_backoff
        self.max_bytes = max_bytes
        #: Whether storage answers again (called at most every second during a backoff).
        self.probe = probe
        #: Where rows a final flush could not write go (None: counted as dropped).
        self.spill = spill
        #: Rows spilled at shutdown.
        self.spilled = 0
        self.shutdown_timeout = shutdown_timeout
        self.name = name
        #: Queue depth at which submit() starts yielding to the worker thread.
        self._behind = max(1, min(batch_size, max_queue // 4))
        #: Items refused because the queue was full, or lost to a bad item.
        self.dropped = 0
        #: Rows written to storage.
        self.written = 0
        #: Failed write attempts (each retried).
        self.failures = 0
        self._init_process_state()
        lifecycle.after_fork(self._init_process_state)
        lifecycle.at_exit(self._flush_at_exit)

    def _init_process_state(self) -> None:
        self._queue: deque[tuple[E, int]] = deque()  # items and their sizes in bytes
        self._counts = threading.Lock()  # dropped and _bytes change in request threads and this one
        self._bytes = 0
        self._pending: list[Row] = []  # prepared rows whose write failed
        self._next_probe = 0.0
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._start_lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._backoff = 0.0
        self._retry_at = 0.0
        self._stopping = False

    # -- request path -----------------------------------------------------------

    def submit(self, item: E, size: int = 0) -> bool:
        """Queue ``item`` (``size``: about what it holds, in bytes); False (and
        counted in :attr:`dropped`) if the queue is full."""
        if self._pid != os.getpid():
            self._start()
        depth = len(self._queue) + len(self._pending)
        with self._counts:
            full = depth >= self.max_queue or (size and self._bytes + size > self.max_bytes)
            if not full:
                self._bytes += size
        if full:
            dropped = self.count_dropped()
            if dropped == 1 or dropped % 1000 == 0:
                log.warning("modelguard: event queue full, %d events dropped so far", dropped)
            return False
        self._queue.append((item, size))
        if depth >= self._behind:
            # Backpressure. A request thread that never blocks (and releases the
            # GIL only briefly, in numpy or the database driver) can starve this
            # thread for seconds; yielding the GIL here lets it run.
            self._wake.set()
            time.sleep(0)
        return True

    # -- thread -----------------------------------------------------------------

    @property
    def depth(self) -> int:
        return len(self._queue) + len(self._pending)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        """Run the thread in this process now (it otherwise starts with the
        first item): for ticks that must come without traffic."""
        if self._pid != os.getpid():
            self._start()

    def _start(self) -> None:
        self._check_process()
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic()  # the first tick as the thread starts
        next_drain = time.monotonic() + self.flush_interval
        while not self._stopping:
            try:
                if self.on_tick is not None and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_interval
                    self.on_tick()
            except Exception:
                log.exception("modelguard: worker tick error")
            due = min(next_drain, next_tick if self.on_tick is not None else next_drain)
            woken = self._wake.wait(max(0.0, min(self.flush_interval, due - time.monotonic())))
            self._wake.clear()
            try:
                if woken or time.monotonic() >= next_drain:
                    next_drain = time.monotonic() + self.flush_interval
                    self._probe()
                    self._drain()
            except Exception:
                log.exception("modelguard: worker loop error")

    def _probe(self) -> None:
        """During a backoff, ask storage (at most every second) whether it is back."""
        now = time.monotonic()
        if self.probe is None or now >= self._retry_at or now < self._next_probe:
            return
        self._next_probe = now + 1.0
        try:
            back = self.probe()
        except Exception:
            back = False
        if back:
            self._retry_at = 0.0

    def _check_process(self) -> None:
        if self._pid is not None and self._pid != os.getpid():
            # A forked child: the parent's thread and queued events are not ours.
            self._init_process_state()

    def _write(self, batch: list[Row]) -> None:
        """Write ``batch``; rows the storage refuses for good (``permanent``
        errors: bad data, not an outage) are isolated by halving, dropped and
        counted, and the rest is written."""
        try:
            self.write(batch)
        except Exception as exc:
            if not self.permanent(exc):
                raise
            if len(batch) == 1:
                self.count_dropped()
                if self.discard is not None:
                    self.discard(batch[0])
                log.error("modelguard: an event was refused by the database and dropped (%s)", _brief(exc))
                return
            half = len(batch) // 2
            self._write(batch[:half])
            self._write(batch[half:])
            return
        self.written += len(batch)

    def _drain(self, force: bool = False, timeout: float = -1) -> bool:
        """Write queued items in batches; True when everything was written."""
        if not self._drain_lock.acquire(timeout=timeout):
            return False
        try:
            while True:
                if not force and time.monotonic() < self._retry_at:
                    return False
                batch = self._pending
                queue = self._queue
                while len(batch) < self.batch_size and queue:
                    item, size = queue.popleft()
                    if size:
                        with self._counts:
                            self._bytes -= size
                    try:
                        batch.append(self.prepare(item))
                    except Exception:
                        self.count_dropped()
                        log.exception("modelguard: could not prepare an event; dropped")
                self._pending = batch
                if not batch:
                    return True
                try:
                    self._write(batch)
                except Exception as exc:
                    self.failures += 1
                    self._backoff = min(self.max_backoff, max(0.1, self._backoff * 2))
                    self._retry_at = time.monotonic() + self._backoff
                    log.warning(
                        "modelguard: writing %d events failed (%s); retrying in %.1fs",
                        len(batch), _brief(exc), self._backoff,
                    )
                    return False
                self._pending = []
                self._backoff = 0.0
                self._retry_at = 0.0
        finally:
            self._drain_lock.release()

    def flush(self, timeout: float | None = None) -> bool:
        """Write everything queued now, retrying until ``timeout`` (default
        ``shutdown_timeout``) seconds; True if nothing is left (what is left
        stays queued)."""
        self._check_process()
        deadline = time.monotonic() + (self.shutdown_timeout if timeout is None else timeout)
        while True:
            if self._drain(force=True, timeout=max(0.0, deadline - time.monotonic())):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(self._backoff or 0.1, max(0.0, deadline - time.monotonic())))

    def final_flush(self, timeout: float | None = None) -> bool:
        """:meth:`flush`, then spill what is left (or count it as dropped),
        with one log line: the last thing a process does with its events."""
        if self.flush(timeout):
            return True
        with self._drain_lock:
            rows, self._pending = self._pending, []
            while self._queue:
                item, _ = self._queue.popleft()
                try:
                    rows.append(self.prepare(item))
                except Exception:
                    self.count_dropped()
            with self._counts:
                self._bytes = 0
        if self.spill is not None:
            try:
                self.spill(rows)
                self.spilled += len(rows)
                log.error("modelguard: storage unreachable at shutdown: %d events spilled, to be written at "
                          "the next start", len(rows))
                return False
            except Exception as exc:
                log.error("modelguard: could not spill events (%s)", _brief(exc))
        self.count_dropped(len(rows))
        log.error("modelguard: storage unreachable at shutdown: %d events lost (counted in dropped)", len(rows))
        return False

    def replay(self, rows: list[Row]) -> None:
        """Rows spilled by an earlier process: written with the next batch."""
        with self._drain_lock:
            self._pending.extend(rows)
        self._wake.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Flush and stop the thread (it restarts on the next submit)."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)
        ok = self.final_flush(timeout)
        self._stopping = False
        self._pid = None
        self._thread = None
        return ok

    def count_dropped(self, n: int = 1) -> int:
        """Count ``n`` events lost; returns the count so far."""
        with self._counts:
            self.dropped += n
            return self.dropped

    def _flush_at_exit(self) -> None:
        if self.depth and self._pid == os.getpid():
            self.final_flush()

    def stats(self) -> dict[str, Any]:
        return {
            "alive": self.alive,
            "queue_depth": self.depth,
            "dropped": self.dropped,
            "spilled": self.spilled,
            "written": self.written,
            "write_failures": self.failures,
        }


def _brief(exc: BaseException) -> str:
    """An exception in one line, without the statement's parameters."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {first[:200]}"
