"""A fitted random forest's trees as flat arrays, scored with numpy. Framework-free.

scikit-learn's ``predict_proba`` on one account of a 100-tree forest costs
milliseconds (input validation, then a call per tree); the worker scores one
account at each evaluation, so on the served example the forest was 40 % of
the worker's time. :class:`FlatForest` walks every tree at once, one level a
step, and gives the same probabilities, bit for bit: the inputs compared as
float32 against the same thresholds, each leaf's class counts normalised as
the tree does, the trees summed in their order and divided by their number.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np


class FlatForest:
    """The trees of a fitted ``RandomForestClassifier``, for the probability of ``classes_[column]``."""

    def __init__(self, forest: Any, column: int = 1) -> None:
        trees = [estimator.tree_ for estimator in forest.estimators_]
        starts = np.cumsum([0] + [t.node_count for t in trees[:-1]])
        left, right, feature, threshold, leaf = [], [], [], [], []
        for start, tree in zip(starts, trees):
            nodes = np.arange(tree.node_count)
            is_leaf = tree.children_left < 0
            # A leaf points to itself and always "goes left": walking past it changes nothing.
            left.append(np.where(is_leaf, nodes, tree.children_left) + start)
            right.append(np.where(is_leaf, nodes, tree.children_right) + start)
            feature.append(np.where(is_leaf, 0, tree.feature))
            threshold.append(np.where(is_leaf, np.inf, tree.threshold))
            counts = tree.value[:, 0, :]
            total = counts.sum(axis=1)
            leaf.append(counts[:, column] / np.where(total == 0.0, 1.0, total))
        self.left, self.right = np.concatenate(left), np.concatenate(right)
        self.feature, self.threshold = np.concatenate(feature), np.concatenate(threshold)
        self.leaf = np.concatenate(leaf)
        self.is_leaf = self.left == np.arange(len(self.left))
        self.roots = starts.astype(np.int64)
        self.depth = max(t.max_depth for t in trees)
        self.n_features = int(forest.n_features_in_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n,) probabilities, as ``forest.predict_proba(X)[:, column]``."""
        with np.errstate(over="ignore"):
            single = np.asarray(X, dtype=np.float32)
        if single.ndim != 2 or single.shape[1] != self.n_features:
            raise ValueError(f"expected rows of {self.n_features} features, got shape {single.shape}")
        if not np.isfinite(single).all():  # (scikit-learn refuses infinities, sends NaN down a side)
            raise ValueError("Input contains NaN, infinity or a value too large for dtype('float32').")
        values = single.astype(np.float64)
        rows = np.arange(len(values))[:, None]
        node = np.broadcast_to(self.roots, (len(values), len(self.roots)))
        for level in range(self.depth):
            goes_left = values[rows, self.feature[node]] <= self.threshold[node]
            node = np.where(goes_left, self.left[node], self.right[node])
            if level % 4 == 3 and self.is_leaf[node].all():  # most paths end well above the deepest leaf
                break
        # Summed tree by tree in order (cumsum adds sequentially), as the forest accumulates them.
        return np.cumsum(self.leaf[node], axis=1)[:, -1] / len(self.roots)


_FLAT: weakref.WeakKeyDictionary[Any, FlatForest] = weakref.WeakKeyDictionary()


def flat(forest: Any) -> FlatForest:
    """The :class:`FlatForest` of ``forest``, made once (not pickled with it)."""
    found = _FLAT.get(forest)
    if found is None:
        found = _FLAT[forest] = FlatForest(forest)
    return found
