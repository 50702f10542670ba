"""Thieves with natural data of another domain, and thieves that mix real
inputs into their queries. Framework-free (numpy and scikit-learn).

The photographs are scikit-learn's two bundled sample images (china.jpg and
flower.jpg, :func:`sklearn.datasets.load_sample_images`; nothing is
downloaded), turned grey and loaded once per process. A patch is a random
square of a photograph (2 to ``min(H, W) / 2s`` pixels per input pixel, for
an ``s×s`` input) averaged down to the model's input shape, mirrored half of
the time; inputs that are not square images get flattened crops (a random
block of the photograph, subsampled). Values are stretched to the input range
patch by patch (contrast normalisation, as images are before they are fed to
a model) and clipped/rounded by :meth:`~.actor.World.clip`.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import ClassVar

import numpy as np

from .actor import World
from .thief import _check, _Cycle, _natural_rows, _Source, _Thief, _Transfer, _Uniform

#: ITU-R BT.601 luma weights (RGB → grey).
_LUMA = np.array([0.299, 0.587, 0.114])
#: The grey photographs, loaded on first use (reading the JPEGs takes seconds).
_PHOTOS: list[np.ndarray] = []


def photographs() -> list[np.ndarray]:
    """scikit-learn's bundled photographs in grey, ``(H, W)`` arrays in [0, 1] (cached)."""
    if not _PHOTOS:
        from sklearn.datasets import load_sample_images

        _PHOTOS.extend(np.asarray(image, dtype=np.float64) @ _LUMA / 255.0
                       for image in load_sample_images().images)
    return _PHOTOS


def _square_patch(photo: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of ``photo`` averaged down to ``side×side`` (flattened)."""
    height, width = photo.shape
    k_max = max(2, min(height, width) // (2 * side))
    k = int(rng.integers(2, k_max + 1))
    m = side * k
    r, c = int(rng.integers(0, height - m + 1)), int(rng.integers(0, width - m + 1))
    patch = photo[r:r + m, c:c + m].reshape(side, k, side, k).mean(axis=(1, 3))
    return (patch[:, ::-1] if rng.random() < 0.5 else patch).ravel()


def _flat_crop(photo: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """``d`` values of a random block of ``photo`` (every k-th pixel), row by row."""
    height, width = photo.shape
    w = min(width, d)
    h = min(height, math.ceil(d / w))
    k = int(rng.integers(1, max(1, min(height // h, width // w)) + 1))
    r = int(rng.integers(0, height - h * k + 1))
    c = int(rng.integers(0, width - w * k + 1))
    block = photo[r:r + h * k:k, c:c + w * k:k].ravel()
    return np.resize(block, d)  # repeated only when d exceeds the photograph


def natural_patches(n: int, world: World, rng: np.random.Generator, *, stretch: bool = True) -> np.ndarray:
    """``n`` photograph patches in the world's input space, ``(n, world.dim)``."""
    photos, d = photographs(), world.dim
    side = math.isqrt(d)
    square = side * side == d and side > 1
    which = rng.integers(0, len(photos), n)
    U = np.empty((n, d))
    for i in range(n):
        U[i] = _square_patch(photos[which[i]], side, rng) if square else _flat_crop(photos[which[i]], d, rng)
    if stretch:
        lo, hi = U.min(axis=1, keepdims=True), U.max(axis=1, keepdims=True)
        spread = hi - lo
        U = np.where(spread > 0, (U - lo) / np.where(spread > 0, spread, 1.0), 0.5)
    return world.clip(world.low + U * (world.high - world.low))


class _Patches(_Source):
    """Fresh photograph patches (an endless transfer set)."""

    def __init__(self, world: World, rng: np.random.Generator, stretch: bool = True) -> None:
        self.world, self.rng, self.stretch = world, rng, stretch

    def draw(self, n: int) -> np.ndarray:
        return natural_patches(n, self.world, self.rng, stretch=self.stretch)


class NaturalPatchThief(_Thief):
    """Knockoff Nets with natural images of another domain (Orekondy et al.,
    "Knockoff Nets", CVPR 2019: the transfer set need not resemble the
    victim's data): photograph patches downscaled to the input shape.

    ``strategy="random"``: fresh patches in random order (Knockoff's random
    strategy over an unbounded transfer set). ``"balanced"``: a transfer set
    of ``pool_size`` patches, queried in rounds of ``step``; after the first
    (random) round a k-nearest-neighbour substitute (k = 5) on the answers
    predicts the unsent patches' labels, and each pick takes a random patch
    of the class served least so far (a simple stand-in for Knockoff's
    adaptive strategy and its label-diversity reward).
    """

    kind = "natural-patches"
    STRATEGIES: ClassVar[tuple[str, ...]] = ("random", "balanced")

    def __init__(self, name: str, budget: int, *, strategy: str = "random", stretch: bool = True,
                 pool_size: int = 2000, step: int = 100, accounts: int = 1, batch: int = 10,
                 interval: float = 1.0) -> None:
        _check("strategy", strategy, self.STRATEGIES)
        if pool_size < 1 or step < 1:
            raise ValueError("pool_size and step must be >= 1")
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, strategy=strategy,
                         stretch=stretch, pool_size=pool_size, step=step)
        self.strategy, self.stretch, self.pool_size, self.step = strategy, bool(stretch), pool_size, step
    def start(self) -> None:
        self._source = _Patches(self.world, self.rng, self.stretch)
        self._queue = np.empty((0, self.world.dim))
        if self.strategy == "balanced":
            self.pool = self._source.draw(self.pool_size)
            self._unused = np.ones(len(self.pool), dtype=bool)

    def _queries(self, n: int) -> np.ndarray:
        if self.strategy == "random":
            return self._source.draw(n)
        if not len(self._queue):
            self._queue = self.pool[self._balanced()]
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def _balanced(self) -> np.ndarray:
        """Pool indices of the next round (random at first, then label-balanced)."""
        unused = np.flatnonzero(self._unused)
        X, y = self.X, self.y
        if not len(X):
            return self._take(self.rng.permutation(unused)[:self.step])
        from sklearn.neighbors import KNeighborsClassifier

        substitute = KNeighborsClassifier(n_neighbors=min(5, len(X))).fit(X, y)
        predicted = substitute.predict(self.pool[unused])
        counts = Counter(y.tolist())
        by_class = {c: list(self.rng.permutation(unused[predicted == c])) for c in np.unique(predicted).tolist()}
        picks: list[int] = []
        while len(picks) < self.step and by_class:
            label = min(by_class, key=lambda c: (counts[c], c))
            picks.append(int(by_class[label].pop()))
            counts[label] += 1
            if not by_class[label]:
                del by_class[label]
        return self._take(np.asarray(picks, dtype=int))

    def _take(self, index: np.ndarray) -> np.ndarray:
        self._unused[index] = False
        if not self._unused.any():  # the transfer set is used up: reuse it
            self._unused[:] = True
        return index


class MixedThief(_Thief):
    """A thief whose queries are a share ``real`` of real in-distribution
    inputs (``world.seeds``, else ``world.pool``, without replacement until
    used up) and otherwise synthetic or out-of-domain ones (``source``:
    "uniform" noise, "natural-patches" or "knockoff"-style transformed data),
    mixed in every batch at random positions. The real share is kept exact
    over the inputs planned so far (to one input), not drawn per input."""

    kind = "mixed"
    SOURCES: ClassVar[tuple[str, ...]] = ("uniform", "natural-patches", "knockoff")

    def __init__(self, name: str, budget: int, *, real: float = 0.4, source: str = "uniform",
                 accounts: int = 1, batch: int = 10, interval: float = 1.0) -> None:
        if not 0.0 <= real <= 1.0:
            raise ValueError("real must be in [0, 1]")
        _check("source", source, self.SOURCES)
        super().__init__(name, budget, accounts=accounts, batch=batch, interval=interval, real=real, source=source)
        self.real, self.source = float(real), source
        #: Whether each input planned so far was a real one (in order).
        self.is_real: list[bool] = []

    def start(self) -> None:
        self._real = _Cycle(_natural_rows(self.world), self.rng)
        self._other = _other_source(self.source, self.world, self.rng)

    def _queries(self, n: int) -> np.ndarray:
        planned, real_so_far = len(self.is_real), sum(self.is_real)
        k = min(n, max(0, round(self.real * (planned + n)) - real_so_far))
        mask = np.zeros(n, dtype=bool)
        mask[self.rng.choice(n, size=k, replace=False)] = True
        out = np.empty((n, self.world.dim))
        out[mask] = self._real.draw(k)
        out[~mask] = self._other.draw(n - k)
        self.is_real.extend(mask.tolist())
        return out


def _other_source(name: str, world: World, rng: np.random.Generator) -> _Source:
    if name == "natural-patches":
        return _Patches(world, rng)
    if name == "knockoff":
        return _Transfer(world, rng)
    return _Uniform(world, rng)
