"""Flags, blocks, tier changes, rotations and revocations take effect in every
process within a second. Framework-free.

Whatever changes an account's or a key's standing writes a row to
``modelguard_account_changes`` in the same transaction (the flag policy's
catches, operators' changes, key rotation and revocation). Each process's
worker thread reads the rows after the last one it saw, every
:data:`POLL_EVERY` seconds (one indexed range query, usually empty), and
drops what its key cache holds of those accounts and keys, so the next
request reads them fresh. While the feed is read without a gap, cached keys
stay fresh beyond the key cache's TTL; the TTL is the bound when it cannot
be read.
"""

from __future__ import annotations

import logging
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


class ChangeFeed:
    """Reads the feed and tells ``forget(account_id, prefix)`` of each change."""

    def __init__(self, repository: Repository, forget: Callable[[int | None, str | None], None],
                 watch: FeedWatch | None = None) -> None:
        self.repository = repository
        self.forget = forget
        #: Since when the feed has been read without a gap (what the key cache trusts).
        self.watch = watch or FeedWatch()
        self._last: int | None = None
        self._next = 0.0
        #: Changes applied in this process.
        self.applied = 0

    def reset_in_child(self) -> None:
        self._next = 0.0  # (the last id read stays: the parent's cache was dropped with the fork)

    def poll(self, force: bool = False) -> int:
        """Apply the changes since the last read, at most every :data:`POLL_EVERY`
        seconds (``force``: now); returns how many were applied."""
        now = time.monotonic()
        if not force and now < self._next:
            return 0
        self._next = now + POLL_EVERY * 0.9  # (the worker wakes every POLL_EVERY: never skip a wake-up)
        try:
            self._last, changes = self.repository.changes_since(self._last)
        except SQLAlchemyError as exc:  # storage away, tables not created yet: the key cache's TTL bounds it
            self.watch.read(False)
            log.debug("modelguard: could not read the change feed (%s)", exc.__class__.__name__)
            return 0
        for account_id, prefix in changes:
            self.forget(account_id, prefix)
        self.watch.read(True)  # (after the changes are applied: an entry cached now has seen them)
        self.applied += len(changes)
        return len(changes)

    def purge(self, clock: Callable[[], float]) -> None:
        self.repository.purge_changes(clock() - KEEP)
