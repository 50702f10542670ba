"""The supervised random forest and the stacked ensemble, on constructed
accounts where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from flask_modelguard.detectors.registry import evidence, ratios
from flask_modelguard.detectors.supervised import (
    StackedEnsemble,
    SupervisedModel,
    _folds,
    per_account_threshold,
    tail_threshold,
    train,
)


def _accounts(rng, n_benign, n_thieves, evaluations=4):
    """Benign accounts: natural behaviour; thieves: high unique ratio, low
    PRADA W, large ADD ratio, each with noise. Rows are evaluations."""
    rows, labels, groups = [], [], []
    for a in range(n_benign + n_thieves):
        thief = a >= n_benign
        for _ in range(evaluations):
            rows.append({
                "unique_ratio": rng.uniform(0.93, 1.0) if thief else rng.uniform(0.5, 0.97),
                "label_entropy": rng.uniform(0.85, 1.0),
                "prada_w": rng.uniform(0.6, 0.92) if thief else rng.uniform(0.88, 0.99),
                "add_ratio": rng.lognormal(0.8, 0.5) if thief else rng.lognormal(-0.8, 0.4),
                "margin_share": rng.uniform(0, 0.3),
                "log_queries": rng.uniform(3, 8),
            })
            labels.append(thief)
            groups.append(f"acct{a}")
    return rows, np.asarray(labels), np.asarray(groups)


def test_per_account_threshold_counts_accounts_not_evaluations():
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.35, 5.0])
    labels = np.array([False, False, False, False, False, True])
    groups = np.array(["a", "a", "b", "b", "c", "t"])
    # benign accounts' largest scores: a 0.9, b 0.3, c 0.35 → the top one flags a third of them
    assert per_account_threshold(scores, labels, groups, 0.34) == pytest.approx(0.9)
    assert per_account_threshold(scores, labels, groups, 0.01) == pytest.approx(0.9)
    with pytest.raises(ValueError):
        per_account_threshold(scores[5:], labels[5:], groups[5:], 0.1)


def test_tail_threshold_extrapolates_what_few_benign_accounts_cannot_resolve():
    """40 benign accounts cannot resolve 0.5 %: the empirical quantile is their
    largest score and flags about 1/41 of new ones; the logit-normal fit of the
    tail flags about the rate asked for."""
    from scipy.special import expit

    rng = np.random.default_rng(3)
    fresh = expit(rng.normal(-2.0, 0.8, 200_000))  # new benign accounts' largest probabilities
    empirical, fitted = [], []
    for _ in range(50):
        scores = expit(rng.normal(-2.0, 0.8, 40))
        labels, groups = np.zeros(40, dtype=bool), np.arange(40)
        t = tail_threshold(scores, labels, groups, 0.005)
        assert t >= per_account_threshold(scores, labels, groups, 0.005)  # never below the empirical one
        empirical.append((fresh >= per_account_threshold(scores, labels, groups, 0.005)).mean())
        fitted.append((fresh >= t).mean())
    assert np.median(empirical) > 0.01  # about 1/41 on average, 0.012 as the median
    assert np.median(fitted) < 0.008
    # a handful of accounts scoring 0 does not widen the fit (it is one-sided)
    scores = np.concatenate([expit(rng.normal(-2.0, 0.8, 40)), np.zeros(5)])
    labels, groups = np.zeros(45, dtype=bool), np.arange(45)
    assert tail_threshold(scores, labels, groups, 0.005) < 0.5


def test_folds_keep_each_account_on_one_side():
    groups = np.repeat(np.arange(40), 3)
    labels = groups >= 30
    folds = _folds(groups, labels, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for fold in folds:
        inside = set(groups[fold])
        outside = set(groups) - inside
        assert not inside & outside
        assert labels[fold].any() and (~labels[fold]).any()  # stratified by account


def test_random_forest_catches_thieves_at_the_calibrated_benign_rate():
    rng = np.random.default_rng(0)
    rows, labels, groups = _accounts(rng, 200, 40)
    model = SupervisedModel(fpr=0.02).fit(rows, labels, groups)
    assert 0.5 <= model.threshold <= 1.0
    fresh, fresh_labels, fresh_groups = _accounts(np.random.default_rng(1), 400, 40)
    scores = model.score_many(fresh)  # (one forest call; row by row took 25 s)
    assert [model.score(r) for r in fresh[:3]] == pytest.approx(scores[:3].tolist())
    flagged = {g for g, s in zip(fresh_groups, scores) if s > model.threshold}
    benign_accounts = set(fresh_groups[~fresh_labels])
    thief_accounts = set(fresh_groups[fresh_labels])
    assert len(flagged & benign_accounts) / len(benign_accounts) <= 0.04  # calibrated for 2%, per account
    assert len(flagged & thief_accounts) / len(thief_accounts) >= 0.9
    importances = model.importances()
    assert max(importances, key=importances.get) in ("add_ratio", "prada_w", "unique_ratio")
    assert importances["label_entropy"] < importances["add_ratio"]  # noise feature ranks low


def test_stacked_ensemble_is_half_at_its_threshold_and_weighs_informative_detectors():
    rng = np.random.default_rng(2)
    rows, labels, groups = _accounts(rng, 150, 30)
    evidences = [{**ratios(evidence(r)), "noise": float(rng.uniform(0, 2))} for r in rows]
    ensemble = StackedEnsemble(fpr=0.02).fit(evidences, labels, groups)
    weights = ensemble.weights()
    assert weights["add"] > 0 and weights["prada"] > 0
    assert abs(weights["noise"]) < weights["add"] / 3
    probs = np.array([ensemble.probability(e) for e in evidences])
    scores = np.array([ensemble.malicious(e) for e in evidences])
    assert ((scores >= 0) & (scores <= 1)).all()
    order = np.argsort(probs)
    assert (np.diff(scores[order]) >= -1e-12).all()  # monotone in the probability
    # 0.5 exactly at the threshold: the score crosses 0.5 where the probability crosses it
    assert ((scores >= 0.5) == (probs >= ensemble.threshold)).all()
    t = ensemble.threshold
    np.testing.assert_allclose(scores, np.where(probs <= t, 0.5 * probs / t, 0.5 + 0.5 * (probs - t) / (1 - t)))
    assert np.mean(scores[labels] >= 0.5) > 0.9
    # Its probabilities are scikit-learn's, bit for bit (computed without its checks).
    matrix = ensemble._matrix(evidences)
    assert np.array_equal(ensemble._probabilities(matrix), ensemble._model.predict_proba(matrix)[:, 1])
    assert probs.tolist() == [ensemble._model.predict_proba(matrix[i : i + 1])[0, 1] for i in range(len(matrix))]


def test_train_fits_every_detector_and_the_stack_uses_out_of_fold_forest_scores():
    rng = np.random.default_rng(3)
    rows, labels, groups = _accounts(rng, 60, 15)
    trained = train(rows, labels.tolist(), groups.tolist(), anomaly_kinds=["isolation_forest"], fpr=0.05)
    assert [m.kind for m in trained.anomaly] == ["isolation_forest"]
    assert trained.supervised is not None and trained.ensemble is not None
    assert "random_forest" in trained.ensemble.detectors and "isolation_forest" in trained.ensemble.detectors
    assert (trained.accounts, trained.malicious_accounts) == (75, 15)
    with pytest.raises(ValueError, match="malicious"):
        train(rows[:40], [False] * 40, groups[:40].tolist())


def test_monitor_uses_the_trained_ensemble_for_score_and_verdict():
    from flask_modelguard.monitor import Monitor
    from flask_modelguard.state import Observation

    rng = np.random.default_rng(4)
    rows, labels, groups = _accounts(rng, 60, 15)
    trained = train(rows, labels, groups, fpr=0.05)
    for verdict in ("any", "auto"):
        monitor = Monitor(4, min_queries=5, every=5)
        monitor.anomaly = [trained.supervised]
        monitor.ensemble = trained.ensemble
        monitor.verdict = verdict
        for i in range(5):
            evaluation = monitor.observe(1, Observation(float(i), [f"{i:032x}"], rng.uniform(0, 1, (1, 4)), ["1"], [0.9]))
        assert evaluation is not None
        e = ratios(evidence(evaluation.scores))
        e["random_forest"] = evaluation.scores["random_forest_ratio"]
        assert evaluation.scores["malicious"] == pytest.approx(trained.ensemble.malicious(e))
        if verdict != "any":
            assert all(r.startswith("ensemble") for r in evaluation.reasons)
            assert bool(evaluation.reasons) == (evaluation.scores["malicious"] >= 0.5)


def test_evidence_counts_detectors_only():
    scores = {"prada_w": 0.8, "add_ratio": 2.0, "unique_ratio": 0.97, "lof_ratio": 1.5, "random_forest_ratio": 0.4,
              "lof": 3.0, "label_entropy": 0.9}
    assert ratios(evidence(scores)) == pytest.approx({"prada": 2.0, "add": 2.0, "lof": 1.5, "random_forest": 0.4})
