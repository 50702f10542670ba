"""Per-account state: mergeable statistics of an account's queries. Framework-free.

Every part merges exactly (counts, minute buckets, histograms, Chan moments,
a unique-input counter), so the state of an account can be built in several
processes and combined: ``a.merge(b)`` equals the state of one process that
saw both streams. PRADA's growing sets depend on query order and are not
part of it (see :mod:`flask_modelguard.detectors.prada`).

:data:`BEHAVIOUR` is the registry of the named account features computed from
a state (the input of the anomaly models and of reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .features import projection
from .sketch import UniqueCounter
from .stats import Buckets, Histogram, Moments, pack, unpack

#: Confidence histogram bins (top-1 probability).
CONFIDENCE_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
#: Dimension of the class-wise statistics ADD compares (a fixed projection of the features).
CLASS_DIM = 16
#: Request times kept for the inter-arrival statistics (the latest ones).
RECENT_TIMES = 64
#: Hashed clients kept per account (the smallest hashes: a bottom-k sample, merged exactly).
CLIENTS = 16


def label_key(label: Any) -> str:
    """A class label as a string key: ``3``, ``3.0`` and ``"3"`` are one class."""
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    if isinstance(label, str):
        try:
            number = float(label)
        except ValueError:
            return label
        return str(int(number)) if number.is_integer() else label
    return str(label)


def class_features(X: np.ndarray) -> np.ndarray:
    """Features projected to :data:`CLASS_DIM` dimensions (identity below it)."""
    X = np.atleast_2d(X)
    return X if X.shape[1] <= CLASS_DIM else X @ projection(X.shape[1], CLASS_DIM, seed=4051)


@dataclass
class Observation:
    """What the worker extracts from one request for the state."""

    ts: float
    fingerprints: Sequence[str]
    features: np.ndarray  # (n, dim)
    labels: Sequence[Any]
    confidences: Sequence[float | None]
    #: (n, d) the inputs themselves, flattened, where PRADA measures distances
    #: (as in the paper); None: PRADA uses ``features``.
    raw: np.ndarray | None = None
    #: (n,) which inputs the account had not sent before; only those enter the
    #: feature moments (a repeated input is no new information, and retries
    #: must not look like a narrow, odd distribution). None: all.
    new: Sequence[bool] | None = None
    #: The keyed 64-bit hash of the client that sent it (MODELGUARD_CLIENT_ID), if known.
    client: int | None = None


@dataclass
class AccountState:
    dim: int
    #: Minute buckets kept for rates (a day by default).
    window_minutes: int = 1440
    requests: int = 0
    queries: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    minutes: Buckets = field(default_factory=Buckets)
    labels: Histogram = field(default_factory=Histogram)
    confidences: Histogram = field(default_factory=lambda: Histogram(CONFIDENCE_EDGES))
    unique: UniqueCounter = field(default_factory=UniqueCounter)
    #: The latest ``RECENT_TIMES`` request times, sorted. Inter-arrival
    #: moments over the whole history cannot be merged exactly (processes
    #: that share an account each see other gaps); the latest times can: the
    #: merge keeps the latest of both, as one process would have.
    recent: np.ndarray = field(default_factory=lambda: np.zeros(0))
    moments: Moments = field(default=None)  # type: ignore[assignment]
    by_class: dict[str, Moments] = field(default_factory=dict)
    #: Feature rows buffered before they are folded into the moments.
    buffer_rows: int = 16
    #: What the features are (the feature function and its settings): states
    #: of different feature spaces must not be merged even when their
    #: dimensions agree. Empty: unknown (older states).
    space: str = ""
    #: The smallest :data:`CLIENTS` hashes of the clients that sent its queries, sorted.
    clients: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))

    def __post_init__(self) -> None:
        if self.moments is None:
            self.moments = Moments(self.dim, diagonal=True)
        self._rows: list[np.ndarray] = []
        self._row_labels: list[str] = []

    # -- building -----------------------------------------------------------------

    def update(self, obs: Observation) -> AccountState:
        n = len(obs.labels)
        self.requests += 1
        self.queries += n
        self.first_ts = min(self.first_ts, obs.ts)
        self.last_ts = max(self.last_ts, obs.ts)
        self.minutes.add(int(obs.ts // 60), n)
        self._trim()
        recent = self.recent
        if not recent.size or obs.ts >= recent[-1]:
            recent = np.append(recent, obs.ts)
        else:
            at = int(np.searchsorted(recent, obs.ts, side="right"))
            recent = np.concatenate((recent[:at], [obs.ts], recent[at:]))
        self.recent = recent[-RECENT_TIMES:]
        if obs.client is not None:
            self.clients = _bottom(self.clients, np.array([obs.client], dtype=np.uint64))
        self.labels.update(label_key(label) for label in obs.labels)
        self.confidences.update(c for c in obs.confidences if c is not None)
        self.unique.add(obs.fingerprints)
        keep = [i for i in range(len(obs.labels)) if obs.new is None or obs.new[i]]
        if len(obs.features) and keep:
            # Moments take batches: updating them once per request costs more
            # in numpy calls than in arithmetic, so rows wait in a small buffer.
            X = np.atleast_2d(np.asarray(obs.features, dtype=np.float64))
            self._rows.append(X if len(keep) == len(X) else X[keep])
            self._row_labels.extend(label_key(obs.labels[i]) for i in keep)
            if len(self._row_labels) >= self.buffer_rows:
                self.flush()
        return self

    def flush(self) -> AccountState:
        """Fold buffered feature rows into the moments (done before any read)."""
        if not self._rows:
            return self
        X = np.concatenate(self._rows)
        labels = np.asarray(self._row_labels)
        self._rows, self._row_labels = [], []
        self.moments.update(X)
        Z = class_features(X)
        for label in np.unique(labels):
            self.by_class.setdefault(str(label), Moments(Z.shape[1])).update(Z[labels == label])
        return self

    def _trim(self) -> None:
        """Keep the minutes of the last ``window_minutes`` before the newest (by
        time, so that merging then trimming equals one pass)."""
        if len(self.minutes):
            self.minutes.drop_through(self.minutes.last - self.window_minutes)

    @property
    def distinct(self) -> int:
        """Inputs in the feature moments (repeats excluded)."""
        self.flush()
        return sum(m.n for m in self.by_class.values())

    def merge(self, other: AccountState) -> AccountState:
        if other.dim != self.dim or (self.space and other.space and self.space != other.space):
            raise ValueError("cannot merge states of different feature spaces")
        self.space = self.space or other.space
        self.flush()
        other.flush()
        self.requests += other.requests
        self.queries += other.queries
        self.first_ts = min(self.first_ts, other.first_ts)
        self.last_ts = max(self.last_ts, other.last_ts)
        self.minutes.merge(other.minutes)
        self._trim()
        self.recent = np.sort(np.concatenate([self.recent, other.recent]))[-RECENT_TIMES:]
        self.clients = _bottom(self.clients, other.clients)
        self.labels.merge(other.labels)
        self.confidences.merge(other.confidences)
        self.unique.merge(other.unique)
        self.moments.merge(other.moments)
        for label, moments in other.by_class.items():
            mine = self.by_class.get(label)
            if mine is None:
                self.by_class[label] = moments.copy()
            else:
                mine.merge(moments)
        return self

    def finite(self) -> bool:
        """Whether every moment is a finite number (what may be stored)."""
        self.flush()
        return all(np.isfinite(m.mean).all() and np.isfinite(m.m2).all()
                   for m in (self.moments, *self.by_class.values()))

    # -- serialisation ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        self.flush()
        return {
            "dim": self.dim, "space": self.space, "window_minutes": self.window_minutes,
            "requests": self.requests, "queries": self.queries,
            "first_ts": self.first_ts if self.queries else None,
            "last_ts": self.last_ts if self.queries else None,
            "minutes": [[m, c] for m, c in self.minutes.items()],
            "recent": pack(self.recent), "clients": [f"{c:016x}" for c in self.clients.tolist()],
            "labels": self.labels.to_dict(), "confidences": self.confidences.to_dict(),
            "unique": self.unique.to_dict(), "moments": self.moments.to_dict(),
            "by_class": {label: m.to_dict() for label, m in self.by_class.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccountState:
        state = cls(int(data["dim"]), int(data["window_minutes"]), space=str(data.get("space") or ""))
        state.requests, state.queries = int(data["requests"]), int(data["queries"])
        state.first_ts = math.inf if data["first_ts"] is None else float(data["first_ts"])
        state.last_ts = -math.inf if data["last_ts"] is None else float(data["last_ts"])
        state.minutes = Buckets({int(m): int(c) for m, c in data["minutes"]})
        state.recent = np.sort(unpack(data.get("recent", [])))[-RECENT_TIMES:]
        state.clients = _bottom(np.zeros(0, dtype=np.uint64),
                                np.array([int(c, 16) for c in data.get("clients") or ()], dtype=np.uint64))
        state.labels = Histogram.from_dict(data["labels"])
        state.confidences = Histogram.from_dict(data["confidences"])
        state.unique = UniqueCounter.from_dict(data["unique"])
        state.moments = Moments.from_dict(data["moments"])
        state.by_class = {label: Moments.from_dict(m) for label, m in data["by_class"].items()}
        return state

    def copy(self) -> AccountState:
        """An independent copy (buffered rows folded first)."""
        self.flush()
        copy = AccountState(
            self.dim, self.window_minutes, self.requests, self.queries, self.first_ts, self.last_ts,
            minutes=self.minutes.copy(), labels=Histogram(self.labels.edges, dict(self.labels.counts)),
            confidences=Histogram(self.confidences.edges, dict(self.confidences.counts)), unique=self.unique.copy(),
            recent=self.recent.copy(), moments=self.moments.copy(), clients=self.clients.copy(),
            by_class={k: m.copy() for k, m in self.by_class.items()}, buffer_rows=self.buffer_rows, space=self.space,
        )
        return copy

    def compact(self) -> AccountState:
        """Hold the feature moments in single precision (half the bytes), for a
        copy that is only read: the detectors' view of what storage holds.
        Merges into storage stay in double precision (they use the deltas)."""
        self.flush()
        for m in (self.moments, *self.by_class.values()):
            m.mean, m.m2 = m.mean.astype(np.float32), m.m2.astype(np.float32)
        return self

    def memory_bytes(self) -> int:
        """Approximate bytes held (array data, buckets, histograms, buffered
        rows; the Python objects around them add about 2 KiB)."""
        total = self.moments.nbytes() + sum(m.nbytes() + 200 for m in self.by_class.values())
        total += self.minutes.nbytes() + 100 * (len(self.labels.counts) + len(self.confidences.counts))
        total += self.unique.nbytes() + self.recent.nbytes + sum(r.nbytes for r in self._rows)
        return total


def _bottom(mine: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The :data:`CLIENTS` smallest distinct hashes of both."""
    return np.unique(np.concatenate([mine, other]).astype(np.uint64))[:CLIENTS]


# -- the account behaviour vector ------------------------------------------------------


def _burstiness(state: AccountState) -> float:
    """Coefficient of variation of per-minute counts over the active span."""
    counts = state.minutes.counts.astype(np.float64)  # every minute of the span, idle ones as 0
    if not counts.size:
        return 0.0
    mean = counts.mean()
    return float(counts.std() / mean) if mean > 0 else 0.0


def _gaps(state: AccountState) -> np.ndarray:
    return np.diff(state.recent)


def _gap_cv(state: AccountState) -> float:
    gaps = _gaps(state)
    mean = gaps.mean() if gaps.size > 1 else 0.0
    return float(gaps.std() / mean) if mean > 0 else 0.0


def _label_entropy(state: AccountState) -> float:
    k = max(2, len(state.labels.counts))
    return state.labels.entropy() / math.log2(k) if state.labels.total else 0.0


def _share_below(state: AccountState, bins: int) -> float:
    """Share of answers whose top-1 confidence falls in the lowest ``bins`` bins."""
    total = state.confidences.total
    return sum(c for b, c in state.confidences.counts.items() if int(b) < bins) / total if total else 0.0


#: Named account features: name → (function of a state, description).
BEHAVIOUR: dict[str, tuple[Callable[[AccountState], float], str]] = {
    "log_queries": (lambda s: math.log1p(s.queries), "log(1 + inputs sent)"),
    "rate_per_minute": (
        lambda s: s.queries / max(1.0, (s.last_ts - s.first_ts) / 60.0) if s.queries else 0.0,
        "inputs per minute over the account's active span",
    ),
    "burstiness": (_burstiness, "coefficient of variation of per-minute counts"),
    "log_gap": (
        lambda s: math.log1p(float(_gaps(s).mean())) if s.recent.size > 1 else 0.0,
        f"log(1 + mean seconds between the last {RECENT_TIMES} requests)",
    ),
    "gap_cv": (_gap_cv, f"coefficient of variation of the gaps between the last {RECENT_TIMES} requests"),
    "unique_ratio": (lambda s: s.unique.estimate() / s.queries if s.queries else 0.0, "distinct inputs / inputs"),
    "label_entropy": (_label_entropy, "entropy of predicted labels / log2(classes seen)"),
    "classes_seen": (lambda s: float(len(s.labels.counts)), "distinct predicted labels"),
    "low_confidence_share": (lambda s: _share_below(s, 1), "share of answers with top-1 < 0.5"),
    "margin_share": (lambda s: _share_below(s, 2), "share of answers with top-1 < 0.6 (boundary probing)"),
    "high_confidence_share": (
        lambda s: 1.0 - _share_below(s, len(CONFIDENCE_EDGES)) if s.confidences.total else 0.0,
        "share of answers with top-1 >= 0.99",
    ),
    "feature_spread": (lambda s: float(np.sqrt(s.moments.var()).mean()), "mean per-feature standard deviation"),
}


def behaviour(state: AccountState) -> dict[str, float]:
    """The behaviour vector of an account, by feature name."""
    state.flush()
    return {name: float(fn(state)) for name, (fn, _) in BEHAVIOUR.items()}
