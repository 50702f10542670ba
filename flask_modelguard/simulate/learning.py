"""Thieves that learn as they ask: pool-based active learning and an
adaptive thief that changes strategy when its answers change. Framework-free
(numpy and scikit-learn); registered in :mod:`.attackers`."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .actor import Answer, Request
from .surrogate import Clone, train_clone
from .thief import _check, _Cycle, _natural_rows, _source, _Thief, _transformed


class ActiveLearningThief(_Thief):
    """Pool-based active learning (Chandrasekaran et al., "Exploring Connections
    Between Active Learning and Model Extraction", USENIX Security 2020; Pal et
    al., "ActiveThief", AAAI 2020).

    The pool is ``world.other``, else ``pool_size`` transformed copies of the
    thief's natural inputs (never ``world.test``). After ``initial`` random
    pool points, every round retrains a substitute (``substitute``) on all
    answers and picks the ``step`` unsent pool points it is least sure of:
    ``strategy="uncertainty"``: lowest top probability; ``"margin"``:
    smallest gap between the top two. When the pool is used up it is reused.
    """

    kind = "active"
    STRATEGIES: ClassVar[tuple[str, ...]] = ("uncertainty", "margin")

    def __init__(self, name: str, budget: int, *, strategy: str = "margin", initial: int = 100, step: int = 100,
                 pool_size: int = 2000, substitute: str = "logreg", accounts: int = 1, batch: int = 10,
                 interval: float = 1.0) -> None:
        _check("strategy", strategy, self.STRATEGIES)
        _check("substitute", substitute, ("mlp", "logreg"))
        if initial < 1 or step < 1 or pool_size < 1:
            raise ValueError("initial, step and pool_size must be >= 1")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, strategy=strategy,
                         initial=initial, step=step, pool_size=pool_size, substitute=substitute)
        self.strategy, self.initial, self.step = strategy, initial, step
        self.pool_size, self.substitute = pool_size, substitute
        self.clone: Clone | None = None
        #: Pool indices picked by uncertainty (after the random start), in order.
        self.picked: list[int] = []

    def start(self) -> None:
        other = self.world.other
        if other is not None and len(other):
            self.pool = np.asarray(other, dtype=np.float64)
        else:
            natural = _natural_rows(self.world)
            self.pool = _transformed(natural[self.rng.integers(0, len(natural), self.pool_size)], self.world, self.rng)
        self._unused = np.ones(len(self.pool), dtype=bool)
        first = self._take(self.rng.permutation(len(self.pool))[:self.initial])
        self._queue = list(first)

    def _take(self, index: np.ndarray) -> np.ndarray:
        self._unused[index] = False
        if not self._unused.any():
            self._unused[:] = True
        return index

    def _queries(self, n: int) -> np.ndarray:
        if not self._queue:
            self._queue = list(self._select())
            self.picked.extend(self._queue)
        index, self._queue = self._queue[:n], self._queue[n:]
        return self.pool[index]

    def _select(self) -> np.ndarray:
        candidates = np.flatnonzero(self._unused)
        X, y = self.X, self.y
        if len(X):
            self.clone = train_clone(X, y, kind=self.substitute, seed=int(self.rng.integers(2**31)),
                                     low=self.world.low, high=self.world.high)
        if self.clone is None or self.clone.model is None:
            return self._take(self.rng.permutation(candidates)[:self.step])
        score = _uncertainty(self.clone.predict_proba(self.pool[candidates]), self.strategy)
        return self._take(candidates[np.argsort(score, kind="stable")[:self.step]])


def _uncertainty(P: np.ndarray, strategy: str) -> np.ndarray:
    """Confidence of each row of class scores (lower: less sure): top score or top-2 margin."""
    if strategy == "uncertainty" or P.shape[1] < 2:
        return P.max(axis=1)
    top2 = np.sort(P, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


# -- evasive thieves ------------------------------------------------------------------


class AdaptiveThief(_Thief):
    """A thief that tries to pass for a benign user and never trips the quota.

    A fraction ``natural`` of its inputs are natural ones (``world.seeds``,
    else ``world.pool``; cover traffic), the rest attack queries (``attack``:
    "knockoff" or "random"), mixed in every batch. It paces itself by the
    ``RateLimit`` header of its latest answer: with ``remaining`` inputs left
    until the window resets in ``reset`` seconds, it sends at most
    ``remaining`` more inputs, spread evenly over those seconds, and waits
    for the reset when none are left (the quota counts inputs: a batch of N
    costs N). Before any header, ``rate`` (inputs per second it assumes it
    may send) sets the delay; without it, exponential delays of mean
    ``interval``. Delays are randomised upwards only (never faster than the
    pacing allows).
    """

    kind = "adaptive"
    #: Seconds added after a window's reset before sending again.
    _MARGIN = 1.0

    def __init__(self, name: str, budget: int, *, natural: float = 0.1, attack: str = "knockoff",
                 rate: float | None = None, accounts: int = 1, batch: int = 10, interval: float = 1.0) -> None:
        if not 0.0 <= natural <= 1.0:
            raise ValueError("natural must be in [0, 1]")
        if rate is not None and rate <= 0:
            raise ValueError("rate must be > 0")
        _check("attack", attack, ("knockoff", "random"))
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, natural=natural,
                         attack=attack, rate=rate)
        self.natural, self.attack, self.rate = natural, attack, rate
        #: Simulated seconds since the start, at the thief's latest request.
        self.clock = 0.0
        #: account → (inputs left, simulated time its window resets), from its latest answer.
        self._quota: dict[int, tuple[int, float]] = {}
        #: Whether each input planned so far was natural cover traffic (in order).
        self.cover: list[bool] = []

    def start(self) -> None:
        self._attack = _source(self.attack, self.world, self.rng)
        self._cover = _source("natural", self.world, self.rng)

    def next(self) -> Request | None:
        request = super().next()
        if request is not None:
            self.clock += request.delay
        return request

    def receive(self, request: Request, answer: Answer) -> None:
        if answer.remaining is not None and answer.reset is not None:
            self._quota[request.account] = (int(answer.remaining), self.clock + max(0.0, float(answer.reset)))
        super().receive(request, answer)

    def _window(self) -> tuple[int, float] | None:
        """Inputs left, and seconds until the reset, of the next request's account (None: unknown)."""
        quota = self._quota.get(self._turn % self.accounts)
        if quota is None or quota[1] <= self.clock:
            return None
        return quota[0], quota[1] - self.clock

    def plan(self, n: int) -> tuple[np.ndarray, float]:
        window = self._window()
        if self._pending is None and window is not None and window[0] > 0:
            n = min(n, window[0])
        return super().plan(n)

    def _queries(self, n: int) -> np.ndarray:
        natural = self.rng.random(n) < self.natural
        out = np.empty((n, self.world.dim))
        out[natural] = self._cover.draw(int(natural.sum()))
        out[~natural] = self._attack.draw(int(n - natural.sum()))
        self.cover.extend(bool(v) for v in natural)
        return out

    def _delay(self, n: int) -> float:
        slack = 1.0 + 0.2 * float(self.rng.random())
        window = self._window()
        if window is not None:
            left, reset = window
            if left < n:  # this batch does not fit: wait for the window to reset
                return reset + self._MARGIN * slack
            return reset / (left // n + 1) * slack  # spread the batches that fit over the window
        if self.rate is not None:
            return n / self.rate * slack
        return self.jitter(self.interval)


class CopycatThief(AdaptiveThief):
    """The pure in-distribution thief: only natural inputs of the pool benign
    users draw from (``world.pool``, not a thief's few seeds), paced like
    :class:`AdaptiveThief`. No detector can tell it from a heavy benign user;
    what the guard has against it is the watermark."""

    kind = "copycat"

    def __init__(self, name: str, budget: int, *, rate: float | None = None, accounts: int = 1, batch: int = 10,
                 interval: float = 1.0) -> None:
        super().__init__(name, budget, natural=1.0, rate=rate, accounts=accounts, batch=batch, interval=interval)

    def start(self) -> None:
        super().start()
        self._cover = _Cycle(self.world.pool, self.rng)
