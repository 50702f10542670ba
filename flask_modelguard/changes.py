"""Flags, blocks, tier changes, rotations and revocations take effect in every
process within a second. Framework-free.

Whatever changes an account's or a key's standing writes a row to
``modelguard_account_changes`` in the same transaction (the flag policy's
catches, operators' changes, key rotation and revocation). Each serving
process reads the rows after the last one it saw, every :data:`POLL_EVERY`
seconds, in a thread of its own (one indexed range query, usually empty; a
long merge or refit in the worker thread never delays it), and drops what its
key cache holds of those accounts and keys, so the next request reads them
fresh.

Ids are handed out when a row is inserted, not when its transaction commits,
so a row can become visible after a higher id was read: ids skipped by a read
are asked for again for :data:`GAP_WAIT` seconds (a rolled-back insert leaves
a gap that is never filled), and the first read starts :data:`MAX_GAPS` ids
before the newest. A read that fails loses nothing either: the next
one starts after the last id read. So while the feed is read, cached keys
stay fresh beyond the key cache's TTL; the TTL is the bound when it cannot be.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from .keycache import FeedWatch
from .repository import Repository

log = logging.getLogger("flask_modelguard")

#: Seconds between two reads of the change feed.
POLL_EVERY = 0.5
#: Rows of the feed older than this (seconds) are purged by the worker's tick.
KEEP = 3600.0
#: Seconds an id skipped by a read is looked for again (a transaction still committing).
GAP_WAIT = 60.0
#: Ids skipped by reads that are looked for at most (the newest), and how far
#: back the first read looks (ids below the newest that may still be committing).
MAX_GAPS = 1000


class ChangeFeed:
    """Reads the feed and tells ``forget(account_id, prefix)`` of each change."""

    def __init__(self, repository: Repository, forget: Callable[[int | None, str | None], None],
                 watch: FeedWatch | None = None) -> None:
        self.repository = repository
        self.forget = forget
        #: When the feed was last read (what the key cache trusts).
        self.watch = watch or FeedWatch()
        self._last: int | None = None
        self._gaps: dict[int, float] = {}  # id skipped → when it was first missed (monotonic)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._stop = threading.Event()
        #: Changes applied in this process.
        self.applied = 0

    def reset_in_child(self) -> None:
        """A forked child: the parent's thread is not running here (the last id read stays)."""
        self._lock = threading.Lock()
        self._thread, self._pid = None, None

    # -- the thread -------------------------------------------------------------------

    def start(self) -> None:
        """Read the feed every :data:`POLL_EVERY` seconds in a daemon thread of this process."""
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="modelguard-changes", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is not None and self._pid == os.getpid() and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(POLL_EVERY):
            try:
                self.poll()
            except Exception:  # never let the thread die: the TTL would be the bound from then on
                log.exception("modelguard: reading the change feed failed")

    # -- reading ----------------------------------------------------------------------

    def poll(self) -> int:
        """Apply the changes since the last read; returns how many were applied."""
        with self._lock:
            try:
                if self._last is None:  # the first read: where the feed ends, less ids that may still commit
                    newest = self.repository.changes_since(None)
                    self._last = max(0, newest[0][0] - MAX_GAPS) if newest else 0
                rows = self.repository.changes_since(self._last, tuple(self._gaps))
            except SQLAlchemyError as exc:  # storage away, tables not created yet: the key cache's TTL bounds it
                self.watch.read(False)
                log.debug("modelguard: could not read the change feed (%s)", exc.__class__.__name__)
                return 0
            for _, account_id, prefix in rows:
                self.forget(account_id, prefix)
            self._track_gaps([r[0] for r in rows])
            self.watch.read(True)  # (after the changes are applied: an entry cached now has seen them)
            self.applied += len(rows)
            return len(rows)

    def _track_gaps(self, ids: list[int]) -> None:
        """Ids between the last read and this one that were not there: asked for
        again (the newest :data:`MAX_GAPS`, for :data:`GAP_WAIT` seconds)."""
        now = time.monotonic()
        seen = set(ids)
        for found in seen.intersection(self._gaps):
            del self._gaps[found]
        last = self._last or 0
        newest = max(seen, default=last)
        if newest > last:
            for missing in range(max(last + 1, newest - MAX_GAPS), newest):
                if missing not in seen:
                    self._gaps[missing] = now
            self._last = newest
        for gap, since in list(self._gaps.items()):
            if now - since > GAP_WAIT or gap < newest - MAX_GAPS:
                del self._gaps[gap]

    def purge(self, clock: Callable[[], float]) -> None:
        self.repository.purge_changes(clock() - KEEP)
