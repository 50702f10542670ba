"""``flask modelguard calibrate`` / ``guard.calibrate()``: the detectors trained
on the example's own model from simulated traffic, stored, used everywhere."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from example_app import create_app
from flask_modelguard import ModelGuard
from flask_modelguard.calibration import FAMILIES, calibrate
from flask_modelguard.exc import InvalidValue

#: Fast families (the Jacobian thief retrains its substitute every round: slow).
QUICK = ("random-uniform", "random-gaussian", "knockoff", "natural-patches", "mixed", "adaptive")


def _app(tmp_path: Any, model_cache: str, **config: Any) -> Flask:
    return create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "calibration-test",
                       "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/guard.db", **config})


def test_every_simulated_thief_family_is_calibrated_on() -> None:
    assert {"random-uniform", "jacobian", "knockoff", "active", "sybil", "natural-patches", "mixed",
            "data-free"} <= set(FAMILIES)
    assert "benign" not in FAMILIES and "random" not in FAMILIES


def test_calibration_trains_stores_and_reaches_a_second_process(tmp_path: Any, model_cache: str) -> None:
    app = _app(tmp_path, model_cache)
    state = ModelGuard.state(app)
    assert state.monitor.ensemble is None and state.detection_status()["degraded"]
    stages: set[str] = set()
    with app.app_context():
        result = state.guard.calibrate(app, benign=12, budget=100, families=QUICK,
                                       progress=lambda stage, done, total: stages.add(stage))
    assert stages == {"training", "check"}  # two simulations: trained on one, judged on the other
    assert state.monitor.ensemble is not None
    status = state.detection_status()
    assert not status["degraded"] and status["detectors"]["ensemble"]["live"]
    assert status["verdict"].startswith("ensemble")
    # What to expect, measured on the second simulation: every family judged, benign users counted.
    assert set(result.queries_to_flag) == set(QUICK)
    assert result.benign_accounts == 12 and result.benign_flagged <= 1
    flagged = [q for q in result.queries_to_flag.values() if q is not None]
    assert len(flagged) >= 5 and max(flagged) <= 100
    # Stored: a new process of the app loads the trained detectors at start-up.
    other = _app(tmp_path, model_cache)
    assert ModelGuard.state(other).monitor.ensemble is not None
    for a in (app, other):
        ModelGuard.state(a).close()


def test_calibration_needs_known_good_inputs_and_one_route(tmp_path: Any, model_cache: str) -> None:
    app = _app(tmp_path, model_cache, MODELGUARD_REFERENCE=None)
    try:
        with app.app_context(), pytest.raises(InvalidValue, match="known-good inputs"):
            calibrate(app, benign=5, budget=10, families=QUICK[:1])
        with app.app_context(), pytest.raises(InvalidValue, match="one protected route"):
            calibrate(app, inputs=[[0] * 64] * 30, labels=[0] * 30, route="/nowhere")
    finally:
        ModelGuard.state(app).close()


def test_the_cli_prints_what_to_expect(tmp_path: Any, model_cache: str) -> None:
    app = _app(tmp_path, model_cache)
    try:
        result = app.test_cli_runner().invoke(args=[
            "modelguard", "calibrate", "--benign", "10", "--budget", "60", "--families", ",".join(QUICK[:5])])
        assert result.exit_code == 0, result.output
        assert "benign accounts flagged:" in result.output
        assert all(family in result.output for family in QUICK[:5])
        assert ModelGuard.state(app).monitor.ensemble is not None
        bad = app.test_cli_runner().invoke(args=["modelguard", "calibrate", "--families", "no-such-thief"])
        assert bad.exit_code != 0 and "no-such-thief" in bad.output
    finally:
        ModelGuard.state(app).close()
