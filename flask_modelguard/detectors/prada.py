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

**Sign steps.** Jacobian-based augmentation (Papernot et al. 2017) and
FGSM-style probing send ``x + λ·sign(g)``: the difference between such a
query and the earlier one it was grown from has the same magnitude in every
coordinate it changes. Each query's difference to its nearest member of the
growing set is checked for that signature (at least ``max(8, d/4)``
coordinates changed, 80 % of them within 2 % of the median change);
:attr:`Prada.steps` counts the queries that have it. Natural inputs almost
never do (0 of 90,000 held-out digits in 300 simulated users); the Jacobian
thief's first augmented query does, long before the distance test has enough
distances to speak.

Bounds (the reference keeps everything): at most ``max_set`` vectors per class
in the growing set (the oldest are evicted first), kept in half precision
(``dtype``: about three significant digits, exact for small integers such as
pixel values; pass ``np.float32`` for inputs that differ only in their fourth
digit), and the last ``max_distances`` minimum distances per class (float32).
The threshold's mean and deviation of the joining distances are running
moments over all of them, as in the reference. Memory per account is then at
most ``classes × (max_set × dim × 2 + max_distances × 4)`` bytes (20 KiB for
10 classes of 64 features at the defaults), and each query costs one distance
computation against at most ``max_set`` vectors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: ``scipy.stats.shapiro``, imported on first use (scipy.stats takes most of a
#: second to import; the guard's import and the request path never need it).
_shapiro: Callable[[np.ndarray], Any] | None = None


def shapiro_w(d: np.ndarray) -> float:
    """The Shapiro–Wilk W of ``d``."""
    global _shapiro
    if _shapiro is None:
        from scipy.stats import shapiro

        _shapiro = shapiro
    return float(_shapiro(d).statistic)


@dataclass(slots=True)
class _ClassSet:
    vectors: np.ndarray  # the growing set: rows [0, size), a ring once at max_set
    max_set: int
    distances: np.ndarray  # the last minimum distances: a ring of len(distances)
    size: int = 1
    next: int = 1
    seen: int = 0  # minimum distances recorded (the ring holds the last of them)
    # running count, mean and squared deviations of the joining distances (DG_c),
    # starting with the first member's 0
    joined: int = 1
    joined_mean: float = 0.0
    joined_m2: float = 0.0
    threshold: float = 0.0

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

    def record(self, d: float, limit: int) -> None:
        """Keep ``d`` among the last ``limit`` distances (the ring grows by doubling)."""
        size = len(self.distances)
        if self.seen == size < limit:
            self.distances = np.concatenate([self.distances, np.zeros(min(size, limit - size), np.float32)])
            size = len(self.distances)
        self.distances[self.seen % size] = d
        self.seen += 1

    def recent(self) -> np.ndarray:
        return self.distances[: min(self.seen, len(self.distances))]

    def join(self, d: float) -> None:
        """Welford's update of the joining distances, then T_c = max(T_c, mean − std)."""
        self.joined += 1
        step = d - self.joined_mean
        self.joined_mean += step / self.joined
        self.joined_m2 += step * (d - self.joined_mean)
        std = (self.joined_m2 / self.joined) ** 0.5
        self.threshold = max(self.threshold, self.joined_mean - std)


def sign_step(difference: np.ndarray, share: float = 0.8, tolerance: float = 0.02) -> bool:
    """Whether ``difference`` (between a query and an earlier one) changes at
    least ``max(8, d/4)`` coordinates, ``share`` of them by the same magnitude
    (within ``tolerance`` of the median change): a step ``λ·sign(g)``."""
    magnitudes = np.abs(difference)
    changed = magnitudes[magnitudes > 1e-6]
    n = changed.size
    if n < max(8, difference.size // 4):
        return False
    changed.sort()  # the median by hand, the share by bisection: np.median costs ten times more on 64 numbers
    median = float(changed[n // 2])
    lo = int(np.searchsorted(changed, median * (1.0 - tolerance), side="left"))
    hi = int(np.searchsorted(changed, median * (1.0 + tolerance), side="right"))
    return bool(hi - lo >= share * n)


class Prada:
    """PRADA state of one account."""

    def __init__(
        self,
        threshold: float = 0.9,
        *,
        max_set: int = 16,
        max_distances: int = 128,
        min_distances: int = 100,
        dtype: Any = np.float16,
    ) -> None:
        self.threshold = threshold
        self.max_set = max_set
        self.max_distances = max_distances
        self.dtype = np.dtype(dtype)
        #: The stored type's largest value (inputs beyond are stored as it, not as infinities).
        self._limit = float(np.finfo(self.dtype).max) if self.dtype.kind == "f" else None
        self.min_distances = min_distances
        self.classes: dict[Any, _ClassSet] = {}
        self.queries = 0
        #: Queries that are a sign step from their nearest earlier query (see above).
        self.steps = 0

    def update(self, x: np.ndarray, label: Any) -> float | None:
        """Add one query (feature vector and predicted class); returns its
        minimum distance to the growing set (None for a class's first query)."""
        x = np.asarray(x).ravel()
        limit = self._limit
        if limit is not None and not (-limit <= x.min() and x.max() <= limit):  # (NaN fails too)
            x = np.clip(np.nan_to_num(x, nan=0.0), -limit, limit)
        x = x.astype(self.dtype)  # stored as it is compared
        self.queries += 1
        found = self.classes.get(label)
        if found is None:
            vectors = np.zeros((min(4, self.max_set), x.size), dtype=self.dtype)
            vectors[0] = x
            self.classes[label] = _ClassSet(vectors, self.max_set, np.zeros(min(16, self.max_distances), np.float32))
            return None
        diff = found.vectors[: found.size].astype(np.float32) - x.astype(np.float32)
        squared = np.einsum("ij,ij->i", diff, diff)
        nearest = int(squared.argmin())
        dmin = float(np.sqrt(squared[nearest]))
        self.steps += sign_step(diff[nearest])
        found.record(dmin, self.max_distances)
        if dmin > found.threshold:
            found.add(x)
            found.join(dmin)
        return dmin

    def distances(self) -> np.ndarray:
        """The minimum distances the test uses: classes with at least 10, 3σ outliers removed."""
        parts = [c.recent() for c in self.classes.values() if min(c.seen, len(c.distances)) >= 10]
        if not parts:
            return np.zeros(0)
        pooled = np.concatenate(parts).astype(np.float64)
        spread = pooled.std()
        return pooled[np.abs(pooled - pooled.mean()) < 3 * spread] if spread > 0 else pooled

    def statistic(self) -> float | None:
        """Shapiro–Wilk W of the distances, or None while there are too few."""
        d = self.distances()
        if d.size <= self.min_distances:
            return None
        if np.ptp(d) == 0:
            return None  # identical distances (inputs without numbers, say): no evidence either way
        return shapiro_w(d)

    def flagged(self) -> bool:
        w = self.statistic()
        return w is not None and w < self.threshold

    def step_evidence(self, min_steps: int = 5, min_share: float = 0.01) -> float:
        """Sign steps over the count that flags (``min_steps``, or
        ``min_share`` of the queries when that is more); 1 is the threshold."""
        return self.steps / max(float(min_steps), min_share * self.queries)

    def memory_bytes(self) -> int:
        """Bytes held by the vectors and distance series (the dominant part)."""
        return sum(c.vectors.nbytes + c.distances.nbytes + 150 for c in self.classes.values())
