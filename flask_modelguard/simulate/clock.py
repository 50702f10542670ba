"""Simulated time: a clock the guard reads, and a ``limits`` storage that
counts rate-limit windows on it, so a simulated day runs in seconds while
quotas, event times and timing detectors all see the simulated day."""

from __future__ import annotations

import threading
from collections.abc import Callable

from limits.storage import Storage


class SimulatedClock:
    """A settable clock: ``clock()`` returns the simulated epoch seconds.

    Pass it to the guard (``MODELGUARD_CLOCK``) and to the rate-limit storage
    (``MODELGUARD_STORAGE_URI = "simulated://"`` with
    ``MODELGUARD_STORAGE_OPTIONS = {"clock": clock}``)."""

    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00Z, a Thursday
        self.now = float(start)
        self.start = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("time does not run backwards")
        self.now += seconds
        return self.now

    def set(self, when: float) -> None:
        """Move to ``when`` (never backwards)."""
        if when > self.now:
            self.now = float(when)

    @property
    def elapsed(self) -> float:
        return self.now - self.start


class SimulatedStorage(Storage):
    """In-memory fixed-window counters whose windows expire on a given clock
    (``simulated://``; the ``clock`` storage option is required). The guard's
    fixed-window strategy is the only one it supports."""

    STORAGE_SCHEME = ["simulated"]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False,
                 clock: Callable[[], float] | None = None, **options: float | str | bool) -> None:
        if clock is None:
            raise ValueError("simulated:// needs the storage option clock=<callable>")
        self.clock = clock
        self._counts: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def _live(self, key: str) -> None:
        if self._expiry.get(key, 0.0) <= self.clock():
            self._counts.pop(key, None)
            self._expiry.pop(key, None)

    def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        with self._lock:
            self._live(key)
            if key not in self._counts:
                self._counts[key] = 0
                self._expiry[key] = self.clock() + expiry
            self._counts[key] = max(0, self._counts[key] + amount)
            return self._counts[key]

    def decr(self, key: str, amount: int = 1) -> int:
        with self._lock:
            self._live(key)
            if key in self._counts:
                self._counts[key] = max(0, self._counts[key] - amount)
            return self._counts.get(key, 0)

    def get(self, key: str) -> int:
        with self._lock:
            self._live(key)
            return self._counts.get(key, 0)

    def get_expiry(self, key: str) -> float:
        with self._lock:
            self._live(key)
            return self._expiry.get(key, self.clock())

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            n = len(self._counts)
            self._counts.clear()
            self._expiry.clear()
            return n

    def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)
            self._expiry.pop(key, None)
