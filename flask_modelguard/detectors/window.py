"""Windowed statistics of an account's recent queries, and the rules on them
(the seed framework's entropy detector and the "more than 90% unique inputs
per hour" rule). Framework-free.

A :class:`Window` keeps the last ``size`` queries of an account in this
process (fingerprint as a 64-bit int, label, time: 20 bytes each) and
gives, over them: the normalised entropy of the predicted labels, the unique
ratio and duplicate rate, and the number and unique ratio of the queries of
the last hour. :func:`feature_entropy` is the Gaussian differential entropy
per dimension of the account's query features, from its mergeable moments.

The rules are opt-in (``MODELGUARD_RULES``): on natural data many benign
users send distinct inputs that cover every class (the digits example's users
all do), so neither rule separates them from thieves by itself; the values
are recorded in every evaluation either way.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..exc import InvalidValue

#: Rules a deployment may turn on, and their defaults.
RULES: dict[str, dict[str, float]] = {
    # more than `share` of the last hour's queries unique, with at least `min_queries` of them
    "unique_per_hour": {"share": 0.9, "min_queries": 100},
    # the labels of the last `window` queries spread over the classes at least this evenly
    "label_entropy": {"entropy": 0.98, "min_queries": 100},
}


class Window:
    """The last ``size`` queries of an account (this process's view), in
    three ring arrays: 20 bytes a query."""

    __slots__ = ("size", "count", "fingerprints", "codes", "times", "names")

    def __init__(self, size: int = 128) -> None:
        self.size = size
        self.count = 0  # queries ever added
        self.fingerprints = np.zeros(size, dtype=np.uint64)
        self.codes = np.zeros(size, dtype=np.int32)  # labels, as indices into names
        self.times = np.zeros(size)
        self.names: dict[str, int] = {}

    def add(self, fingerprint: int, label: str, ts: float) -> None:
        code = self.names.get(label)
        if code is None:
            code = self.names[label] = len(self.names)
        at = self.count % self.size
        self.fingerprints[at], self.codes[at], self.times[at] = fingerprint, code, ts
        self.count += 1

    def stats(self, hour: float = 3600.0) -> dict[str, float]:
        n = min(self.count, self.size)
        if not n:
            return {}
        counts = np.bincount(self.codes[:n])
        counts = counts[counts > 0]
        probs = counts / n
        entropy = float(-(probs * np.log2(probs)).sum())
        fingerprints = self.fingerprints[:n]
        unique = np.unique(fingerprints).size / n
        last = self.times[(self.count - 1) % self.size]
        recent = fingerprints[self.times[:n] >= last - hour]
        return {
            "window_queries": float(n),
            "window_label_entropy": entropy / math.log2(counts.size) if counts.size > 1 else 0.0,
            "window_unique_ratio": unique,
            "window_duplicate_rate": 1.0 - unique,
            "hour_queries": float(recent.size),
            "hour_unique_ratio": np.unique(recent).size / recent.size,
        }

    def nbytes(self) -> int:
        return self.fingerprints.nbytes + self.codes.nbytes + self.times.nbytes + 100 * len(self.names)


def feature_entropy(cov: np.ndarray, ridge: float = 1e-6) -> float | None:
    """Differential entropy per dimension of a Gaussian with covariance
    ``cov`` (nats): ``½ log(2πe) + ½ logdet(Σ) / d``; a small ridge keeps it
    finite for rank-deficient covariances (few or repeated queries)."""
    if cov.ndim != 2 or not cov.size or not np.isfinite(cov).all():
        return None
    d = cov.shape[0]
    sign, logdet = np.linalg.slogdet(cov + ridge * np.eye(d))
    if sign <= 0:
        return None
    return float(0.5 * math.log(2 * math.pi * math.e) + 0.5 * logdet / d)


def rule_reasons(stats: dict[str, Any], rules: dict[str, dict[str, float]]) -> list[str]:
    """The reasons of the rules ``stats`` break."""
    reasons = []
    rule = rules.get("unique_per_hour")
    if rule and stats.get("hour_queries", 0) >= rule["min_queries"] and stats["hour_unique_ratio"] > rule["share"]:
        reasons.append(f"{stats['hour_unique_ratio']:.0%} of {int(stats['hour_queries'])} queries in the last hour "
                       f"unique (> {rule['share']:.0%})")
    rule = rules.get("label_entropy")
    if rule and stats.get("window_queries", 0) >= rule["min_queries"] \
            and stats["window_label_entropy"] >= rule["entropy"]:
        reasons.append(f"label entropy {stats['window_label_entropy']:.3f} >= {rule['entropy']} over the last "
                       f"{int(stats['window_queries'])} queries")
    return reasons


def resolve_rules(spec: Any, prefix: str = "MODELGUARD_") -> dict[str, dict[str, float]]:
    """The ``rules`` setting as name → parameters, the defaults filled in
    (:class:`~flask_modelguard.exc.InvalidValue` naming what is wrong)."""
    if isinstance(spec, (list, tuple)):
        spec = {name: {} for name in spec}
    if not isinstance(spec, Mapping) or not set(spec) <= set(RULES):
        raise InvalidValue(f"{prefix}RULES must name some of {', '.join(RULES)}")
    out = {}
    for name, params in spec.items():
        if not isinstance(params, Mapping) or not set(params) <= set(RULES[name]):
            raise InvalidValue(f"{prefix}RULES[{name!r}] takes {', '.join(RULES[name])}")
        out[name] = {**RULES[name], **{k: float(v) for k, v in params.items()}}
    return out
