"""Clones: what a thief builds from the answers it was served, and how good they are.
Framework-free (numpy and scikit-learn).

:func:`train_clone` fits a scikit-learn model on served answers (the labels,
or the probability vectors when the route served them); :func:`fidelity` is
its agreement with the victim on held-out natural inputs (the measure of
model extraction of Tramèr et al., "Stealing Machine Learning Models via
Prediction APIs", USENIX Security 2016, and Jagielski et al., "High Accuracy
and High Fidelity Extraction of Neural Networks", USENIX Security 2020);
:func:`learning_curve` follows it over a thief's query count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .actor import Actor, World

KINDS = ("mlp", "logreg")
ANSWERS = ("labels", "probabilities")
#: Early stopping (a 10% validation split) only from this many samples on.
_EARLY_STOPPING_FROM = 1000
#: Soft-label weights below this are dropped (logreg on probabilities).
_MIN_WEIGHT = 1e-3


class Clone:
    """A trained stand-in for the victim: ``predict(X)`` gives labels.

    Inputs are scaled inside as ``z = (x - shift) / scale``. :attr:`model` is
    the scikit-learn estimator on ``z`` (None for a constant clone, when the
    answers held a single class); :attr:`classes_` are the labels of the
    columns of :meth:`predict_proba`. A regression clone's model outputs
    whole probability vectors (output ``k`` is class ``k``); only the classes
    that were served some probability are predicted.
    """

    def __init__(self, model: Any, classes: np.ndarray, shift: np.ndarray | float,
                 scale: np.ndarray | float, *, regression: bool = False) -> None:
        self.model = model
        self.classes_ = np.asarray(classes)
        self.shift = shift
        self.scale = scale
        #: The model regresses probability vectors (see above).
        self.regression = regression

    def transform(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=np.float64) - self.shift) / self.scale

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class scores, ``(n, len(classes_))``, rows summing to 1."""
        X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        if self.model is None:
            return np.ones((len(X), 1))
        if not self.regression:
            return np.asarray(self.model.predict_proba(self.transform(X)))
        out = np.clip(self._outputs(X), 0.0, None)
        total = out.sum(axis=1, keepdims=True)
        return np.divide(out, total, out=np.full_like(out, 1.0 / out.shape[1]), where=total > 0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
        if self.model is None:
            return np.full(len(X), self.classes_[0])
        if self.regression:
            return self.classes_[self._outputs(X).argmax(axis=1)]
        return np.asarray(self.model.predict(self.transform(X)))

    def _outputs(self, X: np.ndarray) -> np.ndarray:
        """A regression clone's outputs for :attr:`classes_`."""
        return np.asarray(self.model.predict(self.transform(X))).reshape(len(X), -1)[:, self.classes_]


def train_clone(X: np.ndarray, y: np.ndarray, P: np.ndarray | None = None, *, kind: str = "mlp",
                answers: str = "labels", seed: int = 0, low: float | None = None,
                high: float | None = None, hidden: int = 64, max_iter: int = 200,
                early_stopping: bool | None = None) -> Clone:
    """Fit a clone on served answers ``(X, y)`` (and probabilities ``P``).

    - ``kind="mlp"``: an ``MLPClassifier`` (one hidden layer of ``hidden``
      relu units) on the labels, or with ``answers="probabilities"`` an
      ``MLPRegressor`` on the probability vectors, predicting their argmax;
    - ``kind="logreg"``: a multinomial ``LogisticRegression`` on the labels,
      or with ``answers="probabilities"`` on soft labels: every input is
      repeated once per class with the served probability as sample weight,
      which minimises the cross-entropy to the served vectors.

    Inputs are scaled to [0, 1] by ``low``/``high`` (the world's range) when
    given, else standardised per feature. Served labels of a single class
    give a constant clone (predicting it), whatever ``answers``. Early
    stopping is used from 1,000 samples on unless ``early_stopping`` says
    otherwise (a thief that fits its data to the end memorises watermark
    answers; one that stops early may not).
    """
    X, y, P = _checked(X, y, P, kind, answers)
    shift, scale = _scaling(X, low, high)
    Z = (X - shift) / scale
    classes = np.unique(y)
    if len(classes) < 2:
        return Clone(None, classes, shift, scale)
    early = len(X) >= _EARLY_STOPPING_FROM if early_stopping is None else early_stopping
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter: expected, the clone is still usable
        if answers == "probabilities" and kind == "mlp":
            assert P is not None
            from sklearn.neural_network import MLPRegressor
            reg = MLPRegressor(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed,
                               early_stopping=early)
            seen = np.flatnonzero(P.max(axis=0) > 0)
            return Clone(reg.fit(Z, P), seen, shift, scale, regression=True)
        if answers == "probabilities":
            assert P is not None
            return _soft_logreg(Z, P, shift, scale, seed)
        if kind == "logreg":
            from sklearn.linear_model import LogisticRegression
            model = LogisticRegression(max_iter=max_iter, random_state=seed).fit(Z, y)
            return Clone(model, model.classes_, shift, scale)
        from sklearn.neural_network import MLPClassifier
        early = early and np.unique(y, return_counts=True)[1].min() >= 2  # a stratified split needs 2 per class
        mlp = MLPClassifier(hidden_layer_sizes=(hidden,), max_iter=max_iter, random_state=seed, early_stopping=early)
        return Clone(mlp.fit(Z, y), mlp.classes_, shift, scale)


def _checked(X: Any, y: Any, P: Any, kind: str, answers: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``train_clone``'s arguments checked and as arrays (inputs flattened)."""
    if kind not in KINDS:
        raise ValueError(f"unknown clone kind {kind!r} (expected one of {KINDS})")
    if answers not in ANSWERS:
        raise ValueError(f"unknown answers {answers!r} (expected one of {ANSWERS})")
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if len(X) == 0 or len(X) != len(y):
        raise ValueError(f"need as many labels as inputs, and at least one (got {len(X)} and {len(y)})")
    X = X.reshape(len(X), -1)
    if answers == "probabilities":
        if P is None:
            raise ValueError("answers='probabilities' needs the served probabilities P")
        P = np.asarray(P, dtype=np.float64).reshape(len(X), -1)
    return X, y, P


def _scaling(X: np.ndarray, low: float | None, high: float | None) -> tuple[np.ndarray | float, np.ndarray | float]:
    if low is not None and high is not None:
        return float(low), (float(high) - float(low)) or 1.0
    std = X.std(axis=0)
    return X.mean(axis=0), np.where(std > 0, std, 1.0)


def _soft_logreg(Z: np.ndarray, P: np.ndarray, shift: np.ndarray | float, scale: np.ndarray | float,
                 seed: int) -> Clone:
    from sklearn.linear_model import LogisticRegression
    n, k = P.shape
    rows, labels = np.repeat(np.arange(n), k), np.tile(np.arange(k), n)
    weights = P.ravel()
    keep = weights >= _MIN_WEIGHT
    if len(np.unique(labels[keep])) < 2:
        return Clone(None, np.unique(P.argmax(axis=1))[:1], shift, scale)
    model = LogisticRegression(max_iter=200, random_state=seed)
    model.fit(Z[rows[keep]], labels[keep], sample_weight=weights[keep])
    return Clone(model, model.classes_, shift, scale)


def fidelity(clone: Any, world: World) -> float:
    """Agreement of ``clone.predict`` with the victim's argmax on ``world.test``."""
    victim = np.asarray(world.victim(world.test)).argmax(axis=1)
    return float((np.asarray(clone.predict(world.test)) == victim).mean())


def accuracy(clone: Any, world: World) -> float:
    """Accuracy of ``clone.predict`` on ``world.test`` against the true labels."""
    return float((np.asarray(clone.predict(world.test)) == np.asarray(world.test_labels)).mean())


def learning_curve(actor: Actor, world: World, checkpoints: Iterable[int] = (100, 500, 1000, 2000, 5000), *,
                   kind: str = "mlp", answers: str = "labels", seed: int = 0,
                   on_clone: Callable[[int, Clone], None] | None = None, **options: Any) -> list[dict[str, float]]:
    """Clone quality over the actor's served answers: one clone per prefix.

    Checkpoints beyond what the actor was served are skipped and the full
    count is always included; rows are ``{"queries", "fidelity", "accuracy"}``
    (``queries`` = served inputs the clone was trained on). Empty when nothing
    was served. ``options`` go to :func:`train_clone`; ``on_clone(size,
    clone)`` sees each clone (e.g. to test the last one for watermarks).
    """
    X, y = actor.X, actor.y
    P = actor.P if answers == "probabilities" else None
    if answers == "probabilities" and P is None and len(X):
        raise ValueError(f"actor {actor.name!r} was not served probabilities on every answer")
    sizes = sorted({int(c) for c in checkpoints if 0 < int(c) < len(X)} | ({len(X)} if len(X) else set()))
    rows = []
    for size in sizes:
        clone = train_clone(X[:size], y[:size], None if P is None else P[:size], kind=kind, answers=answers,
                            seed=seed, low=world.low, high=world.high, **options)
        if on_clone is not None:
            on_clone(size, clone)
        rows.append({"queries": size, "fidelity": fidelity(clone, world), "accuracy": accuracy(clone, world)})
    return rows
