"""training.py: the detectors fitted once, stored signed, and loaded (not refitted)
by every other process of the app; refitted where the stored models cannot be
trusted or used (another secret, other library versions, another training set)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from flask_modelguard import ModelGuard, sealing, training
from flask_modelguard.detectors.registry import evidence, ratios
from tests.conftest import Guarded
from tests.test_supervised import _accounts


def _training_set(seed: int = 0, benign: int = 40, thieves: int = 10) -> dict[str, Any]:
    """test_supervised's labelled accounts, as the stored training set."""
    rows, labels, groups = _accounts(np.random.default_rng(seed), benign, thieves, evaluations=3)
    return {"rows": rows, "labels": labels.tolist(), "groups": groups.tolist()}


def _second(make_guarded: Callable[..., Guarded], first: Guarded, **config: Any) -> Guarded:
    """Another process of the same app: the same database and secret."""
    settings = ModelGuard.state(first.app).settings
    return make_guarded(MODELGUARD_DATABASE_URL=settings.database_url, MODELGUARD_NAMESPACE=settings.namespace,
                        MODELGUARD_DETECTION=True, **config)


def _count_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    fits: list[int] = []
    real = training.train
    monkeypatch.setattr(training, "train", lambda *a, **k: fits.append(1) or real(*a, **k))
    return fits


def _scores(guarded: Guarded, rows: list[dict[str, Any]]) -> np.ndarray:
    """What the process's fitted models make of ``rows``: each model's score, the ensemble's."""
    monitor = ModelGuard.state(guarded.app).monitor
    assert monitor.ensemble is not None
    models = np.array([[model.score(r) for model in monitor.anomaly] for r in rows])
    stacked = monitor.ensemble.malicious_many([ratios(evidence(r)) for r in rows])
    return np.column_stack([models, stacked])


def test_a_second_process_loads_the_fitted_models_instead_of_fitting_them(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_guarded(MODELGUARD_DETECTION=True)
    data = _training_set()
    with first.app.app_context():
        first.guard.fit_detectors(data)
    fits = _count_fits(monkeypatch)
    second = _second(make_guarded, first)
    assert fits == []  # loaded, not refitted
    probe = _training_set(seed=7)["rows"]
    assert np.array_equal(_scores(first, probe), _scores(second, probe))
    assert len(ModelGuard.state(second.app).monitor.anomaly) == len(ModelGuard.state(first.app).monitor.anomaly)


def test_models_signed_with_another_secret_are_refitted_not_unpickled(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    first = make_guarded(MODELGUARD_DETECTION=True)
    with first.app.app_context():
        first.guard.fit_detectors(_training_set())
    repository = ModelGuard.state(first.app).repository
    blob, meta = repository.load_detector_models() or (b"", {})
    repository.save_detector_models(blob + b".", meta)  # bytes someone else wrote
    unpickled: list[int] = []
    monkeypatch.setattr(sealing.pickle, "loads", lambda b: unpickled.append(1))
    fits = _count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="flask_modelguard"):
        second = _second(make_guarded, first)
    assert unpickled == [] and fits == [1]
    assert "not signed with this app's secret" in caplog.text
    assert ModelGuard.state(second.app).monitor.ensemble is not None


def test_models_of_other_library_versions_or_training_sets_are_refitted(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    first = make_guarded(MODELGUARD_DETECTION=True)
    with first.app.app_context():
        first.guard.fit_detectors(_training_set())
    repository = ModelGuard.state(first.app).repository
    blob, meta = repository.load_detector_models() or (b"", {})
    repository.save_detector_models(blob, {**meta, "versions": {**meta["versions"], "scikit-learn": "0.1"}})
    fits = _count_fits(monkeypatch)
    second = _second(make_guarded, first)
    assert fits == [1]
    # ... and the refit is stored for the next process, which loads it.
    _second(make_guarded, first)
    assert fits == [1]
    assert ModelGuard.state(second.app).monitor.ensemble is not None
    repository.save_detector_models(blob, {**meta, "training": "another training set"})
    _second(make_guarded, first)
    assert fits == [1, 1]


def test_signed_models_that_no_longer_load_are_refitted(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    first = make_guarded(MODELGUARD_DETECTION=True)
    with first.app.app_context():
        first.guard.fit_detectors(_training_set())

    def moved(blob: bytes) -> Any:  # as after an upgrade that moved a class
        raise ModuleNotFoundError("No module named 'flask_modelguard.detectors.old'")

    monkeypatch.setattr(sealing.pickle, "loads", moved)
    fits = _count_fits(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="flask_modelguard"):
        second = _second(make_guarded, first)
    assert fits == [1] and "could not be loaded (ModuleNotFoundError)" in caplog.text
    assert ModelGuard.state(second.app).monitor.ensemble is not None


def test_a_database_without_the_models_table_still_gets_its_detectors(
        make_guarded: Callable[..., Guarded], caplog: Any) -> None:
    """An upgrade without `flask modelguard init-db`: the new table is missing."""
    from flask_modelguard import models

    first = make_guarded(MODELGUARD_DETECTION=True)
    state = ModelGuard.state(first.app)
    models.detector_models.drop(state.repository.engine)
    with caplog.at_level(logging.WARNING, logger="flask_modelguard"), first.app.app_context():
        first.guard.fit_detectors(_training_set())  # the operator's command: used, and said not stored
    assert state.monitor.ensemble is not None and "used but not stored" in caplog.text
    second = _second(make_guarded, first, MODELGUARD_CREATE_TABLES=False)
    assert ModelGuard.state(second.app).monitor.ensemble is not None  # fitted from the stored set
