"""Input gradients of clones: what gradient-guided thieves (Jacobian-based
augmentation, data-free extraction) follow. Framework-free (numpy; the clones
are scikit-learn models, differentiated analytically)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .surrogate import Clone


def _class_gradient(clone: Clone, X: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """∂F_y(x)/∂x: gradient of the clone's probability of ``labels[i]`` at ``X[i]``.

    Analytic, for clones backed by an ``MLPClassifier``/``MLPRegressor``
    (backpropagation through ``coefs_``/``intercepts_``) or a
    ``LogisticRegression`` (softmax of ``coef_``); with respect to the raw
    inputs (the clone's scaling included). Rows whose label the clone does
    not know, and every row of a constant clone, get zeros.
    """
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    grad = np.zeros_like(X)
    model = clone.model
    if model is None or len(X) == 0:
        return grad
    if hasattr(model, "coefs_"):
        weights, biases = list(model.coefs_), list(model.intercepts_)
        activation, output = model.activation, model.out_activation_
    else:
        weights, biases = [model.coef_.T], [model.intercept_]
        activation, output = "identity", "softmax" if model.coef_.shape[0] > 1 else "logistic"
    column = np.searchsorted(clone.classes_, labels)
    known = (column < len(clone.classes_)) & (clone.classes_[np.minimum(column, len(clone.classes_) - 1)] == labels)
    column = np.where(known, column, 0)
    rows = np.arange(len(X))
    # forward
    h, pre = clone.transform(X), []
    for W, b in zip(weights[:-1], biases[:-1], strict=True):
        a = h @ W + b
        pre.append(a)
        h = _ACTIVATIONS[activation][0](a)
    logits = h @ weights[-1] + biases[-1]
    # ∂output/∂logits
    if output == "softmax":
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        py = p[rows, column][:, None]
        delta = -py * p
        delta[rows, column] += py[:, 0]
    elif output == "logistic":  # binary: columns [1 − σ, σ] of one output unit
        s = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        delta = (s * (1.0 - s) * np.where(column == 1, 1.0, -1.0))[:, None]
    else:  # identity (a regressor of probability vectors: output k is class k)
        delta = np.zeros_like(logits)
        delta[rows, clone.classes_[column]] = 1.0
    # backward
    g = delta @ weights[-1].T
    for W, a in zip(reversed(weights[:-1]), reversed(pre), strict=True):
        g = (g * _ACTIVATIONS[activation][1](a)) @ W.T
    grad = g / clone.scale
    grad[~known] = 0.0
    return grad


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


#: name → (activation, its derivative at the pre-activation)
_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]] = {
    "relu": (lambda a: np.maximum(a, 0.0), lambda a: (a > 0).astype(np.float64)),
    "tanh": (np.tanh, lambda a: 1.0 - np.tanh(a) ** 2),
    "logistic": (_sigmoid, lambda a: _sigmoid(a) * (1.0 - _sigmoid(a))),
    "identity": (lambda a: a, np.ones_like),
}


def _entropy_gradient(clone: Clone, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The clone's predictive entropy ``H(x) = −Σ_k p_k log p_k`` at each row
    of ``X`` and its gradient ``∂H/∂x = −Σ_k log p_k · ∂p_k/∂x`` (the ``+1``
    term vanishes, as Σ_k ∂p_k/∂x = 0); zeros for a constant clone."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    P = np.clip(clone.predict_proba(X), 1e-12, 1.0)
    entropy = -(P * np.log(P)).sum(axis=1)
    grad = np.zeros_like(X)
    if clone.model is None:
        return entropy, grad
    for k, label in enumerate(clone.classes_):
        grad -= np.log(P[:, k])[:, None] * _class_gradient(clone, X, np.full(len(X), label))
    return entropy, grad
