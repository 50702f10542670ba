"""Synthetic queries that need no natural data: uniform, Gaussian,
exhaustive (a scrambled Halton sequence), systematic (one feature at a time)
and adversarial (bisection towards the decision boundary). Framework-free
(numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .actor import Answer
from .thief import _check, _Cycle, _in_range, _natural_rows, _Thief

# -- random queries ---------------------------------------------------------------


@dataclass
class _Segment:
    """A bisection between two served points of different labels."""

    a: np.ndarray
    b: np.ndarray
    la: int
    lb: int
    depth: int = 0


class RandomThief(_Thief):
    """Synthetic queries that need no natural data (Tramèr et al., "Stealing
    Machine Learning Models via Prediction APIs", USENIX Security 2016).

    ``strategy``:

    - ``uniform``: uniform over [low, high]^d;
    - ``gaussian``: Gaussian around the centre of the range, standard
      deviation ``sigma·(high − low)``;
    - ``exhaustive``: a low-discrepancy sweep of the input space: the
      Halton sequence with random digit permutations (a scrambled Halton
      sequence, which keeps the high dimensions' bases from tracing
      correlated lines through a corner of the space);
    - ``systematic``: line searches along the axes: from a base input (a
      natural one when the thief holds some), one feature at a time set to
      ``levels`` evenly spaced values, then a new base;
    - ``adversarial``: points near decision boundaries: two served points of
      different labels (natural ones when the thief holds some, else uniform)
      are bisected ``bisections`` times towards where the label changes
      (the line search of Tramèr et al.; Papernot et al.'s boundary probing).

    Kind ``random`` takes the strategy as a parameter (default uniform); the
    kinds ``random-<strategy>`` are the same thief with the strategy fixed.
    """

    kind = "random"
    STRATEGIES: ClassVar[tuple[str, ...]] = ("uniform", "gaussian", "exhaustive", "systematic", "adversarial")
    #: Set by the ``random-<strategy>`` kinds.
    fixed: ClassVar[str | None] = None

    def __init__(self, name: str, budget: int, *, strategy: str | None = None, sigma: float = 0.25,
                 levels: int = 9, bisections: int = 8, accounts: int = 1, batch: int = 10,
                 interval: float = 1.0) -> None:
        if self.fixed is not None and strategy not in (None, self.fixed):
            raise ValueError(f"kind {self.kind!r} always uses strategy {self.fixed!r}")
        strategy = _check("strategy", strategy or self.fixed or "uniform", self.STRATEGIES)
        if levels < 2 or bisections < 1 or sigma <= 0:
            raise ValueError("levels must be >= 2, bisections >= 1 and sigma > 0")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, strategy=strategy,
                         sigma=sigma, levels=levels, bisections=bisections)
        self.strategy, self.sigma, self.levels, self.bisections = strategy, sigma, levels, bisections

    def start(self) -> None:
        d = self.world.dim
        self._halton_at = 1
        self._halton_digits = [self.rng.permutation(base) for base in _primes(d)]
        self._natural = _Cycle(_natural_rows(self.world), self.rng)
        self._sweep = self.world.dim * self.levels  # a new base on first use
        self._base = np.empty(d)
        self._segments: list[_Segment] = []
        self._asked: list[_Segment | None] = []
        self._anchors: list[np.ndarray] = []
        self._anchor_labels: list[int] = []

    def _queries(self, n: int) -> np.ndarray:
        return getattr(self, f"_{self.strategy}")(n)

    def _uniform(self, n: int) -> np.ndarray:
        return _in_range(self.world, self.rng.random((n, self.world.dim)))

    def _gaussian(self, n: int) -> np.ndarray:
        centre, spread = (self.world.low + self.world.high) / 2.0, self.sigma * (self.world.high - self.world.low)
        return self.rng.normal(centre, spread, (n, self.world.dim))

    def _exhaustive(self, n: int) -> np.ndarray:
        U = _halton(self._halton_at, n, self._halton_digits)
        self._halton_at += n
        return _in_range(self.world, U)

    def _systematic(self, n: int) -> np.ndarray:
        values = np.linspace(self.world.low, self.world.high, self.levels)
        out = np.empty((n, self.world.dim))
        for i in range(n):
            if self._sweep >= self.world.dim * self.levels:
                self._base, self._sweep = self._natural.draw(1)[0].astype(np.float64), 0
            feature, level = divmod(self._sweep, self.levels)
            out[i] = self._base
            out[i, feature] = values[level]
            self._sweep += 1
        return out

    # adversarial: bisections between points of different served labels

    def _adversarial(self, n: int) -> np.ndarray:
        rows: list[np.ndarray] = []
        self._asked = []
        for segment in self._segments[:n]:
            rows.append((segment.a + segment.b) / 2.0)
            self._asked.append(segment)
        while len(rows) < n:
            new = self._new_segment()
            if new is None:
                break
            self._segments.append(new)
            rows.append((new.a + new.b) / 2.0)
            self._asked.append(new)
        explore = n - len(rows)
        if explore:  # anchors: natural inputs while the thief has unsent ones, then uniform
            fresh = len(self._anchors) < len(self._natural.X)
            rows.extend(self._natural.draw(explore) if fresh else self._uniform(explore))
            self._asked.extend([None] * explore)
        return np.asarray(rows)

    def _new_segment(self) -> _Segment | None:
        if len(set(self._anchor_labels)) < 2:
            return None
        labels = np.asarray(self._anchor_labels)
        i = int(self.rng.integers(len(labels)))
        others = np.flatnonzero(labels != labels[i])
        j = int(others[self.rng.integers(len(others))])
        return _Segment(self._anchors[i], self._anchors[j], int(labels[i]), int(labels[j]))

    def learn(self, inputs: np.ndarray, answer: Answer) -> None:
        if self.strategy != "adversarial":
            return
        asked, self._asked = self._asked[:len(inputs)], self._asked[len(inputs):]
        if not answer.ok:
            self._segments = [s for s in self._segments if not any(s is a for a in asked)]
            return
        assert answer.labels is not None
        done: list[_Segment] = []
        for x, label, segment in zip(inputs, np.asarray(answer.labels), asked, strict=False):
            if segment is None:
                self._anchors.append(x)
                self._anchor_labels.append(int(label))
                continue
            if int(label) == segment.la:
                segment.a = x
            else:
                segment.b, segment.lb = x, int(label)
            segment.depth += 1
            close = np.abs(segment.b - segment.a).max() <= (1.0 if self.world.integer else 0.0)
            if segment.depth >= self.bisections or close:
                done.append(segment)
        self._segments = [s for s in self._segments if not any(s is d for d in done)]


class UniformThief(RandomThief):
    """:class:`RandomThief` with ``strategy="uniform"``."""

    kind = "random-uniform"
    fixed = "uniform"


class GaussianThief(RandomThief):
    """:class:`RandomThief` with ``strategy="gaussian"``."""

    kind = "random-gaussian"
    fixed = "gaussian"


class ExhaustiveThief(RandomThief):
    """:class:`RandomThief` with ``strategy="exhaustive"``."""

    kind = "random-exhaustive"
    fixed = "exhaustive"


class SystematicThief(RandomThief):
    """:class:`RandomThief` with ``strategy="systematic"``."""

    kind = "random-systematic"
    fixed = "systematic"


class AdversarialThief(RandomThief):
    """:class:`RandomThief` with ``strategy="adversarial"``."""

    kind = "random-adversarial"
    fixed = "adversarial"


def _primes(count: int) -> list[int]:
    primes: list[int] = []
    candidate = 2
    while len(primes) < count:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


def _halton(start: int, n: int, digits: list[np.ndarray]) -> np.ndarray:
    """Points ``start .. start + n - 1`` of the scrambled Halton sequence, in [0, 1): dimension
    ``k`` is the radical inverse in the ``k``-th prime base ``b = len(digits[k])``, every digit
    ``j`` of the index written as ``digits[k][j]`` (a permutation of ``0 .. b - 1``)."""
    out = np.zeros((n, len(digits)))
    for k, permutation in enumerate(digits):
        base, i, f = len(permutation), np.arange(start, start + n), 1.0
        while i.any():
            f /= base
            out[:, k] += f * permutation[i % base]
            i //= base
    return out

