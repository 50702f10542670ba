"""ADD: account-aware distribution discrepancy (Mei et al.). Framework-free.

Each class ``c`` of the model is a Gaussian ``N(μ_c, Σ_c)`` fitted on
reference data the owner provides (features of known-good inputs and the
model's labels). For an account, the features of its queries predicted as
``c`` are summarised by their mean and covariance (mergeable moments in
:class:`~flask_modelguard.state.AccountState`); the malicious score is the
sum over classes of the squared Fréchet distance between the account's class
statistics and the reference, weighted by the class's share of the account's
queries. Natural queries sit near the reference; synthetic, noised or
out-of-distribution ones do not.

The score of a benign account shrinks as it sends more queries (its class
covariances stop being rank-deficient), so the threshold depends on the
account's size: :meth:`Reference.fit` calibrates it on simulated benign
accounts drawn from held-back reference data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..state import AccountState, class_features, label_key
from ..stats import Moments
from .frechet import sqrtm_psd

#: Account sizes at which benign thresholds are calibrated (log-interpolated between).
CALIBRATION_SIZES = (20, 50, 100, 200, 500, 1000, 5000)


def add_score(state: AccountState, reference: Reference, min_class_queries: int = 2) -> float | None:
    """Σ_c share_c · d²_Fréchet(account_c, reference_c) over the account's classes
    with at least ``min_class_queries`` queries (None when there are none). A
    class missing from the reference counts with the largest distance seen.
    The distances are computed as the thresholds were calibrated: every class
    at once, the cross term's trace from batched eigenvalues."""
    state.flush()
    known: list[tuple[str, Moments]] = []
    missing = 0
    for label, moments in state.by_class.items():
        if moments.n < min_class_queries:
            continue
        if label in reference.classes:
            known.append((label, moments))
        else:
            missing += moments.n
    if not known:
        return None  # no class in common with the reference: no evidence (check the labels)
    counts = np.array([m.n for _, m in known], dtype=np.float64)
    d2 = reference.distances([label for label, _ in known], np.array([m.mean for _, m in known]),
                             np.array([m.cov() for _, m in known]))
    return float((counts @ d2 + missing * d2.max()) / (counts.sum() + missing))


@dataclass
class Reference:
    """Class-wise Gaussians of known-good data, in the state's class feature
    space, and benign thresholds of the ADD score by account size."""

    classes: dict[str, Moments]
    #: (account size, threshold) pairs, increasing sizes.
    thresholds: list[tuple[int, float]] = field(default_factory=list)
    #: The feature space it was fitted in (see ``MODELGUARD_FEATURE_SPACE``); "" unknown.
    space: str = ""
    #: Per-feature minimum and maximum of the data it was fitted on (None: unknown).
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    _roots: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    _traces: dict[str, float] = field(default_factory=dict, repr=False, compare=False)
    _range: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def root(self, label: str) -> np.ndarray:
        """The PSD square root of a class covariance (computed once)."""
        found = self._roots.get(label)
        if found is None:
            found = self._roots[label] = sqrtm_psd(self.classes[label].cov())
        return found

    @classmethod
    def fit(cls, X: np.ndarray, labels: Sequence[Any], *, calibration: float = 0.3, seed: int = 0,
            **calibrate_options: Any) -> Reference:
        """From feature vectors (as the featurizer makes them) and the model's
        labels: the class Gaussians are fitted on ``1 - calibration`` of the
        data, and the thresholds calibrated on simulated accounts drawn from
        the rest (so they include the gap between the fitted data and new
        natural data). ``calibration=0`` fits on everything, without thresholds."""
        X = np.asarray(X, dtype=np.float64)
        names = np.asarray([label_key(label) for label in labels])
        order = np.random.default_rng(seed).permutation(len(X))
        cut = int(round(len(X) * (1.0 - calibration)))
        fit_rows, cal_rows = order[:cut], order[cut:]
        Z = class_features(X[fit_rows])
        classes = {}
        for name in np.unique(names[fit_rows]):
            rows = Z[names[fit_rows] == name]
            if len(rows) >= 2:
                classes[str(name)] = Moments(Z.shape[1]).update(rows)
        if not classes:
            raise ValueError("the reference needs at least two samples of one class")
        reference = cls(classes, low=X.min(axis=0), high=X.max(axis=0))
        if len(cal_rows):
            reference.calibrate(X[cal_rows], names[cal_rows].tolist(), seed=seed, **calibrate_options)
        return reference

    def calibrate(
        self,
        X: np.ndarray,
        labels: Sequence[Any],
        *,
        quantile: float = 0.999,
        margin: float = 1.5,
        accounts: int = 200,
        seed: int = 0,
    ) -> Reference:
        """Thresholds from simulated benign accounts: for each size in
        :data:`CALIBRATION_SIZES`, ``accounts`` accounts drawn (with
        replacement) from ``X`` are scored; the threshold is the ``quantile``
        of their scores times ``margin``."""
        X = np.asarray(X, dtype=np.float64)
        Z = class_features(X)  # projected once: only the class moments matter here
        names = np.asarray([label_key(label) for label in labels])
        rng = np.random.default_rng(seed)
        self.thresholds = []
        for size in CALIBRATION_SIZES:
            draws = rng.integers(0, len(X), (accounts, size))
            scores = self._scores_of_draws(Z, names, draws)
            scores = scores[np.isfinite(scores)]
            if len(scores):
                self.thresholds.append((size, float(np.quantile(scores, quantile)) * margin))
        return self

    def _scores_of_draws(self, Z: np.ndarray, names: np.ndarray, draws: np.ndarray) -> np.ndarray:
        """:func:`add_score` of each simulated account (a row of ``draws``:
        indices into ``Z``), for all accounts at once: class sums from how
        often each row was drawn, batched eigenvalues; NaN where an account
        has no class in common with the reference."""
        accounts, rows = len(draws), len(Z)
        counts = np.bincount((np.arange(accounts)[:, None] * rows + draws).ravel(),
                             minlength=accounts * rows).reshape(accounts, rows).astype(np.float64)
        outer = (Z[:, :, None] * Z[:, None, :]).reshape(rows, -1)
        weighted, total, missing = np.zeros(accounts), np.zeros(accounts), np.zeros(accounts)
        worst = np.full(accounts, -np.inf)
        for label in np.unique(names):
            of_class = names == label
            c = counts[:, of_class]
            n = c.sum(axis=1)
            ok = n >= 2
            if not ok.any():
                continue
            total[ok] += n[ok]
            if label not in self.classes:
                missing[ok] += n[ok]
                continue
            d2 = self._class_distances(c[ok] @ Z[of_class], c[ok] @ outer[of_class], n[ok], str(label))
            weighted[ok] += n[ok] * d2
            worst[ok] = np.maximum(worst[ok], d2)
        scores = (weighted + missing * np.where(np.isfinite(worst), worst, 0.0)) / np.where(total > 0, total, 1.0)
        return np.where(np.isfinite(worst), scores, np.nan)

    def distances(self, labels: Sequence[str], means: np.ndarray, covs: np.ndarray) -> np.ndarray:
        """Squared Fréchet distances of Gaussians ``(means[i], covs[i])`` to the
        reference classes ``labels[i]``, all at once."""
        roots = np.array([self.root(label) for label in labels])
        ref_means = np.array([self.classes[label].mean for label in labels])
        ref_traces = np.array([self.trace(label) for label in labels])
        cross = roots @ covs @ roots
        values = np.linalg.eigvalsh((cross + cross.transpose(0, 2, 1)) / 2.0)
        d2 = (((means - ref_means) ** 2).sum(axis=1) + np.trace(covs, axis1=1, axis2=2) + ref_traces
              - 2.0 * np.sqrt(np.clip(values, 0.0, None)).sum(axis=1))
        return np.asarray(np.maximum(0.0, d2))

    def trace(self, label: str) -> float:
        """The trace of a class covariance (computed once)."""
        found = self._traces.get(label)
        if found is None:
            found = self._traces[label] = float(np.trace(self.classes[label].cov()))
        return found

    def _class_distances(self, sums: np.ndarray, outer_sums: np.ndarray, n: np.ndarray, label: str) -> np.ndarray:
        """Squared Fréchet distances to a reference class of accounts given by
        their class sums, sums of outer products and counts."""
        d = sums.shape[1]
        mean = sums / n[:, None]
        cov = (outer_sums.reshape(-1, d, d) - n[:, None, None] * mean[:, :, None] * mean[:, None, :]) \
            / (n - 1)[:, None, None]
        return self.distances([label] * len(n), mean, cov)

    def input_range(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Where features may lie before they count as hostile: the fitted
        data's range per feature, widened on each side by the widest
        feature's range (so a feature constant in the data, such as a blank
        corner pixel, still varies as much as any other). None when unknown."""
        if self.low is None or self.high is None:
            return None
        found = self._range
        if found is None:
            span = max(float(np.max(self.high - self.low)), 1.0)
            found = self._range = (self.low - span, self.high + span)
        return found

    def threshold(self, queries: int) -> float | None:
        """The ADD threshold for an account with ``queries`` inputs (log-interpolated)."""
        if not self.thresholds:
            return None
        sizes = np.log([n for n, _ in self.thresholds])
        values = [t for _, t in self.thresholds]
        return float(np.interp(np.log(max(1, queries)), sizes, values))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"classes": {name: m.to_dict() for name, m in self.classes.items()},
                               "thresholds": [list(t) for t in self.thresholds], "space": self.space}
        if self.low is not None and self.high is not None:
            out["low"], out["high"] = self.low.tolist(), self.high.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Reference:
        bounds = [None if data.get(k) is None else np.asarray(data[k], dtype=np.float64) for k in ("low", "high")]
        return cls({name: Moments.from_dict(m) for name, m in data["classes"].items()},
                   [(int(n), float(t)) for n, t in data.get("thresholds", [])], str(data.get("space") or ""),
                   low=bounds[0], high=bounds[1])
