"""``flask modelguard calibrate`` / ``guard.calibrate()``: the detectors trained
on the example's own model from simulated traffic, stored, used everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np
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
    # 12 users of the reference and 24 short-lived "unseen" ones (noised inputs); at most 1 in 12 flagged
    assert result.benign_accounts == 12 * 3 and result.benign_flagged <= 3
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


def test_unseen_users_send_noised_inputs_within_the_data_bounds(model_cache: str) -> None:
    """The "unseen" benign users' pool: every input moved a little, none out of
    the reference's bounds, integers kept integers; the model is less sure of
    them than of its training data (what real users' inputs look like to it)."""
    from example_app.model import load_model, split
    from flask_modelguard.calibration import _unseen, _world

    X = split()[0]
    world = _world(X[:300], X)
    unseen = _unseen(world, X, seed=0)
    assert unseen.pool.shape == world.pool.shape and not np.array_equal(unseen.pool, world.pool)
    assert (unseen.pool >= X.min(axis=0)).all() and (unseen.pool <= X.max(axis=0)).all()
    assert np.array_equal(unseen.pool, np.rint(unseen.pool))
    model = load_model(model_cache)
    sure = [(model.predict_proba(pool).max(axis=1) > 0.9).mean() for pool in (world.pool, unseen.pool)]
    assert sure[1] < sure[0] - 0.02, sure
