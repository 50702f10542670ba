"""Fixed windows in this process's memory: what ``memory://`` (and the
simulator's clocked storage) mean for the default fixed-window strategy.
Framework-free.

All of an account's limits are tested and, only when all admit the request,
counted, under one lock: a refused request consumes nothing and nobody sees a
count that is taken back. Expired windows are dropped as they are met and
swept now and then; unlike ``limits``' memory storage, no timer thread is
started (it started one every few requests).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from limits import RateLimitItem

from .limitset import Verdict

#: Sweep expired windows at most this often (seconds of the clock).
SWEEP_EVERY = 60.0


class LocalWindows:
    """Counters ``key → (end of its window, count)``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._counts: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def reset_in_child(self) -> None:
        self._lock = threading.Lock()

    def hit(self, items: Sequence[RateLimitItem], keys: Sequence[str], cost: int) -> Verdict:
        """Count ``cost`` in every limit if all admit it; the verdict of the one
        closest to refusing (or of the one that refused)."""
        now = self.clock()
        counted: list[tuple[str, float, int]] = []
        with self._lock:
            for item, key in zip(items, keys):
                end, count = self._counts.get(key, (0.0, 0))
                if end <= now:
                    end, count = now + item.get_expiry(), 0
                if count + cost > item.amount:
                    return Verdict(False, item, max(0, item.amount - count), end, at=now)
                counted.append((key, end, count + cost))
            for key, end, count in counted:
                self._counts[key] = (end, count)
            if now >= self._next_sweep:
                self._sweep(now)
        best = min(range(len(counted)), key=lambda i: items[i].amount - counted[i][2])
        item, (_, end, count) = items[best], counted[best]
        return Verdict(True, item, item.amount - count, end, at=now)

    def refund(self, items: Sequence[RateLimitItem], keys: Sequence[str], cost: int, at: float) -> None:
        """Give ``cost`` back to the windows counted at ``at`` that are still open (never below 0)."""
        with self._lock:
            for item, key in zip(items, keys):
                found = self._counts.get(key)
                if found is not None and found[0] - item.get_expiry() <= at + 1e-6 < found[0]:
                    self._counts[key] = (found[0], max(0, found[1] - cost))

    def counts(self, keys: Sequence[str]) -> list[int]:
        """The count in each key's open window (0 when none is open)."""
        now = self.clock()
        return [count if end > now else 0 for end, count in (self._counts.get(k, (0.0, 0)) for k in keys)]

    def clear(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._counts.pop(key, None)

    def __len__(self) -> int:
        return len(self._counts)

    def _sweep(self, now: float) -> None:
        """Drop expired windows (lock held)."""
        self._next_sweep = now + SWEEP_EVERY
        for key in [k for k, (end, _) in self._counts.items() if end <= now]:
            del self._counts[key]
