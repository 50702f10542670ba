"""Behaviour anomaly models: IsolationForest, One-Class SVM, LocalOutlierFactor.
Framework-free (scikit-learn).

Each model is fitted on the behaviour vectors of accounts known to be benign
(their stored states, or simulated benign accounts) and scores a new vector by
how unlike them it is. The threshold is the ``1 - fpr`` quantile of the
training accounts' own scores (computed out of sample for LOF's novelty mode
and the others alike, by cross-fitting), so that about ``fpr`` of benign
accounts would be flagged: the calibration the ensemble relies on.

Only size-robust features are used by default: counts such as the number of
queries would make every power user an outlier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .registry import ANOMALY_KINDS

#: Behaviour features that do not grow with the account's size (plus the
#: other detectors' size-normalised scores).
DEFAULT_FEATURES = (
    "unique_ratio", "label_entropy", "low_confidence_share", "margin_share",
    "high_confidence_share", "feature_spread", "burstiness", "add_ratio",
)

#: The anomaly models there are (the registry's "fit" kinds: MODELGUARD_ANOMALY_MODELS).
KINDS = ANOMALY_KINDS


def _make(kind: str, seed: int) -> Any:
    if kind == "isolation_forest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(n_estimators=100, random_state=seed)
    if kind == "one_class_svm":
        from sklearn.svm import OneClassSVM

        return OneClassSVM(gamma="scale", nu=0.05)
    if kind == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        return LocalOutlierFactor(n_neighbors=10, novelty=True)
    raise ValueError(f"unknown anomaly model {kind!r}; known: {', '.join(KINDS)}")


@dataclass
class AnomalyModel:
    """One fitted anomaly model over behaviour vectors, with its threshold."""

    kind: str
    features: tuple[str, ...] = DEFAULT_FEATURES
    fpr: float = 0.005
    seed: int = 0
    threshold: float = float("inf")
    _scaler: Any = field(default=None, repr=False)
    _model: Any = field(default=None, repr=False)

    def _matrix(self, vectors: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        return np.asarray([[float(v.get(name) or 0.0) for name in self.features] for v in vectors])

    def fit(self, benign: Sequence[Mapping[str, float | None]], folds: int = 5) -> AnomalyModel:
        """Fit on benign behaviour vectors; the threshold comes from scores of
        held-out folds, so it is not fitted to the accounts it is judged on."""
        from sklearn.preprocessing import StandardScaler

        X = self._matrix(benign)
        if len(X) < 2 * folds:
            raise ValueError(f"need at least {2 * folds} benign accounts, got {len(X)}")
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(X))
        held_out = []
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            scaler = StandardScaler().fit(X[train])
            model = _make(self.kind, self.seed).fit(scaler.transform(X[train]))
            held_out.extend(-model.decision_function(scaler.transform(X[test])))
        self.threshold = float(np.quantile(held_out, 1.0 - self.fpr))
        self._scaler = StandardScaler().fit(X)
        self._model = _make(self.kind, self.seed).fit(self._scaler.transform(X))
        return self

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def score(self, vector: Mapping[str, float | None]) -> float:
        """How anomalous (higher: more), on the scale of :attr:`threshold`."""
        return float(self.score_many([vector])[0])

    def score_many(self, vectors: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """:meth:`score` of many vectors at once."""
        if self._model is None:
            raise RuntimeError("fit the anomaly model first")
        if not len(vectors):
            return np.empty(0)
        return -np.asarray(self._model.decision_function(self._scaler.transform(self._matrix(vectors))))

    def flags(self, vector: Mapping[str, float | None]) -> bool:
        return self.score(vector) > self.threshold
