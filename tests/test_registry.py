"""The one registry of detector kinds and the one reading of their evidence:
each kind over and under its threshold, hard evidence, what is not a
detector, and the monitor, the dashboard, the evaluation and the readiness
report reading the same scores the same way."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from flask_modelguard.admin import charts
from flask_modelguard.detectors import anomaly
from flask_modelguard.detectors.registry import (
    ANOMALY_KINDS,
    DETECTORS,
    ENSEMBLE_SCORE,
    KINDS,
    THRESHOLDS,
    Evidence,
    evidence,
    hard_flag,
    ratios,
)
from flask_modelguard.evaluate import metrics
from flask_modelguard.evaluate.run import _evidence as run_evidence
from flask_modelguard.monitor import Monitor, ensemble
from flask_modelguard.readiness import detection_status
from flask_modelguard.state import Observation

MODELS = ("isolation_forest", "one_class_svm", "lof", "random_forest")


def _found(scores: dict[str, Any], **options: Any) -> dict[str, Evidence]:
    return {e.kind: e for e in evidence(scores, **options)}


def test_the_table_is_complete_and_consistent() -> None:
    assert list(KINDS) == ["prada", "add", "population", "steps", *MODELS, "ensemble"]
    assert [k.name for k in DETECTORS] == list(KINDS)[:-1]  # the ensemble combines evidence, gives none
    assert ANOMALY_KINDS == anomaly.KINDS  # what MODELGUARD_ANOMALY_MODELS accepts
    assert ENSEMBLE_SCORE == metrics.ENSEMBLE == "malicious"
    for kind in KINDS.values():
        assert kind.label and kind.threshold in THRESHOLDS
    assert [k.name for k in KINDS.values() if k.hard] == ["steps"]
    assert [k.name for k in KINDS.values() if k.always] == ["prada", "add"]


@pytest.mark.parametrize(("scores", "kind", "ratio", "over"), [
    ({"prada_w": 0.8}, "prada", 2.0, True),
    ({"prada_w": 0.95}, "prada", 0.5, False),
    ({"prada_w": 0.9}, "prada", 1.0, False),  # W must fall below δ
    ({"add": 20.0, "add_threshold": 10.0, "add_ratio": 2.0}, "add", 2.0, True),
    ({"add": 5.0, "add_threshold": 10.0, "add_ratio": 0.5}, "add", 0.5, False),
    ({"add": 10.0, "add_threshold": 10.0, "add_ratio": 1.0}, "add", 1.0, False),  # strictly over
    ({"population": 30.0, "population_threshold": 10.0, "population_ratio": 3.0}, "population", 3.0, True),
    ({"population": 3.0, "population_threshold": 10.0, "population_ratio": 0.3}, "population", 0.3, False),
    ({"steps": 20, "steps_ratio": 1.0}, "steps", 1.0, True),  # hard: at its threshold already
    ({"steps": 19, "steps_ratio": 0.95}, "steps", 0.95, False),
    *[({kind: 0.9, f"{kind}_ratio": 1.5}, kind, 1.5, True) for kind in MODELS],
    *[({kind: 0.3, f"{kind}_ratio": 0.5}, kind, 0.5, False) for kind in MODELS],
])
def test_each_kind_over_and_under_its_threshold(scores: dict[str, Any], kind: str, ratio: float, over: bool) -> None:
    found = _found(scores, prada_threshold=0.9)
    assert found[kind].ratio == pytest.approx(ratio)
    assert found[kind].over is over
    assert found[kind].hard is (kind == "steps")
    assert hard_flag(scores) is (kind == "steps" and over)


def test_a_models_own_threshold_decides_when_the_monitor_knows_it() -> None:
    scores = {"lof": 0.7, "lof_ratio": 1.4}
    assert _found(scores, thresholds={"lof": 0.5})["lof"].over
    assert not _found(scores, thresholds={"lof": 0.8})["lof"].over  # the threshold, not the stored ratio
    never = _found({"lof": 5.0}, thresholds={"lof": math.inf})["lof"]  # not calibrated: never flags
    assert never.ratio is None and not never.over
    assert "lof" not in _found({"lof": 5.0})  # a raw score without ratio or threshold is no evidence


def test_reasons_read_as_the_verdicts_do() -> None:
    found = _found({"prada_w": 0.8, "add": 20.0, "add_threshold": 10.0, "add_ratio": 2.0, "lof": 1.0},
                   prada_threshold=0.9, thresholds={"lof": 0.5})
    assert found["prada"].reason() == "PRADA W=0.800 < 0.9"
    assert found["add"].reason(30) == "ADD 20.0 > 10.0 at 30 distinct queries"
    assert found["lof"].reason() == "lof 1.000 > 0.500"


def test_hard_evidence_is_sign_steps_only() -> None:
    assert hard_flag({"steps_ratio": 1.0}) and hard_flag({"steps_ratio": 3.0})
    assert not hard_flag({"steps_ratio": 0.99})
    assert not hard_flag({"add": 500.0, "add_threshold": 1.0, "add_ratio": 500.0, "prada_w": 0.1, "lof_ratio": 9.0})
    assert not hard_flag({})


def test_unknown_keys_and_window_statistics_are_ignored() -> None:
    scores = {"hour_unique_ratio": 5.0, "window_unique_ratio": 3.0, "unique_ratio": 0.99, "label_entropy": 2.0,
              "foo_ratio": 9.0, "malicious": 0.9, "ensemble_ratio": 4.0, "feature_entropy": 1.0, "steps": 40}
    found = evidence(scores)
    assert [e.kind for e in found] == ["prada", "add"]  # listed before their verdicts, without one
    assert all(e.ratio is None and not e.over for e in found)
    assert ratios(found) == {"prada": 0.0, "add": 0.0}


def test_a_non_finite_ratio_is_no_verdict() -> None:
    found = _found({"add_ratio": float("nan"), "lof_ratio": float("inf"), "prada_w": float("nan")})
    assert found["add"].ratio is None and found["lof"].ratio is None and found["prada"].ratio is None
    assert not any(e.over for e in found.values())


def _monitor_evaluation(threshold: float = 0.5) -> tuple[Monitor, Any]:
    """A monitor with a stand-in LOF scoring every account 1.0 against ``threshold``."""
    rng = np.random.default_rng(3)
    monitor = Monitor(4, min_queries=6, every=6)
    monitor.anomaly = [SimpleNamespace(kind="lof", threshold=threshold, score=lambda scores: 1.0)]  # type: ignore[list-item]
    evaluation = None
    for i in range(6):
        evaluation = monitor.observe(1, Observation(float(i), [f"{i:032x}"], rng.uniform(0, 1, (1, 4)), [str(i % 2)],
                                                    [0.9]))
    assert evaluation is not None
    return monitor, evaluation


def test_the_monitor_dashboard_and_evaluation_read_the_same_evidence() -> None:
    monitor, evaluation = _monitor_evaluation()
    scores = evaluation.scores
    found = evidence(scores, monitor.prada_threshold)
    assert {e.kind for e in found} >= {"prada", "add", "steps", "lof"}
    # the monitor: one reason per detector over its threshold, the untrained score from the same ratios
    assert "lof 1.000 > 0.500" in evaluation.reasons
    assert scores["lof_ratio"] == 2.0 and scores[ENSEMBLE_SCORE] == 1.0
    assert scores[ENSEMBLE_SCORE] == ensemble([e.ratio for e in found if e.ratio is not None])
    over = {e.kind for e in found if e.over and not e.hard}
    assert len(over) == len([r for r in evaluation.reasons if not r.startswith("sign steps")])
    # the dashboard: the same detectors, labels and ratios
    assert charts.evidence(scores, monitor.prada_threshold) == [(e.label, e.ratio) for e in found]
    assert ("lof", 2.0) in charts.evidence(scores, monitor.prada_threshold)
    # the evaluation: the same ratios of those with a verdict, and the ensemble's score
    assert run_evidence(scores, monitor.prada_threshold) == {
        ENSEMBLE_SCORE: scores[ENSEMBLE_SCORE], **{e.kind: e.ratio for e in found if e.ratio is not None}}
    assert hard_flag(scores) == any(r.startswith("sign steps") for r in evaluation.reasons)


def test_a_model_under_its_threshold_gives_no_reason_anywhere() -> None:
    monitor, evaluation = _monitor_evaluation(threshold=4.0)
    assert not any(r.startswith("lof") for r in evaluation.reasons)
    assert evaluation.scores["lof_ratio"] == 0.25
    assert ("lof", 0.25) in charts.evidence(evaluation.scores, monitor.prada_threshold)
    assert run_evidence(evaluation.scores, monitor.prada_threshold)["lof"] == 0.25
    assert not _found(evaluation.scores)["lof"].over


def test_the_evaluation_scores_every_detector_and_not_behaviour() -> None:
    scores = {"malicious": 0.7, "add_ratio": 2.0, "prada_w": 0.95, "steps_ratio": 0.1, "population_ratio": 0.4,
              "isolation_forest": -0.2, "isolation_forest_ratio": 0.8, "hour_unique_ratio": 3.0, "unique_ratio": 1.0}
    assert run_evidence(scores, 0.9) == pytest.approx({"malicious": 0.7, "prada": 0.5, "add": 2.0, "population": 0.4,
                                                       "steps": 0.1, "isolation_forest": 0.8})


def test_readiness_reports_the_registrys_kinds() -> None:
    monitor = SimpleNamespace(reference=None, ensemble=None, anomaly=[],
                              population_status=lambda: {"live": False, "why": "off"})
    settings = SimpleNamespace(detection=True, anomaly_models=list(ANOMALY_KINDS), verdict="auto", population=True)
    names = list(detection_status(monitor, settings)["detectors"])
    assert names == [k.name for k in KINDS.values() if k.needs]  # every kind but those part of another
