"""The simulated world of the digits example, for ``flask modelguard evaluate``.

Benign users send held-out digits; thieves start from a few of them (seeds)
or use digits of another distribution (the training digits shifted, rotated,
noised, inverted: Knockoff-style natural data); clones are measured on held-out
digits no simulated user sees.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import rotate, shift

from flask_modelguard import ModelGuard
from flask_modelguard.simulate import World

from .model import N_CLASSES, split


def _other(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Digits from another distribution: each one shifted, rotated, noised or inverted."""
    images = X.reshape(-1, 8, 8)
    out = []
    for image in images:
        kind = rng.integers(4)
        if kind == 0:
            image = shift(image, rng.integers(-1, 2, size=2), order=0, mode="constant")
        elif kind == 1:
            image = rotate(image, rng.uniform(-30, 30), reshape=False, order=1, mode="constant")
        elif kind == 2:
            image = image + rng.normal(0, 3, image.shape)
        else:
            image = 16 - image
        out.append(np.clip(np.rint(image), 0, 16))
    return np.asarray(out).reshape(-1, 64)


def digits_world(victim: Any) -> World:
    """The digits :class:`World` around ``victim`` (the model's ``predict_proba``):
    held-out digits for benign users, 100 of them as thieves' seeds, the rest
    to measure clones on, transformed training digits as other natural data."""
    X_train, X_test, _, y_test = split()
    rng = np.random.default_rng(1234)
    order = rng.permutation(len(X_test))
    seeds, test = order[:100], order[100:]
    return World(
        pool=X_test, pool_labels=y_test,
        test=X_test[test], test_labels=y_test[test],
        victim=victim, n_classes=N_CLASSES,
        low=0.0, high=16.0, integer=True,
        other=_other(X_train, rng), seeds=X_test[seeds],
    )


def world(app: Any) -> World:
    """The :class:`World` of the example app, after fitting ADD's reference
    (on the training digits, as the model's owner would) when none is there
    (the app's default, ``MODELGUARD_REFERENCE``, has fitted it already)."""
    X_train = split()[0]
    model = app.extensions["digits_model"]
    state = ModelGuard.state(app)
    if state.settings.enabled and state.monitor.reference is None:
        with app.app_context():
            state.guard.fit_reference(X_train.tolist(), model.predict_proba(X_train).argmax(axis=1))
    return digits_world(model.predict_proba)
