"""Benign users: the traffic a model-stealing defence must leave alone.
Framework-free (numpy only).

A :class:`BenignUser` sends natural in-distribution inputs (rows of
``world.pool``) the way people and their scripts do: small batches of
varying size, arrivals whose rate follows a day cycle (a non-homogeneous
Poisson process, quieter at night), occasional bursts of quick requests, and
occasional re-sends of an earlier request (a retrying client). Light and heavy
users differ only in ``budget``/``interval``; a :class:`PowerUser` is an
automated but honest client (many natural queries, quickly, in bigger batches).
"""

from __future__ import annotations

import math

import numpy as np

from .actor import Actor, Request

#: Simulated seconds in a day.
DAY = 86_400.0
#: Floor of a delay (simulated seconds): two requests never arrive at the same instant.
_MIN_DELAY = 1e-3
#: How many earlier requests a retrying client may re-send.
_HISTORY = 20


class BenignUser(Actor):
    """A person (or their script) querying the model with natural inputs.

    Parameters beyond :class:`Actor`'s:

    - ``burst``: probability that a request starts a burst of 2–5 quick
      follow-up requests (delays of mean ``min(2 s, interval / 10)``);
    - ``repeat``: probability that a request re-sends an earlier one;
    - ``diurnal``: amplitude of the day cycle in [0, 1): the arrival rate is
      ``(1 + diurnal·cos(2π(t − peak)/day)) / interval``, so ``interval`` is
      the mean delay over a day and the quietest hour is 12 h from ``peak``;
    - ``peak``: hour of the day with most traffic; ``start``: the simulated
      time of day at which the simulation starts (seconds after midnight);
    - ``subset``: fraction of ``world.pool`` this user draws from (its own
      random subset, sent in its own random order; cycled when used up).

    Batch sizes are in 1..``batch``, mostly small.
    """

    kind = "benign"
    malicious = False

    def __init__(self, name: str, budget: int, *, accounts: int = 1, batch: int = 5, interval: float = 60.0,
                 burst: float = 0.1, repeat: float = 0.05, diurnal: float = 0.8, peak: float = 15.0,
                 start: float = 0.0, subset: float = 1.0) -> None:
        if not 0.0 <= burst <= 1.0 or not 0.0 <= repeat <= 1.0:
            raise ValueError("burst and repeat are probabilities in [0, 1]")
        if not 0.0 <= diurnal < 1.0:
            raise ValueError("diurnal must be in [0, 1)")
        if not 0.0 < subset <= 1.0:
            raise ValueError("subset must be in (0, 1]")
        if interval <= 0:
            raise ValueError("interval must be > 0")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, burst=burst,
                         repeat=repeat, diurnal=diurnal, peak=peak, start=start, subset=subset)
        self.burst, self.repeat, self.diurnal = burst, repeat, diurnal
        self.peak, self.start_time, self.subset = peak, start, subset
        #: Simulated seconds since the start, at the user's latest request.
        self.clock = 0.0
        self._mine = self._rows = np.empty(0, dtype=int)
        self._next_row = 0
        self._burst_left = 0
        self._history: list[np.ndarray] = []
        self._pending: np.ndarray | None = None

    def start(self) -> None:
        size = max(1, round(self.subset * len(self.world.pool)))
        self._mine = self.rng.choice(len(self.world.pool), size=size, replace=False)
        self._rows = self.rng.permutation(self._mine)

    def next(self) -> Request | None:
        request = super().next()
        if request is not None:
            self.clock += request.delay
        return request

    def plan(self, n: int) -> tuple[np.ndarray, float]:
        delay = self._delay()
        if self._pending is not None:  # refused with 429: the client retries the same request
            inputs, self._pending = self._pending[:n], None
            return inputs, delay
        if self._history and self.rng.random() < self.repeat:
            inputs = self._history[int(self.rng.integers(len(self._history)))][:n]
        else:
            size = min(n, 1 + int(self.batch * self.rng.random() ** 2))
            inputs = self.world.pool[self._draw(size)]
        self._history = [*self._history[-(_HISTORY - 1):], inputs]
        return inputs, delay

    def requeue(self, inputs: np.ndarray) -> None:
        self._pending = inputs

    def rate(self, t: float) -> float:
        """Arrival rate (requests per simulated second) at ``t`` seconds after the start."""
        phase = 2.0 * math.pi * ((self.start_time + t) / DAY - self.peak / 24.0)
        return (1.0 + self.diurnal * math.cos(phase)) / self.interval

    def _draw(self, size: int) -> np.ndarray:
        out = []
        while size > 0:
            if self._next_row >= len(self._rows):
                self._rows, self._next_row = self.rng.permutation(self._mine), 0
            take = self._rows[self._next_row:self._next_row + size]
            self._next_row += len(take)
            size -= len(take)
            out.append(take)
        return np.concatenate(out)

    def _delay(self) -> float:
        if self._burst_left > 0:
            self._burst_left -= 1
            return max(_MIN_DELAY, self.jitter(min(2.0, self.interval / 10.0)))
        if self.rng.random() < self.burst:
            self._burst_left = int(self.rng.integers(2, 6))
        return max(_MIN_DELAY, self._arrival())

    def _arrival(self) -> float:
        """Time to the next arrival of the day-cycle Poisson process (thinning, Lewis & Shedler 1979)."""
        top = (1.0 + self.diurnal) / self.interval
        t = self.clock
        while True:
            t += float(self.rng.exponential(1.0 / top))
            if self.rng.random() * top <= self.rate(t):
                return t - self.clock


class PowerUser(BenignUser):
    """An automated but honest client: many natural queries, quickly, in bigger
    batches (a batch-scoring job or an integration partner), with a flatter
    day cycle. Not malicious: a defence that flags it has a false positive."""

    kind = "benign-power"
    malicious = False

    def __init__(self, name: str, budget: int, *, accounts: int = 1, batch: int = 50, interval: float = 5.0,
                 burst: float = 0.3, repeat: float = 0.02, diurnal: float = 0.3, peak: float = 15.0,
                 start: float = 0.0, subset: float = 1.0) -> None:
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, burst=burst,
                         repeat=repeat, diurnal=diurnal, peak=peak, start=start, subset=subset)
