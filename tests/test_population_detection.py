"""The reference-free detector in the worker: the example app with no
reference at all, its worker refitting the population reference on its own
schedule, flags uniform noise and photographs of another domain, and no
benign account (measured alone: no ADD, no calibration)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from example_app import create_app, guard
from example_app.model import split
from flask_modelguard import ModelGuard
from flask_modelguard.simulate.actor import World
from flask_modelguard.simulate.natural import natural_patches


def _send(client: Any, key: str, X: np.ndarray, batch: int = 10) -> None:
    for start in range(0, len(X), batch):
        r = client.post("/predict", json={"instances": X[start:start + batch].tolist()}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.get_json()


@pytest.fixture(scope="module")
def judged(tmp_path_factory: Any, model_cache: str) -> Any:
    tmp = tmp_path_factory.mktemp("population")
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "population-test", "MODELGUARD_REFERENCE": None,
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/p.db", "MODELGUARD_WATERMARK": 0.0,
                      "MODELGUARD_KEY_CACHE_TTL": 0.2, "MODELGUARD_POPULATION_REFIT": 0.2})
    state = ModelGuard.state(app)
    assert state.monitor.reference is None
    before = state.detection_status()["detectors"]["population"]
    _, X_test, _, _ = split()
    rng = np.random.default_rng(5)
    world = World(pool=X_test, test=X_test[:1], test_labels=np.zeros(1), victim=lambda X: X, n_classes=10,
                  low=0.0, high=16.0, integer=True)
    benign = [f"benign{i}" for i in range(12)]
    thieves = {"uniform": rng.integers(0, 17, (100, 64)).astype(float),
               "photographs": natural_patches(100, world, rng)}
    with app.app_context():
        for name in [*benign, "late-benign", *thieves]:
            guard.create_account(name, limits="100000/minute")
        keys = {name: guard.issue_key(name) for name in [*benign, "late-benign", *thieves]}
    client = app.test_client()
    for name in benign:
        _send(client, keys[name], X_test[rng.permutation(len(X_test))[:100]])
    guard.flush(app)
    waited = time.monotonic()
    while state.monitor.population_reference is None and time.monotonic() - waited < 30:
        time.sleep(0.1)  # the worker's own schedule fits it
    for name, X in thieves.items():
        _send(client, keys[name], X)
        guard.flush(app)
    _send(client, keys["late-benign"], X_test[rng.permutation(len(X_test))[:100]])
    with app.app_context():
        guard.flush()
        accounts = {a["name"]: a for a in guard.list_accounts()}
        history = {name: guard.score_history(name) for name in accounts}
    yield state, before, accounts, history, [*benign, "late-benign"], list(thieves)
    guard.close(app)


def test_the_population_reference_is_fitted_by_the_worker_and_reported(judged: Any) -> None:
    state, before, *_ = judged
    assert not before["live"] and "warming up" in before["why"]
    after = state.detection_status()["detectors"]["population"]
    assert after["live"], after
    assert "add" in state.detection_status()["detectors"] and not state.detection_status()["detectors"]["add"]["live"]


@pytest.mark.parametrize("thief", ["uniform", "photographs"])
def test_out_of_distribution_thieves_are_flagged_without_a_reference(judged: Any, thief: str) -> None:
    _, _, accounts, history, _, _ = judged
    assert accounts[thief]["flagged"], history[thief][-1]
    first = next(h for h in history[thief] if h["reasons"])
    assert first["queries"] <= 100 and any(r.startswith("population") for r in first["reasons"])


def test_no_benign_account_is_flagged_by_the_population(judged: Any) -> None:
    _, _, accounts, history, benign, _ = judged
    for name in benign:
        assert not accounts[name]["flagged"], history[name][-1]["reasons"]
    late = history["late-benign"][-1]["scores"]
    assert late.get("population_ratio") is not None and late["population_ratio"] < 1.0
