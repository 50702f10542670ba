"""Mergeable statistics. Framework-free.

Every statistic here can be updated one batch at a time and merged with
another built from different events, giving exactly (up to floating-point
rounding) what one pass over all the events would give. That is what lets many
processes on many hosts keep partial account state and combine it.

- :class:`Moments`: count, mean and covariance of vectors (Chan et al.'s
  parallel update of the co-moment matrix);
- :class:`Histogram`: counts over fixed bin edges or over labels.
"""

from __future__ import annotations

import base64
from bisect import bisect_right
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, cast

import numpy as np


def pack(array: np.ndarray, dtype: str = "<f8") -> str:
    """An array as JSON can hold it cheaply: base64 of its little-endian bytes
    (a list of floats costs about 1 µs a number to encode and to decode)."""
    return base64.b64encode(np.ascontiguousarray(array, dtype=dtype).tobytes()).decode("ascii")


def unpack(value: Any, dtype: str = "<f8") -> np.ndarray:
    """:func:`pack`'s array, or one stored as a list (states written before it)."""
    if isinstance(value, str):
        return np.frombuffer(base64.b64decode(value, validate=True), dtype=dtype).astype(dtype[1:])
    return np.asarray(value, dtype=dtype[1:])


@lru_cache(maxsize=16)
def _triangle(dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row and column indices of the upper triangle (row-major, as
    ``np.triu_indices``), and the positions of the diagonal in it."""
    rows, cols = np.triu_indices(dim)
    return rows, cols, np.flatnonzero(rows == cols)


@dataclass(slots=True)
class Moments:
    """Count, mean and co-moment matrix of ``dim``-dimensional vectors.

    ``cov()`` is the sample covariance. The co-moment matrix is symmetric, so
    ``m2`` holds its upper triangle, packed row by row (``dim·(dim+1)/2``
    floats); with ``diagonal=True`` only the variances are kept (``dim``).
    """

    dim: int
    diagonal: bool = False
    n: int = 0
    # None until __post_init__ fills them in.
    mean: np.ndarray = field(default=cast(np.ndarray, None))
    m2: np.ndarray = field(default=cast(np.ndarray, None))

    def __post_init__(self) -> None:
        if self.mean is None:
            self.mean = np.zeros(self.dim)
        if self.m2 is None:
            self.m2 = np.zeros(self.dim if self.diagonal else self.dim * (self.dim + 1) // 2)

    def update(self, X: Any) -> Moments:
        """Add a batch of vectors (rows of ``X``)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[0] == 0:
            return self
        if X.shape[1] != self.dim:
            raise ValueError(f"expected {self.dim} features, got {X.shape[1]}")
        batch = Moments(self.dim, self.diagonal, X.shape[0], X.mean(axis=0))
        centred = X - batch.mean
        if self.diagonal:
            batch.m2 = (centred**2).sum(axis=0)
        else:
            rows, cols, _ = _triangle(self.dim)
            batch.m2 = (centred.T @ centred)[rows, cols]
        return self.merge(batch)

    def merge(self, other: Moments) -> Moments:
        """Combine with ``other`` in place (Chan's parallel formula); returns self."""
        if other.dim != self.dim or other.diagonal != self.diagonal:
            raise ValueError("cannot merge moments of different shapes")
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        correction = self.n * other.n / n
        if self.diagonal:
            self.m2 = self.m2 + other.m2 + delta**2 * correction
        else:
            rows, cols, _ = _triangle(self.dim)
            self.m2 = self.m2 + other.m2 + delta[rows] * delta[cols] * correction
        self.n = n
        return self

    def cov(self) -> np.ndarray:
        """Sample covariance (a diagonal matrix when ``diagonal``); zeros below two samples."""
        if self.n < 2:
            return np.zeros((self.dim, self.dim))
        if self.diagonal:
            return np.diag(self.m2) / (self.n - 1)
        rows, cols, _ = _triangle(self.dim)
        full = np.empty((self.dim, self.dim))
        full[rows, cols] = self.m2
        full[cols, rows] = self.m2
        return full / (self.n - 1)

    def var(self) -> np.ndarray:
        if self.n < 2:
            return np.zeros(self.dim)
        return (self.m2 if self.diagonal else self.m2[_triangle(self.dim)[2]]) / (self.n - 1)

    def copy(self) -> Moments:
        return Moments(self.dim, self.diagonal, self.n, self.mean.copy(), self.m2.copy())

    def nbytes(self) -> int:
        return self.mean.nbytes + self.m2.nbytes

    def to_dict(self) -> dict[str, Any]:
        return {"dim": self.dim, "diagonal": self.diagonal, "n": self.n,
                "mean": pack(self.mean), "m2": pack(self.m2)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Moments:
        dim, diagonal = int(data["dim"]), bool(data["diagonal"])
        m2, mean = unpack(data["m2"]), unpack(data["mean"])
        if m2.shape != ((dim,) if diagonal else (dim * (dim + 1) // 2,)) or mean.shape != (dim,):
            raise ValueError("moments of the wrong size")
        return cls(dim, diagonal, int(data["n"]), mean, m2)


@dataclass
class Histogram:
    """Counts per key (labels) or per bin (``edges`` given: values are binned,
    the first and last bins open-ended)."""

    edges: tuple[float, ...] | None = None
    counts: dict[Any, int] = field(default_factory=dict)

    def update(self, values: Iterable[Any]) -> Histogram:
        counts = self.counts
        if self.edges is None:
            for value in values:
                counts[value] = counts.get(value, 0) + 1
        else:
            edges = self.edges  # bisect_right is np.searchsorted(side="right"), NaN last: µs less per call
            for b in [bisect_right(edges, float(value)) for value in values]:
                counts[b] = counts.get(b, 0) + 1
        return self

    def merge(self, other: Histogram) -> Histogram:
        if other.edges != self.edges:
            raise ValueError("cannot merge histograms with different bins")
        for key, count in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + count
        return self

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def probabilities(self) -> dict[Any, float]:
        total = self.total
        return {k: c / total for k, c in self.counts.items()} if total else {}

    def entropy(self) -> float:
        """Shannon entropy in bits of the counted distribution."""
        p = np.asarray([c for c in self.counts.values() if c > 0], dtype=float)
        if p.size == 0:
            return 0.0
        p /= p.sum()
        return float(-(p * np.log2(p)).sum())

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges) if self.edges is not None else None,
                "counts": [[k, c] for k, c in self.counts.items()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Histogram:
        edges = tuple(data["edges"]) if data.get("edges") is not None else None
        counts: dict[Any, int] = {}
        for key, count in data["counts"]:
            counts[key if isinstance(key, Hashable) else str(key)] = int(count)
        return cls(edges, counts)


class Buckets:
    """Counts of consecutive integer buckets (minutes, say) as one dense
    array over the span from the first to the last bucket: 4 bytes a bucket
    whatever the traffic, against about 70 for a dict entry. Merges by adding."""

    __slots__ = ("first", "counts")

    def __init__(self, items: Mapping[int, int] | None = None) -> None:
        self.first = 0
        self.counts = np.zeros(0, dtype=np.uint32)
        for key, count in sorted((items or {}).items()):
            self.add(key, count)

    @property
    def last(self) -> int:
        return self.first + self.counts.size - 1

    def add(self, key: int, count: int = 1) -> None:
        counts = self.counts
        if not counts.size:
            self.first, self.counts = key, np.asarray([count], dtype=np.uint32)
        elif self.first <= key <= self.last:
            counts[key - self.first] += count
        elif key > self.last:
            grown = np.zeros(key - self.first + 1, dtype=np.uint32)
            grown[: counts.size] = counts
            grown[-1] = count
            self.counts = grown
        else:
            grown = np.zeros(self.last - key + 1, dtype=np.uint32)
            grown[grown.size - counts.size :] = counts
            grown[0] = count
            self.first, self.counts = key, grown

    def merge(self, other: Buckets) -> Buckets:
        if not other.counts.size:
            return self
        if not self.counts.size:
            self.first, self.counts = other.first, other.counts.copy()
            return self
        first, last = min(self.first, other.first), max(self.last, other.last)
        merged = np.zeros(last - first + 1, dtype=np.uint32)
        for part in (self, other):
            merged[part.first - first : part.first - first + part.counts.size] += part.counts
        self.first, self.counts = first, merged
        return self

    def drop_through(self, key: int) -> None:
        """Forget the buckets up to and including ``key``."""
        if self.counts.size and self.first <= key:
            self.counts = self.counts[key - self.first + 1 :].copy()
            self.first = key + 1
            nonzero = np.flatnonzero(self.counts)  # start at the first bucket with a count
            if not nonzero.size:
                self.counts = np.zeros(0, dtype=np.uint32)
            elif nonzero[0]:
                self.first += int(nonzero[0])
                self.counts = self.counts[nonzero[0] :].copy()

    def __len__(self) -> int:
        """Buckets in the span (idle ones included)."""
        return int(self.counts.size)

    def items(self) -> list[tuple[int, int]]:
        """(bucket, count) of the buckets with a count, in order."""
        nonzero = np.flatnonzero(self.counts)
        return list(zip((nonzero + self.first).tolist(), self.counts[nonzero].tolist()))

    def as_dict(self) -> dict[int, int]:
        return dict(self.items())

    def copy(self) -> Buckets:
        copy = Buckets()
        copy.first, copy.counts = self.first, self.counts.copy()
        return copy

    def nbytes(self) -> int:
        return self.counts.nbytes
