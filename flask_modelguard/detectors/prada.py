"""PRADA (Juuti et al., "PRADA: Protecting against DNN Model Stealing Attacks",
EuroS&P 2019), with bounded memory. Framework-free.

Per account and predicted class, a *growing set* of earlier queries is kept.
Each new query's minimum L2 distance to the growing set of its class is
recorded; the query joins the set when that distance exceeds the class
threshold ``T_c = max(T_c, mean(DG_c) − std(DG_c))`` over the distances that
made earlier queries join. Natural queries give roughly normally distributed
minimum distances; synthetic ones (Jacobian augmentation, random probing)
do not. Once more than ``min_distances`` distances (from classes with at least
10, outliers beyond 3σ removed) are known, the Shapiro–Wilk W is computed and
the account is flagged when ``W < threshold`` (0.9 by default, as in the
reference code's experiments; the paper tunes it per model).

Bounds (the reference keeps everything): at most ``max_set`` vectors per class
in the growing set (the oldest are evicted first) and the last
``max_distances`` minimum distances per class. Memory per account is then at
most ``classes × (max_set × dim × 4 + max_distances × 8)`` bytes, and each
query costs one distance computation against at most ``max_set`` vectors.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import shapiro


@dataclass
class _ClassSet:
    vectors: np.ndarray  # the growing set: rows [0, size), a ring once at max_set
    max_set: int
    size: int = 1
    next: int = 1
    joined: list[float] = field(default_factory=lambda: [0.0])  # DG_c
    threshold: float = 0.0
    distances: deque[float] = field(default_factory=deque)

    def add(self, x: np.ndarray) -> None:
        """Join the growing set; the oldest member leaves when it is full."""
        capacity = len(self.vectors)
        if self.size == capacity < self.max_set:  # grow by doubling, up to max_set
            grown = np.zeros((min(2 * capacity, self.max_set), self.vectors.shape[1]), dtype=self.vectors.dtype)
            grown[:capacity] = self.vectors
            self.vectors, self.next = grown, capacity
        self.vectors[self.next] = x
        self.next = (self.next + 1) % len(self.vectors) if len(self.vectors) == self.max_set else self.next + 1
        self.size = min(self.size + 1, self.max_set)


class Prada:
    """PRADA state of one account."""

    def __init__(
        self,
        threshold: float = 0.9,
        *,
        max_set: int = 64,
        max_distances: int = 256,
        min_distances: int = 100,
    ) -> None:
        self.threshold = threshold
        self.max_set = max_set
        self.max_distances = max_distances
        self.min_distances = min_distances
        self.classes: dict[Any, _ClassSet] = {}
        self.queries = 0

    def update(self, x: np.ndarray, label: Any) -> float | None:
        """Add one query (feature vector and predicted class); returns its
        minimum distance to the growing set (None for a class's first query)."""
        x = np.asarray(x, dtype=np.float32).ravel()
        self.queries += 1
        found = self.classes.get(label)
        if found is None:
            vectors = np.zeros((min(4, self.max_set), x.size), dtype=np.float32)
            vectors[0] = x
            self.classes[label] = _ClassSet(vectors, self.max_set)
            return None
        diff = found.vectors[: found.size] - x
        dmin = float(np.sqrt(np.einsum("ij,ij->i", diff, diff).min()))
        found.distances.append(dmin)
        if len(found.distances) > self.max_distances:
            found.distances.popleft()
        if dmin > found.threshold:
            found.add(x)
            found.joined.append(dmin)
            if len(found.joined) > self.max_distances:
                del found.joined[0]
            joined = np.asarray(found.joined)
            found.threshold = max(found.threshold, float(joined.mean() - joined.std()))
        return dmin

    def distances(self) -> np.ndarray:
        """The minimum distances the test uses: classes with at least 10, 3σ outliers removed."""
        pooled = np.asarray([d for c in self.classes.values() if len(c.distances) >= 10 for d in c.distances])
        if pooled.size == 0:
            return pooled
        spread = pooled.std()
        return pooled[np.abs(pooled - pooled.mean()) < 3 * spread] if spread > 0 else pooled

    def statistic(self) -> float | None:
        """Shapiro–Wilk W of the distances, or None while there are too few."""
        d = self.distances()
        if d.size <= self.min_distances:
            return None
        if np.ptp(d) == 0:
            return None  # identical distances (inputs without numbers, say): no evidence either way
        return float(shapiro(d).statistic)

    def flagged(self) -> bool:
        w = self.statistic()
        return w is not None and w < self.threshold

    def memory_bytes(self) -> int:
        """Bytes held by the vectors and distance series (the dominant part)."""
        total = 0
        for c in self.classes.values():
            total += c.vectors.nbytes + 8 * (len(c.distances) + len(c.joined))
        return total
