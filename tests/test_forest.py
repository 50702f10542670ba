"""FlatForest: a random forest scored with numpy, the same numbers as scikit-learn's."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from flask_modelguard.detectors import forest as forest_module
from flask_modelguard.detectors.forest import FlatForest, flat
from flask_modelguard.detectors.supervised import SupervisedModel


def _data(seed: int, n: int = 1500, d: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.choice([1e-4, 1.0, 1e4], size=d)
    X[:, 0] = np.round(X[:, 0], 1)  # ties: many rows exactly on a threshold's neighbours
    y = X[:, 0] + X[:, 1] * 1e-4 + rng.normal(size=n) * 0.3 > 0
    return X, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("make", [
    lambda s: RandomForestClassifier(n_estimators=60, min_samples_leaf=2, class_weight="balanced", random_state=s),
    lambda s: RandomForestClassifier(n_estimators=7, max_depth=3, random_state=s),
    lambda s: ExtraTreesClassifier(n_estimators=20, random_state=s),
])
def test_scores_are_scikit_learns_bit_for_bit(seed, make):
    X, y = _data(seed)
    fitted = make(seed).fit(X, y)
    rng = np.random.default_rng(seed + 100)
    probe = np.concatenate([
        X[:300],  # training rows: their values are the thresholds' neighbours
        rng.normal(size=(300, X.shape[1])) * 1e4,  # far outside
        np.nextafter(X[:100], np.inf),  # a hair above training values
        X[:1] * 0.0,
    ])
    assert np.array_equal(FlatForest(fitted).predict(probe), fitted.predict_proba(probe)[:, 1])


def test_a_tree_that_is_one_leaf_and_the_other_column():
    X = np.zeros((10, 3))
    y = np.array([True] * 7 + [False] * 3)
    fitted = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)  # nothing to split on
    probe = np.random.default_rng(0).normal(size=(4, 3))
    for column in (0, 1):
        assert np.array_equal(FlatForest(fitted, column).predict(probe), fitted.predict_proba(probe)[:, column])


def test_refuses_values_beyond_float32_as_scikit_learn_does():
    X, y = _data(0, n=200)
    fitted = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    flat_forest = FlatForest(fitted)
    huge = np.full((1, X.shape[1]), 1e300)  # inf in float32
    with pytest.raises(ValueError):
        fitted.predict_proba(huge)
    with pytest.raises(ValueError):
        flat_forest.predict(huge)
    with pytest.raises(ValueError):  # scikit-learn sends NaN down a side; nothing here sends it one
        flat_forest.predict(np.full((1, X.shape[1]), np.nan))
    with pytest.raises(ValueError, match="features"):
        flat_forest.predict(np.zeros((1, X.shape[1] + 1)))


def test_made_once_per_forest_and_not_pickled_with_the_model():
    vectors = [{"prada_w": float(i % 7) / 7, "log_queries": float(i % 5), "classes_seen": float(i % 10)}
               for i in range(60)]
    labels = [i % 2 == 0 for i in range(60)]
    model = SupervisedModel(features=("prada_w", "log_queries", "classes_seen"))
    model.fit(vectors, labels, groups=[i // 2 for i in range(60)])
    scores = model.score_many(vectors)
    assert np.array_equal(scores, model._model.predict_proba(
        np.array([[v["prada_w"], v["log_queries"], v["classes_seen"]] for v in vectors]))[:, 1])
    assert flat(model._model) is flat(model._model)
    restored = pickle.loads(pickle.dumps(model))
    assert not any(isinstance(v, FlatForest) for v in vars(restored).values())
    assert np.array_equal(restored.score_many(vectors), scores)
    assert restored._model in forest_module._FLAT
