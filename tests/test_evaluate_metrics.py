"""Evaluation metrics on constructed runs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from flask_modelguard.evaluate.metrics import (
    auc,
    detection_metrics,
    leaderboard,
    ordered_modes,
    roc,
    roc_auc,
    theft_metrics,
    tpr_at_fpr,
)


def account(name, *, malicious=False, actor=None, kind=None, queries=100, flagged=False,
            first_flag=None, reasons=(), scores=None, timeline=()):
    return {"name": name, "actor": actor or name, "kind": kind or ("thief" if malicious else "benign"),
            "malicious": malicious, "queries": queries, "refused": 0, "flagged": flagged,
            "first_flag_queries": first_flag, "reasons": list(reasons), "scores": scores or {},
            "timeline": [list(p) for p in timeline]}


# -- ROC ---------------------------------------------------------------------------

def test_perfect_reversed_and_tied_scores():
    labels = [False, False, True, True]
    assert roc_auc([0.1, 0.2, 0.8, 0.9], labels) == 1.0
    assert roc_auc([0.9, 0.8, 0.2, 0.1], labels) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], labels) == 0.5


def test_roc_points_group_ties_and_start_at_origin():
    fpr, tpr, thr = roc([0.9, 0.7, 0.7, 0.2], [True, True, False, False])
    assert thr[0] == np.inf and list(thr[1:]) == [0.9, 0.7, 0.2]
    assert list(fpr) == [0.0, 0.0, 0.5, 1.0]
    assert list(tpr) == [0.0, 0.5, 1.0, 1.0]
    # the tie (one positive, one negative at 0.7) counts half
    assert auc(fpr, tpr) == pytest.approx(0.875)


def test_auc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=60), 1)  # rounding makes ties
    labels = rng.random(60) < 0.4
    pos, neg = scores[labels], scores[~labels]
    pairwise = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(list(scores), list(labels)) == pytest.approx(pairwise)


def test_missing_scores_are_dropped_and_one_class_is_undefined():
    assert roc_auc([0.1, None, float("nan"), 0.9], [False, False, True, True]) == 1.0
    fpr, tpr, _ = roc([0.1, 0.2], [False, False])
    assert np.isnan(tpr).all() and math.isnan(auc(fpr, tpr)) and math.isnan(tpr_at_fpr(fpr, tpr, 0.01))
    with pytest.raises(ValueError):
        roc([0.1], [True, False])


def test_tpr_at_fpr_on_a_hand_made_curve():
    fpr = np.array([0.0, 0.0, 0.005, 0.02, 0.5, 1.0])
    tpr = np.array([0.0, 0.4, 0.6, 0.9, 1.0, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01) == 0.6
    assert tpr_at_fpr(fpr, tpr, 0.001) == 0.4
    assert tpr_at_fpr(fpr, tpr, 0.02) == 0.9
    assert tpr_at_fpr(fpr, tpr, 1.0) == 1.0


# -- detection -----------------------------------------------------------------------

def sybil_run():
    benign = [account(f"b{i}", scores={"malicious": 0.1 * i, "prada": 0.01 * i}) for i in range(4)]
    benign[3]["flagged"], benign[3]["first_flag_queries"] = True, 80  # a false positive
    benign[0]["scores"].pop("prada")  # never computed
    sybil = [
        account("s1", malicious=True, actor="swarm", kind="sybil", queries=300,
                scores={"malicious": 0.4, "prada": 0.9}, timeline=[(10, 100, 0.2), (20, 200, 0.3), (30, 300, 0.4)]),
        account("s2", malicious=True, actor="swarm", kind="sybil", queries=250, flagged=True, first_flag=150,
                reasons=["ADD 41.3 > 11.6 at 60 distinct queries"], scores={"malicious": 0.8, "prada": 0.95},
                timeline=[(12, 50, 0.2), (22, 150, 0.7), (32, 250, 0.8)]),
    ]
    lone = account("jbda", malicious=True, kind="jacobian", queries=500, flagged=True, first_flag=240,
                   reasons=["PRADA"], scores={"malicious": 0.9, "add_ratio": float("nan")})
    quiet = account("knock", malicious=True, kind="knockoff", queries=400, scores={"malicious": 0.35})
    return {"mode": "default", "queries": 2000, "alerts": 3, "accounts": benign + sybil + [lone, quiet],
            "clones": [], "benign": {"model_accuracy": 0.97, "served_accuracy": 0.96, "queries": 400}}


def test_flag_decision_and_benign_rates():
    det = detection_metrics(sybil_run())
    assert det["flags"] == {"tp": 2, "fp": 1, "fn": 2, "tn": 3, "precision": pytest.approx(2 / 3),
                            "recall": 0.5, "f1": pytest.approx(4 / 7)}
    assert (det["benign_accounts"], det["benign_flagged"], det["benign_flagged_rate"]) == (4, 1, 0.25)
    assert det["alerts_per_1000_queries"] == 1.5


def test_detectors_exclude_missing_scores():
    dets = detection_metrics(sybil_run())["detectors"]
    assert list(dets) == ["malicious", "add_ratio", "prada"]
    assert (dets["prada"]["n_benign"], dets["prada"]["n_malicious"]) == (3, 2)
    assert dets["prada"]["auc"] == 1.0  # b0 (missing) is not counted as 0
    assert dets["add_ratio"]["n_malicious"] == 0 and math.isnan(dets["add_ratio"]["auc"])
    ens = dets["malicious"]
    assert (ens["n_benign"], ens["n_malicious"]) == (4, 4)
    # benign 0, .1, .2, .3; malicious .35, .4, .8, .9: separated
    assert ens["auc"] == 1.0 and ens["tpr_at_1pct"] == 1.0 and ens["fpr_resolution"] == 0.25


def test_sybil_is_caught_through_one_account_with_actor_queries():
    actors = {r["actor"]: r for r in detection_metrics(sybil_run())["actors"]}
    assert set(actors) == {"swarm", "jbda", "knock"}
    swarm = actors["swarm"]
    assert swarm["caught"] and swarm["accounts"] == 2 and swarm["flagged_accounts"] == ["s2"]
    # s2 flagged at ts 22 with 150 queries; s1 had 200 at its last evaluation before (ts 20)
    assert swarm["queries_to_detection"] == 350 and swarm["detection_basis"] == "actor"
    assert swarm["reasons"] == ["ADD 41.3 > 11.6 at 60 distinct queries"] and swarm["queries"] == 550
    assert actors["jbda"]["queries_to_detection"] == 240 and actors["jbda"]["detection_basis"] == "actor"
    knock = actors["knock"]
    assert not knock["caught"] and knock["queries_to_detection"] is None and knock["reasons"] == []


def test_sybil_without_timelines_falls_back_to_the_account():
    run = sybil_run()
    for a in run["accounts"]:
        a["timeline"] = []
    swarm = next(r for r in detection_metrics(run)["actors"] if r["actor"] == "swarm")
    assert swarm["queries_to_detection"] == 150 and swarm["detection_basis"] == "account"


def test_expired_flag_still_counts():
    run = sybil_run()
    run["accounts"][-1].update(flagged=False, first_flag_queries=300)
    assert next(r for r in detection_metrics(run)["actors"] if r["actor"] == "knock")["caught"]


def test_nothing_flagged_leaves_precision_undefined():
    run = {"mode": "off", "queries": 0, "alerts": 0,
           "accounts": [account("b"), account("t", malicious=True)]}
    det = detection_metrics(run)
    assert math.isnan(det["flags"]["precision"]) and det["flags"]["recall"] == 0 and det["flags"]["f1"] == 0
    assert math.isnan(det["alerts_per_1000_queries"]) and det["detectors"] == {}


# -- theft and leaderboard -------------------------------------------------------------

def test_theft_metrics_final_checkpoint_and_loss():
    run = {"clones": [{"actor": "jbda", "kind": "jacobian", "surrogate": "mlp", "answers": "probabilities",
                       "curve": [{"queries": 5000, "fidelity": 0.9, "accuracy": 0.88},
                                 {"queries": 250, "fidelity": 0.6, "accuracy": 0.58}],
                       "watermark": {"probes": 26, "matched": 25, "log2_p": -74.7}}],
           "benign": {"model_accuracy": 0.97, "served_accuracy": 0.96, "queries": 10},
           "independent": {"watermark": {"probes": 26, "matched": 0, "log2_p": -0.0}}}
    th = theft_metrics(run)
    t = th["thieves"][0]
    assert (t["final_queries"], t["final_fidelity"], t["final_accuracy"]) == (5000, 0.9, 0.88)
    assert [c["queries"] for c in t["checkpoints"]] == [250, 5000] and t["watermark_log2_p"] == -74.7
    assert th["benign"]["accuracy_loss"] == pytest.approx(0.01)
    assert th["independent_watermark"]["matched"] == 0
    empty = theft_metrics({"clones": [], "benign": {}, "independent": None})
    assert empty["thieves"] == [] and math.isnan(empty["benign"]["accuracy_loss"])


def test_leaderboard_rows():
    off = {"mode": "off", "queries": 10, "alerts": 0, "accounts": [account("b"), account("t", malicious=True)]}
    runs = {"default": sybil_run(), "off": off}
    assert ordered_modes(runs) == ["off", "default"]
    rows = leaderboard(runs)
    assert [r["mode"] for r in rows] == ["default"] * 3  # off has no scores and no flags
    assert [r["detector"] for r in rows] == ["malicious", "prada", "add_ratio"]
    assert rows[0]["precision"] == pytest.approx(2 / 3) and rows[0]["recall"] == 0.5
    assert rows[1]["precision"] is None and rows[1]["auc"] == 1.0
    for r in rows:
        assert {"auc", "tpr_at_1pct", "tpr_at_0_1pct", "precision", "recall", "f1"} <= set(r)


# -- leave one family out ------------------------------------------------------------

def _evaluations(rng, families, *, benign=20, steps=6):
    """Labelled evaluations: benign accounts, and per family 5 accounts whose
    signature (``signature(step)`` added to the benign vector) grows with queries."""
    rows, labels, groups, kinds = [], [], [], {}

    def base():
        return {"unique_ratio": rng.uniform(0.8, 1.0), "label_entropy": rng.uniform(1.5, 2.0),
                "low_confidence_share": rng.uniform(0.0, 0.1), "margin_share": rng.uniform(0.0, 0.1),
                "high_confidence_share": rng.uniform(0.7, 0.9), "feature_spread": rng.uniform(4, 5),
                "burstiness": rng.uniform(-0.2, 0.2), "add_ratio": rng.uniform(0.1, 0.5),
                "prada_w": rng.uniform(0.95, 1.0), "classes_seen": 10.0}

    accounts = [(f"benign-{i}", None) for i in range(benign)]
    accounts += [(f"{family}-{i}", family) for family in families for i in range(5)]
    for name, family in accounts:
        if family:
            kinds[name] = family
        for step in range(steps):
            row = base()
            row["log_queries"] = float(np.log1p(50 * (step + 1)))
            row.update(families[family](step) if family else {})
            rows.append(row)
            labels.append(family is not None)
            groups.append(name)
    return {"rows": rows, "labels": labels, "groups": groups}, kinds


FAMILIES = {
    # PRADA's statistic collapses (synthetic queries)
    "prada-like": lambda step: {"prada_w": 0.5 if step >= 1 else 0.97},
    # ADD sees the distribution shift
    "add-like": lambda step: {"add_ratio": 5.0 + step if step >= 1 else 0.4},
    # only a behaviour feature the forest can learn: many low-margin answers, from the third evaluation on
    "margin": lambda step: {"margin_share": 0.9 if step >= 2 else 0.05},
}


def test_lofo_holding_out_a_family_changes_its_outcome():
    from flask_modelguard.evaluate.metrics import leave_one_family_out

    training, kinds = _evaluations(np.random.default_rng(0), FAMILIES)
    test, test_kinds = _evaluations(np.random.default_rng(1), FAMILIES)
    result = leave_one_family_out(training, test, {**kinds, **test_kinds})
    rows = {r["family"]: r for r in result["families"]}
    assert set(rows) == set(FAMILIES) and all(r["accounts"] == 5 for r in rows.values())
    assert all(r["train_accounts_removed"] == 5 for r in rows.values())
    margin = rows["margin"]
    # seen in training: every account caught at its third evaluation (150 queries)
    assert margin["in_family"]["flagged"] == 5 and margin["in_family"]["queries_to_flag"] == 150
    # never seen: nothing else gives these accounts away
    assert margin["held_out"]["flagged"] == 0 and margin["held_out"]["queries_to_flag"] is None
    assert set(margin["held_out"]["per_account"]) == {f"margin-{i}" for i in range(5)}
    for family in ("prada-like", "add-like"):  # seen, caught at the second evaluation
        assert rows[family]["in_family"]["flagged"] == 5 and rows[family]["in_family"]["queries_to_flag"] == 100
    assert result["benign_accounts"] == 20 and result["benign_flag_rate"] == 0.0
    assert all(0.0 <= r["benign_flag_rate"] <= 0.1 for r in rows.values())


def test_lofo_reports_a_family_it_cannot_train_without():
    from flask_modelguard.evaluate.metrics import leave_one_family_out

    families = {"margin": FAMILIES["margin"], "prada-like": FAMILIES["prada-like"]}
    training, kinds = _evaluations(np.random.default_rng(0), families)
    kinds.update({f"margin-{i}": "prada-like" for i in range(2)})  # 7 prada-like accounts, 3 margin
    result = leave_one_family_out(training, training, kinds)
    rows = {r["family"]: r for r in result["families"]}
    assert rows["prada-like"]["held_out"] is None and "malicious accounts" in rows["prada-like"]["error"]
    assert rows["margin"]["held_out"] is not None


def test_rescore_matches_the_monitor_row_by_row():
    from flask_modelguard.detectors.registry import evidence, ratios
    from flask_modelguard.detectors.supervised import rescore, train

    training, _ = _evaluations(np.random.default_rng(0), FAMILIES)
    trained = train(training["rows"], training["labels"], training["groups"], anomaly_kinds=["isolation_forest"])
    rows = training["rows"][::7]
    expected = []
    for row in rows:
        r = dict(row)
        for model in [*trained.anomaly, trained.supervised]:
            r[model.kind] = model.score(r)
            r[f"{model.kind}_ratio"] = r[model.kind] / model.threshold
        expected.append(trained.ensemble.malicious(ratios(evidence(r))))
    assert np.allclose(rescore(trained, rows), expected)
    assert rescore(trained, []).shape == (0,)
