"""A supervised detector and a stacked, calibrated ensemble, both trained on
labelled accounts (from simulated traffic: ``flask modelguard evaluate``
exports them). Framework-free (scikit-learn).

Training rows are evaluations (an account's scores at one moment: its
behaviour vector and the other detectors' scores) with the account's label
(malicious or not) and the account as group. Thresholds are calibrated **per
account**: an account is flagged when any of its evaluations crosses, so the
threshold is the ``1 - fpr`` quantile of the benign accounts' *largest*
out-of-fold score (group k-fold: an account's evaluations never sit on both
sides of a fold). That is the rate the report measures: benign accounts
flagged, not benign evaluations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np

from .anomaly import DEFAULT_FEATURES
from .forest import flat
from .registry import evidence, ratios

#: Features a simulation cannot teach: when real users send their queries
#: (simulated benign users' timing is not your users'; a forest that learnt it
#: flagged 18 of 20 real-time benign users of the served example).
TIMING_FEATURES = ("burstiness",)
#: Inputs of the random forest: the behaviour features (timing left out) plus PRADA's statistic.
FOREST_FEATURES = (*(f for f in DEFAULT_FEATURES if f not in TIMING_FEATURES), "prada_w", "log_queries",
                   "classes_seen")

#: Value of a feature an evaluation lacks (PRADA has too few distances, no ADD reference).
MISSING = {"prada_w": 1.0}


def _matrix(vectors: Sequence[Mapping[str, float | None]], features: Sequence[str]) -> np.ndarray:
    rows = []
    for v in vectors:
        row = []
        for name in features:
            value = v.get(name)
            row.append(MISSING.get(name, 0.0) if value is None or not np.isfinite(value) else float(value))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(features))


def per_account_threshold(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, fpr: float) -> float:
    """The threshold that flags about ``fpr`` of benign accounts: the ``1 - fpr``
    quantile of each benign account's largest score (higher: never fewer)."""
    benign = _benign_maxima(scores, labels, groups)
    if not len(benign):
        raise ValueError("no benign accounts to calibrate on")
    return float(np.quantile(benign, 1.0 - fpr, method="higher"))


def _benign_maxima(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each benign account's largest score."""
    return np.array([scores[(groups == g) & ~labels].max() for g in np.unique(groups[~labels])])


def tail_threshold(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, fpr: float) -> float:
    """:func:`per_account_threshold`, or higher where a logit-normal fit of the
    benign accounts' largest probabilities puts the ``1 - fpr`` quantile
    higher. With fewer than ``1 / fpr`` benign accounts the empirical quantile
    is their maximum, which flags about ``1 / (n + 1)`` of new benign accounts,
    not ``fpr``; the fit extrapolates the tail instead. The fit is robust and
    one-sided: the median and the upper half's spread (the 84th percentile's
    distance from the median), so accounts scoring near 0 do not widen it."""
    from scipy.special import expit, logit
    from scipy.stats import norm

    empirical = per_account_threshold(scores, labels, groups, fpr)
    benign = _benign_maxima(scores, labels, groups)
    if len(benign) < 3:
        return empirical
    lifted = logit(np.clip(benign, 1e-6, 1.0 - 1e-6))
    middle, upper = np.quantile(lifted, [0.5, norm.cdf(1.0)])
    fitted = float(expit(middle + norm.ppf(1.0 - fpr) * (upper - middle)))
    return max(empirical, fitted)


def _folds(groups: np.ndarray, labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Group k-fold, benign and malicious accounts dealt separately (stratified by account)."""
    rng = np.random.default_rng(seed)
    fold_of: dict[Any, int] = {}
    for malicious in (False, True):
        accounts = np.unique(groups[labels == malicious])
        for i, g in enumerate(rng.permutation(accounts)):
            fold_of[g] = i % k
    assignment = np.asarray([fold_of[g] for g in groups])
    return [np.flatnonzero(assignment == f) for f in range(k)]


#: Labels or groups: a sequence or an array of them.
Column: TypeAlias = Sequence[Any] | np.ndarray


def _check(vectors: Sequence[Any], labels: Column, groups: Column | None,
           folds: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool)
    g = np.asarray(groups if groups is not None else np.arange(len(y)))
    if len(vectors) != len(y) or len(g) != len(y):
        raise ValueError("give one label and one group per vector")
    for malicious in (False, True):
        if len(np.unique(g[y == malicious])) < folds:
            raise ValueError(f"need at least {folds} {'malicious' if malicious else 'benign'} accounts")
    return y, g


@dataclass
class SupervisedModel:
    """A random forest over account vectors: the probability that the account
    is a thief. Same interface as :class:`~.anomaly.AnomalyModel`."""

    kind: str = "random_forest"
    features: tuple[str, ...] = FOREST_FEATURES
    fpr: float = 0.005
    seed: int = 0
    threshold: float = float("inf")
    _model: Any = field(default=None, repr=False)

    def _make(self) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=100, min_samples_leaf=2, class_weight="balanced",
                                      random_state=self.seed, n_jobs=1)

    def fit(self, vectors: Sequence[Mapping[str, float | None]], labels: Column,
            groups: Column | None = None, folds: int = 5) -> SupervisedModel:
        self.fit_out_of_fold(vectors, labels, groups, folds)
        return self

    def fit_out_of_fold(self, vectors: Sequence[Mapping[str, float | None]], labels: Column,
                        groups: Column | None = None, folds: int = 5) -> np.ndarray:
        """Fit; return each vector's score from the model of the folds that did
        not see its account (what the threshold is calibrated on)."""
        y, g = _check(vectors, labels, groups, folds)
        X = _matrix(vectors, self.features)
        out_of_fold = np.empty(len(y))
        for test in _folds(g, y, folds, self.seed):
            train = np.setdiff1d(np.arange(len(y)), test)
            model = self._make().fit(X[train], y[train])
            out_of_fold[test] = model.predict_proba(X[test])[:, 1]
        # Never below an even chance: a forest that separates its training
        # accounts perfectly would otherwise flag any score above zero.
        self.threshold = max(0.5, tail_threshold(out_of_fold, y, g, self.fpr))
        self._model = self._make().fit(X, y)
        return out_of_fold

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def score(self, vector: Mapping[str, float | None]) -> float:
        return float(self.score_many([vector])[0])

    def score_many(self, vectors: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """:meth:`score` of many vectors at once (a forest scores a batch far faster)."""
        if self._model is None:
            raise RuntimeError("fit the model first")
        if not len(vectors):
            return np.empty(0)
        X = _matrix(vectors, self.features)
        if hasattr(self._model, "estimators_") and list(self._model.classes_) == [False, True]:
            try:
                return flat(self._model).predict(X)  # the same numbers, a fraction of the time (forest.py)
            except ValueError:  # beyond float32: scikit-learn's own error
                pass
        return np.asarray(self._model.predict_proba(X)[:, 1])

    def importances(self) -> dict[str, float]:
        """Which features the forest relies on (mean decrease in impurity)."""
        if self._model is None:
            return {}
        return dict(zip(self.features, map(float, self._model.feature_importances_)))


@dataclass
class StackedEnsemble:
    """A logistic regression over the detectors' evidence (stacking), with a
    per-account threshold for a benign false-positive rate; its
    :meth:`malicious` score is 0.5 exactly at that threshold (the score the
    guard flags and poisons by)."""

    detectors: tuple[str, ...] = ()
    fpr: float = 0.005
    seed: int = 0
    threshold: float = float("inf")
    _model: Any = field(default=None, repr=False)

    def _matrix(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        # log1p: evidence spans orders of magnitude (ADD ratios of 0.3 and 300)
        return np.asarray(np.log1p(np.clip(_matrix(rows, self.detectors), 0.0, None)))

    def _make(self) -> Any:
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000)

    def fit(self, rows: Sequence[Mapping[str, float]], labels: Column,
            groups: Column | None = None, folds: int = 5) -> StackedEnsemble:
        """``rows``: each evaluation's :func:`~.registry.ratios` of its :func:`~.registry.evidence`."""
        y, g = _check(rows, labels, groups, folds)
        if not self.detectors:
            self.detectors = tuple(sorted({k for r in rows for k in r}))
        X = self._matrix(rows)
        out_of_fold = np.empty(len(y))
        for test in _folds(g, y, folds, self.seed):
            train = np.setdiff1d(np.arange(len(y)), test)
            out_of_fold[test] = self._make().fit(X[train], y[train]).predict_proba(X[test])[:, 1]
        self.threshold = max(0.5, per_account_threshold(out_of_fold, y, g, self.fpr))
        self._model = self._make().fit(X, y)
        return self

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def probability(self, row: Mapping[str, float]) -> float:
        if self._model is None:
            raise RuntimeError("fit the ensemble first")
        return float(self._probabilities(self._matrix([row]))[0])

    def _probabilities(self, X: np.ndarray) -> np.ndarray:
        """``predict_proba(X)[:, 1]``: for the binary logistic regression, its
        arithmetic without scikit-learn's checks (the same numbers; 0.8 ms less
        at every evaluation)."""
        model = self._model
        if getattr(model, "coef_", None) is not None and len(model.classes_) == 2 and np.isfinite(X).all():
            from scipy.special import expit

            return np.asarray(expit((X @ model.coef_.T + model.intercept_).reshape(-1)))
        return np.asarray(model.predict_proba(X)[:, 1])

    def malicious(self, row: Mapping[str, float]) -> float:
        """The calibrated score in [0, 1]: piecewise linear in the probability,
        0.5 at the threshold."""
        return float(self.malicious_many([row])[0])

    def malicious_many(self, rows: Sequence[Mapping[str, float]]) -> np.ndarray:
        """:meth:`malicious` of many evidence rows at once."""
        if self._model is None:
            raise RuntimeError("fit the ensemble first")
        p = self._probabilities(self._matrix(rows))
        t = min(max(self.threshold, 1e-9), 1.0 - 1e-9)
        return np.asarray(np.where(p <= t, 0.5 * p / t, 0.5 + 0.5 * (p - t) / (1.0 - t)))

    def weights(self) -> dict[str, float]:
        if self._model is None:
            return {}
        return dict(zip(self.detectors, map(float, self._model.coef_[0])))


@dataclass
class Trained:
    """Detectors fitted on one labelled training set (see :func:`train`)."""

    anomaly: list[Any]
    supervised: SupervisedModel | None
    ensemble: StackedEnsemble | None
    accounts: int
    malicious_accounts: int


def train(
    rows: Sequence[Mapping[str, float | None]],
    labels: Sequence[Any],
    groups: Sequence[Any],
    *,
    anomaly_kinds: Sequence[str] = (),
    fpr: float = 0.005,
    prada_threshold: float = 0.9,
    seed: int = 0,
) -> Trained:
    """Fit, in order, the anomaly models (on the benign rows), the random
    forest, and the stacked ensemble over every detector's evidence (the
    forest's own evidence taken out of fold, so the stack does not trust an
    overfitted score)."""
    from .anomaly import AnomalyModel

    y, g = _check(rows, labels, groups, 5)
    scored = [dict(r) for r in rows]  # copies: the models' scores are added
    benign = [r for r, malicious in zip(scored, y) if not malicious]
    anomaly = [AnomalyModel(kind, fpr=fpr, seed=seed).fit(benign) for kind in anomaly_kinds]
    for r in scored:
        for model in anomaly:
            value = model.score(r)
            r[model.kind] = value
            if model.threshold > 0:
                r[f"{model.kind}_ratio"] = value / model.threshold
    forest = SupervisedModel(fpr=fpr, seed=seed)
    out_of_fold = forest.fit_out_of_fold(scored, y, g)
    evidence_rows = []
    for r, p in zip(scored, out_of_fold):
        e = ratios(evidence(r, prada_threshold))
        e[forest.kind] = p / forest.threshold if forest.threshold > 0 else 0.0
        evidence_rows.append(e)
    ensemble = StackedEnsemble(fpr=fpr, seed=seed).fit(evidence_rows, y, g)
    return Trained(anomaly, forest, ensemble, len(np.unique(g)), len(np.unique(g[y])))


def rescore(trained: Trained, rows: Sequence[Mapping[str, Any]], prada_threshold: float = 0.9) -> np.ndarray:
    """The malicious score that ``trained`` gives each stored evaluation (its
    scores as the monitor recorded them), as the monitor computes it: every
    model's score and ``<kind>_ratio`` first, then the stacked ensemble over
    each evaluation's evidence (:mod:`.registry`); batched."""
    scored = [dict(r) for r in rows]
    if not scored:
        return np.empty(0)
    for model in [*trained.anomaly, *([trained.supervised] if trained.supervised is not None else [])]:
        usable = np.isfinite(model.threshold) and model.threshold > 0
        for r, value in zip(scored, model.score_many(scored)):
            r[model.kind] = float(value)
            if usable:
                r[f"{model.kind}_ratio"] = float(value) / model.threshold
    if trained.ensemble is None:
        return np.zeros(len(scored))
    return trained.ensemble.malicious_many([ratios(evidence(r, prada_threshold)) for r in scored])
