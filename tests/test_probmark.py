"""The probability mark (flask_modelguard.probmark): every label kept, a clone
of the probabilities claimed, and an exact null for models that do not know the key."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from flask_modelguard import probmark

SECRET = b"probability-mark-test-secret-000"


def _answers(n: int, k: int = 10, seed: int = 0) -> np.ndarray:
    """Confident answers, like a trained classifier's: a top class and a tail."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, (n, k))
    logits[np.arange(n), rng.integers(0, k, n)] += rng.uniform(3.0, 9.0, n)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def test_the_mark_keeps_every_label_and_moves_at_most_its_strength() -> None:
    P = _answers(2000)
    key = probmark.account_key(SECRET, 3)
    Q = probmark.lift(P, key, 0.1)
    np.testing.assert_array_equal(Q.argmax(axis=1), P.argmax(axis=1))
    np.testing.assert_allclose(Q.sum(axis=1), 1.0, atol=1e-12)
    moved = np.abs(Q - P).sum(axis=1)
    assert moved.max() <= 0.2 + 1e-12 and moved.mean() > 0.15  # most answers get the whole strength
    gained = (Q - P).argmax(axis=1)
    assert (gained != P.argmax(axis=1)).all()  # the lifted classes are never the top one
    top = P.argmax(axis=1)
    assert all(len(set(gained[top == t])) <= 3 for t in range(10))  # three keyed classes per top class
    np.testing.assert_array_equal(probmark.lift(P, key, 0.1), Q)  # deterministic
    other = probmark.lift(P, probmark.account_key(SECRET, 4), 0.1)
    assert ((other - P).argmax(axis=1) != gained).mean() > 0.5  # another account, other classes


def test_near_ties_keep_their_label_and_other_shapes_pass_untouched() -> None:
    key = probmark.account_key(SECRET, 1)
    rng = np.random.default_rng(7)
    # The top and a lower-indexed class one ulp below it: scaling may round them equal.
    near = rng.dirichlet(np.ones(10), 4000) * 0.3
    top = rng.integers(1, 10, 4000)
    near[np.arange(4000), top] = 0.4
    near[np.arange(4000), top - 1] = np.nextafter(0.4, 0.0)
    near /= near.sum(axis=1, keepdims=True)
    for strength in (0.1, 0.2, 0.3155, 0.5):
        batch = probmark.lift(near, key, strength)
        np.testing.assert_array_equal(batch.argmax(axis=1), near.argmax(axis=1))
        single = np.vstack([probmark.lift(near[i:i + 1], key, strength) for i in range(0, 4000, 40)])
        np.testing.assert_array_equal(single, batch[::40])
    P32 = _answers(50).astype(np.float32)  # computed in float64 whatever comes in, row by row or in a batch
    np.testing.assert_array_equal(probmark.lift(P32, key, 0.2), probmark.lift(P32.astype(np.float64), key, 0.2))
    np.testing.assert_array_equal(probmark.lift(P32[:1], key, 0.2), probmark.lift(P32, key, 0.2)[:1])
    scores = np.array([[2.0, -1.0, 0.5] + [0.0] * 7])  # not a distribution: left alone
    np.testing.assert_array_equal(probmark.lift(scores, key, 0.1), scores)
    nan = np.array([[np.nan] + [1.0 / 9] * 9])
    np.testing.assert_array_equal(probmark.lift(nan, key, 0.1), nan)
    eight = _answers(20, k=8)  # too few classes for any test to reach 2^-64: nothing is lifted
    np.testing.assert_array_equal(probmark.lift(eight, key, 0.1), eight)


def test_many_classes_lift_one_class_and_a_copy_is_still_claimed() -> None:
    P = _answers(4000, k=200)
    key = probmark.account_key(SECRET, 5)
    Q = probmark.lift(P, key, 0.2)
    np.testing.assert_array_equal(Q.argmax(axis=1), P.argmax(axis=1))
    assert probmark.test(key, P, Q).claimed
    assert probmark.test(probmark.account_key(SECRET, 6), P, Q).log2_p > -12


def test_the_tail_counts_the_observed_outcome_itself() -> None:
    """The observed sum, added in another order than the rows, may be a few ulps
    above its own grid value: the tail must still include it (review repro)."""
    candidates = np.array([[0.1, -102.4, 102.4, -0.1], [0.2, -0.2, 0.0, 0.0]])
    exact = np.mean([(a + b) >= 0.3 - 1e-12 for a in candidates[0] for b in candidates[1]])  # 5/16
    assert 2 ** probmark._Tail(candidates).log2(0.1 + 0.2) >= exact


def test_a_copy_of_an_accounts_answers_is_claimed_for_that_account_only() -> None:
    P = _answers(3000, seed=1)
    key = probmark.account_key(SECRET, 7)
    rng = np.random.default_rng(2)
    copy = np.clip(probmark.lift(P, key, 0.1) + rng.normal(0.0, 0.02, P.shape), 0.0, 1.0)
    mine = probmark.test(key, P, copy, account="thief")
    assert mine.claimed and mine.log2_p < -64 and mine.groups == 10
    assert "CLAIMED" in mine.summary()
    for account in range(8, 28):
        assert probmark.test(probmark.account_key(SECRET, account), P, copy).log2_p > -12
    ranked = probmark.ranked([mine, probmark.test(probmark.account_key(SECRET, 8), P, copy, account="x")], 1024)
    assert ranked[0].account == "thief" and ranked[0].log2_p == pytest.approx(mine.log2_p + 10)


def test_the_bound_holds_for_models_that_do_not_know_the_key() -> None:
    """The null is exact: over keys, P(log2 p <= -t) <= 2^-t, even for a suspect
    that errs the same way on every input of a class (as independent models do)."""
    P = _answers(1500, seed=3)
    rng = np.random.default_rng(4)
    S = P.copy()
    confused = (P.argmax(axis=1) + 1) % P.shape[1]  # a systematic confusion, the same whatever the key
    S[np.arange(len(P)), confused] += 0.05
    S = np.clip(S + rng.normal(0.0, 0.01, S.shape), 0.0, None)
    S /= S.sum(axis=1, keepdims=True)
    bounds = np.array([probmark.test(probmark.account_key(SECRET, f"null-{i}"), P, S).log2_p for i in range(400)])
    for t in (1, 2, 4):
        assert (bounds <= -t).mean() <= 2.0 ** -t + 0.04
    assert bounds.min() > -20


def test_a_clone_trained_on_marked_probabilities_carries_the_mark() -> None:
    """The example's digits model; a thief's 3,000 noisy natural digits, answered
    with the mark; its MLP distilled on the vectors, asked about every digit."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    from example_app.model import split, train
    from flask_modelguard.simulate.surrogate import train_clone

    warnings.simplefilter("ignore")
    X_train, X_test, y_train, _ = split()
    victim = train()
    rng = np.random.default_rng(5)
    X_thief = np.clip(X_test[rng.integers(0, len(X_test), 3000)] + rng.normal(0.0, 1.0, (3000, 64)), 0, 16)
    key = probmark.account_key(SECRET, 11)
    served = probmark.lift(victim.predict_proba(X_thief / 16.0), key, 0.1)
    clone = train_clone(X_thief, served.argmax(axis=1), served, answers="probabilities", hidden=128,
                        max_iter=500, low=0, high=16)
    probes = load_digits().data
    owner = victim.predict_proba(probes / 16.0)
    suspect = np.zeros_like(owner)
    suspect[:, clone.classes_] = clone.predict_proba(probes)
    assert probmark.test(key, owner, suspect).claimed
    independent = MLPClassifier((48,), max_iter=400, random_state=1).fit(X_train / 16.0, y_train)
    assert probmark.test(key, owner, independent.predict_proba(probes / 16.0)).log2_p > -12


def test_answers_that_do_not_pair_up_are_refused() -> None:
    key = probmark.account_key(SECRET, 1)
    with pytest.raises(ValueError, match="shape"):
        probmark.test(key, _answers(5), _answers(6))
    with pytest.raises(ValueError, match="finite"):
        probmark.test(key, _answers(2), np.full((2, 10), np.nan))
    for empty in ([], [[]], 0.5, True):
        with pytest.raises(ValueError, match="non-empty"):
            probmark.test(key, empty, empty)
