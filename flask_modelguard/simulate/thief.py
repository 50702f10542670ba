"""What every thief shares: where its queries come from (natural rows,
transformed digits, uniform noise, another distribution) and the
:class:`_Thief` base class (budget, pacing, re-sending refused inputs).
Framework-free (numpy)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .actor import Actor, World

# -- where queries come from ----------------------------------------------------


def _natural_rows(world: World) -> np.ndarray:
    """The natural inputs a thief holds: ``world.seeds``, else ``world.pool``."""
    return world.seeds if world.seeds is not None and len(world.seeds) else world.pool


def _in_range(world: World, U: np.ndarray) -> np.ndarray:
    """Map ``U`` in [0, 1) to the input range (equally likely levels when the world is integer)."""
    if world.integer:
        levels = math.floor(world.high) - math.ceil(world.low) + 1
        return np.minimum(math.ceil(world.low) + np.floor(U * levels), math.floor(world.high))
    return world.low + U * (world.high - world.low)


def _transformed(X: np.ndarray, world: World, rng: np.random.Generator, noise: float = 0.05) -> np.ndarray:
    """Natural-looking inputs of another distribution, made from ``X``.

    Square inputs (``d = s²``) are taken for ``s×s`` images: each is shifted by
    up to one pixel and rotated by up to 15° (nearest neighbour, background
    ``low``). Every input gets Gaussian noise of ``noise·(high − low)``.
    """
    X = np.asarray(X, dtype=np.float64)
    n, d = X.shape
    side = math.isqrt(d)
    if side * side == d and side > 2:
        images = X.reshape(n, side, side)
        angle = rng.uniform(-np.pi / 12, np.pi / 12, (n, 1))
        shift = rng.integers(-1, 2, (n, 2, 1))
        rows, cols = np.divmod(np.arange(d), side)
        centre = (side - 1) / 2.0
        r, c = rows - centre, cols - centre
        cos, sin = np.cos(angle), np.sin(angle)
        src_r = np.rint(cos * r + sin * c + centre - shift[:, 0]).astype(int)
        src_c = np.rint(-sin * r + cos * c + centre - shift[:, 1]).astype(int)
        inside = (src_r >= 0) & (src_r < side) & (src_c >= 0) & (src_c < side)
        picked = images[np.arange(n)[:, None], np.clip(src_r, 0, side - 1), np.clip(src_c, 0, side - 1)]
        X = np.where(inside, picked, world.low)
    return world.clip(X + rng.normal(0.0, noise * (world.high - world.low), X.shape))


class _Source:
    """An endless supply of query inputs."""

    def draw(self, n: int) -> np.ndarray:
        raise NotImplementedError


class _Cycle(_Source):
    """Rows of ``X`` without replacement, in random order (reshuffled when used up)."""

    def __init__(self, X: np.ndarray, rng: np.random.Generator) -> None:
        self.X, self.rng = X, rng
        self.order, self.at = rng.permutation(len(X)), 0

    def draw(self, n: int) -> np.ndarray:
        out = []
        while n > 0:
            if self.at >= len(self.order):
                self.order, self.at = self.rng.permutation(len(self.X)), 0
            take = self.order[self.at:self.at + n]
            self.at += len(take)
            n -= len(take)
            out.append(take)
        return self.X[np.concatenate(out)] if out else self.X[:0]


class _Uniform(_Source):
    def __init__(self, world: World, rng: np.random.Generator) -> None:
        self.world, self.rng = world, rng

    def draw(self, n: int) -> np.ndarray:
        return _in_range(self.world, self.rng.random((n, self.world.dim)))


class _Transfer(_Source):
    """Knockoff's transfer set: ``world.other`` in random order, or, when the
    world has none, transformed natural inputs (see :func:`_transformed`)."""

    def __init__(self, world: World, rng: np.random.Generator, noise: float = 0.05) -> None:
        self.world, self.rng, self.noise = world, rng, noise
        self.other = _Cycle(world.other, rng) if world.other is not None and len(world.other) else None
        self.natural = _natural_rows(world)

    def draw(self, n: int) -> np.ndarray:
        if self.other is not None:
            return self.other.draw(n)
        rows = self.natural[self.rng.integers(0, len(self.natural), n)]
        return _transformed(rows, self.world, self.rng, self.noise)


def _source(name: str, world: World, rng: np.random.Generator) -> _Source:
    if name == "knockoff":
        return _Transfer(world, rng)
    if name == "random":
        return _Uniform(world, rng)
    if name == "natural":
        return _Cycle(_natural_rows(world), rng)
    raise ValueError(f"unknown query source {name!r} (expected 'knockoff' or 'random')")


# -- the common base ------------------------------------------------------------


class _Thief(Actor):
    """A thief: :meth:`_queries` gives the next inputs, :meth:`_delay` the wait.
    Inputs refused with 429 are sent again first."""

    malicious = True

    def __init__(self, name: str, budget: int, *, accounts: int = 1, batch: int = 10, interval: float = 1.0,
                 **params: Any) -> None:
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, **params)
        self._pending: np.ndarray | None = None

    def plan(self, n: int) -> tuple[np.ndarray, float]:
        if self._pending is not None:
            inputs, rest = self._pending[:n], self._pending[n:]
            self._pending = rest if len(rest) else None
            return inputs, self._delay(len(inputs))
        inputs = self._queries(n)
        return inputs, self._delay(len(inputs))

    def requeue(self, inputs: np.ndarray) -> None:
        self._pending = inputs if self._pending is None else np.concatenate([inputs, self._pending])

    def _queries(self, n: int) -> np.ndarray:
        raise NotImplementedError

    def _delay(self, n: int) -> float:
        return self.jitter(self.interval)


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r} (expected one of {', '.join(allowed)})")
    return value


