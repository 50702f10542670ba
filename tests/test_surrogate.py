"""Clones trained on served answers, and how they are measured."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from example_app.model import load_model, split
from flask_modelguard.simulate.actor import Actor, Answer, World
from flask_modelguard.simulate.attackers import KnockoffThief
from flask_modelguard.simulate.surrogate import Clone, accuracy, fidelity, learning_curve, train_clone


@pytest.fixture(scope="module")
def world(model_cache: str) -> World:
    victim = load_model(model_cache)
    X_train, X_test, _, y_test = split()
    return World(pool=X_train, test=X_test, test_labels=y_test, victim=victim.predict_proba, n_classes=10,
                 low=0.0, high=16.0, seeds=X_train[:100], integer=True)


@pytest.fixture(scope="module")
def natural(world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2,000 natural digits (the training digits, then noised copies), labelled by the victim."""
    rng = np.random.default_rng(0)
    extra = world.pool[rng.integers(0, len(world.pool), 2000 - len(world.pool))]
    X = np.vstack([world.pool, world.clip(extra + rng.normal(0, 1.0, extra.shape))])
    P = world.victim(X)
    return X, P.argmax(axis=1), P


def served(world: World, X: np.ndarray, labels_only: bool = False) -> Actor:
    """A knockoff thief that was served the victim's answers on ``X``, in order."""
    actor = KnockoffThief("t", len(X), batch=100).bind(world, np.random.default_rng(0))
    for start in range(0, len(X), 100):
        inputs = X[start:start + 100]
        P = world.victim(inputs)
        request = actor.next()
        assert request is not None
        request.inputs = inputs
        actor.receive(request, Answer(200, P.argmax(axis=1), None if labels_only else P))
    return actor


@pytest.mark.parametrize(("kind", "answers"), [("mlp", "labels"), ("mlp", "probabilities"),
                                               ("logreg", "labels"), ("logreg", "probabilities")])
def test_clone_on_natural_digits_is_faithful(kind: str, answers: str, world: World, natural: Any) -> None:
    X, y, P = natural
    clone = train_clone(X, y, P, kind=kind, answers=answers, low=world.low, high=world.high)
    assert isinstance(clone, Clone)
    assert fidelity(clone, world) > 0.8
    assert abs(accuracy(clone, world) - fidelity(clone, world)) < 0.1  # the victim is ~97% accurate
    proba = clone.predict_proba(world.test[:7])
    assert proba.shape == (7, len(clone.classes_)) and np.allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(clone.classes_[proba.argmax(axis=1)], clone.predict(world.test[:7]))


def test_clone_scales_inputs_itself(world: World, natural: Any) -> None:
    X, y, _ = natural
    assert fidelity(train_clone(X, y), world) > 0.8  # standardised per feature
    uniform = np.random.default_rng(0).integers(0, 17, (2000, 64)).astype(float)
    weak = train_clone(uniform, world.victim(uniform).argmax(axis=1), low=0.0, high=16.0)
    assert 0.0 <= fidelity(weak, world) < 0.8  # uniform noise teaches little about digits


@pytest.mark.parametrize(("kind", "answers"), [("mlp", "labels"), ("mlp", "probabilities"),
                                               ("logreg", "labels"), ("logreg", "probabilities")])
def test_degenerate_answers_do_not_crash(kind: str, answers: str, world: World) -> None:
    X = world.pool[:30]
    y = np.full(30, 3)
    clone = train_clone(X, y, np.eye(10)[y], kind=kind, answers=answers, low=0.0, high=16.0)
    assert set(clone.predict(world.test).tolist()) == {3}
    one = train_clone(X[:1], y[:1], np.eye(10)[y[:1]], kind=kind, answers=answers)
    assert set(one.predict(world.test[:5]).tolist()) == {3}
    assert 0.0 <= fidelity(one, world) <= 1.0
    two = train_clone(X[:2], np.array([1, 7]), np.eye(10)[[1, 7]], kind=kind, answers=answers)
    assert set(two.predict(world.test).tolist()) <= {1, 7}


def test_bad_arguments() -> None:
    X, y = np.zeros((3, 4)), np.zeros(3, dtype=int)
    with pytest.raises(ValueError, match="kind"):
        train_clone(X, y, kind="forest")
    with pytest.raises(ValueError, match="answers"):
        train_clone(X, y, answers="logits")
    with pytest.raises(ValueError, match="needs the served probabilities"):
        train_clone(X, y, answers="probabilities")
    with pytest.raises(ValueError, match="as many labels"):
        train_clone(X, y[:2])
    with pytest.raises(ValueError, match="at least one"):
        train_clone(X[:0], y[:0])


def test_learning_curve(world: World, natural: Any) -> None:
    X, _, _ = natural
    actor = served(world, X[:700])
    curve = learning_curve(actor, world, checkpoints=[50, 300, 1000, 5000], kind="logreg")
    assert [row["queries"] for row in curve] == [50, 300, 700]
    assert all(set(row) == {"queries", "fidelity", "accuracy"} for row in curve)
    assert curve[-1]["fidelity"] > curve[0]["fidelity"] and curve[-1]["fidelity"] > 0.8
    soft = learning_curve(actor, world, checkpoints=[], kind="logreg", answers="probabilities")
    assert [row["queries"] for row in soft] == [700]
    labels_only = served(world, X[:200], labels_only=True)
    with pytest.raises(ValueError, match="not served probabilities"):
        learning_curve(labels_only, world, answers="probabilities")
    fresh = KnockoffThief("none", 10).bind(world, np.random.default_rng(0))
    assert learning_curve(fresh, world) == []


def test_mlp_clone_on_5000_answers_trains_in_seconds(world: World) -> None:
    rng = np.random.default_rng(1)
    X = world.clip(world.pool[rng.integers(0, len(world.pool), 5000)] + rng.normal(0, 1.5, (5000, 64)))
    P = world.victim(X)
    for answers in ("labels", "probabilities"):
        t0 = time.process_time()  # CPU, not wall time: a busy machine must not fail it
        with threadpool_limits(1):  # nor BLAS threads spinning against each other
            clone = train_clone(X, P.argmax(axis=1), P, answers=answers, low=0.0, high=16.0)
        elapsed = time.process_time() - t0
        assert elapsed < 15.0, f"{answers}: {elapsed:.1f} s of CPU"
        assert fidelity(clone, world) > 0.9
