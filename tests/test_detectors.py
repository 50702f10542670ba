"""Detectors on constructed data where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm

from flask_modelguard.detectors import Prada, frechet_distance, sqrtm_psd


def direct_frechet(mu1, c1, mu2, c2):
    cross = sqrtm(c1 @ c2)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * np.real(cross)))


def random_cov(rng, d, rank=None):
    A = rng.normal(size=(d, rank or d))
    return A @ A.T


def test_frechet_matches_the_direct_formula():
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        c1, c2 = random_cov(rng, d), random_cov(rng, d)
        assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(direct_frechet(mu1, c1, mu2, c2), rel=1e-6)


def test_frechet_is_zero_for_identical_gaussians_and_sound_when_singular():
    rng = np.random.default_rng(2)
    c = random_cov(rng, 8)
    assert frechet_distance(np.ones(8), c, np.ones(8), c) == pytest.approx(0.0, abs=1e-8)
    singular = random_cov(rng, 8, rank=2)  # a window of 3 queries in 8 dimensions
    value = frechet_distance(np.zeros(8), singular, np.zeros(8), c)
    assert np.isfinite(value) and value >= 0
    assert value == pytest.approx(direct_frechet(np.zeros(8), singular, np.zeros(8), c), rel=1e-5)
    # mean shift only: the squared distance of the means
    assert frechet_distance(np.zeros(3), np.eye(3), np.full(3, 2.0), np.eye(3)) == pytest.approx(12.0)


def test_sqrtm_psd_squares_back_and_clips_rounding_noise():
    rng = np.random.default_rng(3)
    c = random_cov(rng, 6, rank=3)
    root = sqrtm_psd(c - 1e-12 * np.eye(6))
    assert np.all(np.isreal(root))
    np.testing.assert_allclose(root @ root, c, atol=1e-8)


def natural(rng, n):
    """Digits-like natural queries: the held-out digits, as a benign user sends them."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    idx = rng.permutation(len(X))[:n]
    return X[idx], y[idx]


def test_prada_passes_natural_queries_and_flags_synthetic_ones():
    rng = np.random.default_rng(0)
    X, y = natural(rng, 600)
    benign = Prada()
    for x, label in zip(X, y):
        benign.update(x, label)
    assert not benign.flagged() and benign.statistic() > 0.9

    # Jacobian-augmentation-like thief: 20 seeds, each round adds a signed step
    # of 0.1 × range from every point so far (Papernot et al.'s set growth).
    seeds, seed_labels = natural(rng, 20)
    jbda = Prada()
    points = list(zip(seeds, seed_labels))
    for x, label in points:
        jbda.update(x, label)
    while jbda.queries < 600:
        grown = [(np.clip(x + 1.6 * rng.choice([-1, 1], size=64), 0, 16), label) for x, label in points]
        for x, label in grown:
            jbda.update(x, label)
        points += grown
    # Gaussian-perturbed copies of a few natural samples
    perturbed = Prada()
    for i in range(600):
        perturbed.update(np.clip(seeds[i % 20] + rng.normal(0, 1.0, 64), 0, 16), seed_labels[i % 20])
    for thief in (jbda, perturbed):
        assert thief.flagged() and thief.statistic() < 0.9


def test_prada_misses_uniform_random_queries():
    """A known limit of PRADA (documented): independent uniform noise gives
    normally distributed minimum distances, so it is not flagged."""
    rng = np.random.default_rng(0)
    p = Prada()
    for _ in range(600):
        p.update(rng.uniform(0, 16, 64), int(rng.integers(0, 10)))
    assert not p.flagged()


def test_prada_needs_enough_distances_and_bounds_memory():
    rng = np.random.default_rng(5)
    p = Prada(max_set=16, max_distances=50)
    assert p.update(np.zeros(64), 0) is None
    for _ in range(30):
        p.update(rng.normal(size=64), 0)
    assert p.statistic() is None  # 30 distances, fewer than 100
    for _ in range(2000):
        p.update(rng.normal(size=64) * 5, int(rng.integers(0, 10)))
    assert all(c.size <= 16 and len(c.vectors) == 16 and len(c.recent()) == 50 for c in p.classes.values())
    assert p.memory_bytes() <= 10 * (16 * 64 * 2 + 4 * 50 + 200)


def test_prada_threshold_follows_the_joining_distances_as_in_the_reference():
    """The growing-set threshold T_c = max(T_c, mean(DG_c) − std(DG_c)) over
    every distance that joined (running moments, not a window), checked
    against a direct computation that keeps them all."""
    rng = np.random.default_rng(6)
    p = Prada(max_set=4096, dtype=np.float64)
    X = rng.normal(size=(400, 8)) * rng.uniform(0.5, 3, (400, 1))
    members, joined, threshold = [X[0]], [0.0], 0.0
    p.update(X[0], "a")
    for x in X[1:]:
        d = min(float(np.linalg.norm(m - x)) for m in members)
        assert p.update(x, "a") == pytest.approx(d, rel=1e-5)
        if d > threshold:
            members.append(x)
            joined.append(d)
            threshold = max(threshold, float(np.mean(joined) - np.std(joined)))
    assert p.classes["a"].threshold == pytest.approx(threshold, rel=1e-6)  # distances in float32
    assert p.classes["a"].size == len(members)


@pytest.mark.parametrize("kind", ["isolation_forest", "one_class_svm", "lof"])
def test_anomaly_models_keep_their_false_positive_rate_and_catch_outliers(kind):
    from flask_modelguard.detectors.anomaly import DEFAULT_FEATURES, AnomalyModel

    rng = np.random.default_rng(0)

    def benign(n):
        return [dict(zip(DEFAULT_FEATURES, row)) for row in rng.normal([0.95, 0.9, 0.02, 0.04, 0.8, 0.3, 1.0, 0.5],
                                                                        [0.02, 0.03, 0.01, 0.01, 0.05, 0.03, 0.2, 0.1], (n, 8))]

    model = AnomalyModel(kind, fpr=0.02).fit(benign(400))
    fresh = benign(500)
    fpr = np.mean([model.flags(v) for v in fresh])
    assert fpr < 0.06, fpr  # calibrated on held-out folds: near the 2% asked for
    thief = dict(zip(DEFAULT_FEATURES, [1.0, 0.99, 0.3, 0.5, 0.1, 0.8, 0.1, 3.0]))  # synthetic queries: low confidence
    assert model.flags(thief) and model.score(thief) > model.threshold
    with pytest.raises(ValueError):
        AnomalyModel(kind).fit(benign(5))


def test_prada_gives_no_verdict_on_inputs_without_numbers():
    from flask_modelguard.monitor import Monitor
    from flask_modelguard.state import Observation

    monitor = Monitor(8, min_queries=20, every=10)
    for i in range(300):  # e.g. text inputs: their numeric vector is empty, padded to zeros
        monitor.observe(1, Observation(float(i), [f"{i:032x}"], np.zeros((1, 8)), [i % 3], [0.9]))
    evaluation = monitor.evaluate(1, 300.0)
    assert evaluation.scores["prada_w"] is None and not evaluation.reasons


def test_add_handles_label_spellings_and_missing_classes():
    from flask_modelguard.detectors.add import Reference, add_score
    from flask_modelguard.state import AccountState, Observation

    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 1, (100, 4)), rng.normal(5, 1, (100, 4))])
    ref = Reference.fit(X, [3.0] * 100 + [4.0] * 100, calibration=0)
    state = AccountState(4).update(Observation(0.0, [], X[:10], ["3"] * 10, []))
    assert add_score(state, ref) is not None
    other = AccountState(4).update(Observation(0.0, [], X[:10], ["cat"] * 10, []))
    assert add_score(other, ref) is None  # no class in common: no evidence, not zero


def test_ensemble_score_is_half_at_the_threshold_and_bounded():
    from flask_modelguard.monitor import ensemble

    assert ensemble([]) == 0.0
    assert ensemble([0.2, 1.0]) == 0.5  # the most convinced detector sits at its threshold
    assert ensemble([3.0]) == 1.0 and ensemble([-1.0]) == 0.0
    assert ensemble([0.4]) < 0.5 < ensemble([1.2])


def test_sign_steps_are_counted_for_jacobian_steps_and_not_for_natural_digits():
    from example_app.model import split
    from flask_modelguard.detectors.prada import Prada, sign_step
    from flask_modelguard.detectors.registry import hard_flag

    _, X_test, _, y_test = split()
    natural = Prada()
    for x, y in zip(X_test[:300], y_test[:300]):
        natural.update(x, int(y))
    assert natural.steps == 0 and natural.step_evidence() == 0
    rng = np.random.default_rng(0)
    grown = Prada()
    for x, y in zip(X_test[:20], y_test[:20]):
        grown.update(x, int(y))
        grown.update(np.clip(x + 2.0 * rng.choice([-1, 1], size=64), 0, 16), int(y))  # x + λ·sign(g)
    assert grown.steps >= 15 and grown.step_evidence() >= 1.0
    assert sign_step(np.array([2.0] * 20 + [-2.0] * 10 + [0.0] * 34)) and not sign_step(np.arange(64, dtype=float))
    assert not sign_step(np.array([2.0] * 10 + [0.0] * 54))  # too few coordinates changed (16 of 64 needed)
    assert hard_flag({"steps_ratio": 1.0}) and not hard_flag({"steps_ratio": 0.9, "add_ratio": 50.0})
