"""The example model: a small MLP on scikit-learn's bundled digits (8x8 images,
64 features in 0..16, 10 classes), trained once and cached on disk."""

from __future__ import annotations

import os
import pickle

import numpy as np
import sklearn
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

N_FEATURES = 64
N_CLASSES = 10
SEED = 0


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/held-out split: ``X_train, X_test, y_train, y_test``.
    Held-out digits are what benign users (and simulations) send."""
    X, y = load_digits(return_X_y=True)
    return train_test_split(X, y, test_size=0.3, random_state=SEED, stratify=y)


def train() -> MLPClassifier:
    X_train, _, y_train, _ = split()
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=600, random_state=SEED)
    return model.fit(X_train / 16.0, y_train)


class DigitsModel:
    """``predict_proba`` on raw digit pixels (0..16)."""

    def __init__(self, clf: MLPClassifier) -> None:
        self.clf = clf

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.clf.predict_proba(X / 16.0)

    def features(self, x: object) -> np.ndarray:
        """The hidden layer's activations for one input: the feature space the
        guard's ADD detector compares accounts in (``MODELGUARD_FEATURES``)."""
        z = np.asarray(x, dtype=np.float64).reshape(1, -1) / 16.0
        return np.maximum(0.0, z @ self.clf.coefs_[0] + self.clf.intercepts_[0])[0]


def load_model(cache_dir: str) -> DigitsModel:
    """The trained model, from ``cache_dir`` if a compatible copy is there."""
    path = os.path.join(cache_dir, f"digits-mlp-{sklearn.__version__}.pkl")
    if os.path.exists(path):
        with open(path, "rb") as fh:
            return DigitsModel(pickle.load(fh))
    clf = train()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(clf, fh)
    os.replace(tmp, path)  # atomic: concurrent gunicorn workers never read half a file
    return DigitsModel(clf)
