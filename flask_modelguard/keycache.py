"""The request path's cache of key look-ups. Framework-free.

Bounded (least recently used entries go first) and indexed by account, so
that dropping an account's keys costs its keys, not the cache. An entry is
fresh for ``ttl`` seconds after it was read, and after that for as long as
the change feed (:mod:`flask_modelguard.changes`) is being read: every change
to the account drops it (the feed loses none, see there). So a key used once
a minute by one of 100,000 accounts is not read from the database on every
request, and a revocation still reaches every process within a second; when
the feed cannot be read, the TTL is the bound again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

#: The feed counts as read when its last successful read is this recent (seconds; it is read twice a second).
FEED_LAG = 2.0


class FeedWatch:
    """When the change feed was first and last read (monotonic seconds)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.first: float | None = None  # the first successful read: entries cached before it are not vouched for
        self.last = -float("inf")  # the last successful read

    def read(self, ok: bool) -> None:
        """A read of the feed succeeded (``ok``) or failed (then nothing is covered until the next one)."""
        now = self.clock()
        if ok and self.first is None:
            self.first = now
        self.last = now if ok else -float("inf")

    def covers(self, cached_at: float, now: float) -> bool:
        """Changes since ``cached_at`` are being applied: the feed was read in the
        last :data:`FEED_LAG` seconds, and was read before the entry was cached."""
        return self.first is not None and self.first <= cached_at and now - self.last <= FEED_LAG


class KeyCache(Generic[V]):
    """``prefix → (value, account id)``, at most ``maxsize`` entries (not thread-safe: callers lock)."""

    def __init__(self, maxsize: int, ttl: float, feed: FeedWatch | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self.ttl = ttl
        self.feed = feed
        self.clock = clock
        self._entries: OrderedDict[str, tuple[V, int, float]] = OrderedDict()
        self._by_account: dict[int, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, prefix: str) -> V | None:
        """The cached value while fresh (None: absent or stale, then dropped)."""
        entry = self._entries.get(prefix)
        if entry is None:
            return None
        value, _, cached_at = entry
        now = self.clock()
        if now - cached_at < self.ttl or (self.feed is not None and self.feed.covers(cached_at, now)):
            self._entries.move_to_end(prefix)
            return value
        self.pop(prefix)
        return None

    def put(self, prefix: str, value: V, account_id: int) -> None:
        self.pop(prefix)
        self._entries[prefix] = (value, account_id, self.clock())
        self._by_account.setdefault(account_id, set()).add(prefix)
        while len(self._entries) > self.maxsize:
            self.pop(next(iter(self._entries)))

    def pop(self, prefix: str) -> None:
        entry = self._entries.pop(prefix, None)
        if entry is not None:
            prefixes = self._by_account.get(entry[1])
            if prefixes is not None:
                prefixes.discard(prefix)
                if not prefixes:
                    del self._by_account[entry[1]]

    def pop_account(self, account_id: int) -> None:
        for prefix in list(self._by_account.get(account_id, ())):
            self.pop(prefix)

    def clear(self) -> None:
        self._entries.clear()
        self._by_account.clear()
