"""Reference sources (MODELGUARD_REFERENCE, fit-reference FILE), the reference
fitted at start-up, and a stored reference reaching another process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import pytest

from flask_modelguard import ModelGuard
from flask_modelguard.exc import InvalidValue
from flask_modelguard.reference_data import digest, read_source

from .conftest import Guarded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n: int = 120, seed: int = 0) -> tuple[list[list[float]], list[int]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    inputs = rng.normal(labels[:, None] * 2.0, 1.0, (n, 3))
    return inputs.tolist(), labels.tolist()


def test_sources_read_alike_from_json_npz_and_a_function(tmp_path: Any) -> None:
    inputs, labels = _data()
    (tmp_path / "ref.json").write_text(json.dumps({"inputs": inputs, "labels": labels}))
    np.savez(tmp_path / "ref.npz", X=np.asarray(inputs), y=np.asarray(labels))
    for source in (str(tmp_path / "ref.json"), tmp_path / "ref.npz", lambda: (np.asarray(inputs), labels)):
        got_inputs, got_labels = read_source(source)
        assert np.allclose(got_inputs, inputs) and list(got_labels) == labels


@pytest.mark.parametrize("content, error", [
    ({"inputs": [[1.0]] * 30}, "must hold"),
    ({"inputs": [[1.0]] * 30, "labels": [0] * 29}, "as many labels"),
    ({"inputs": [[1.0]] * 5, "labels": [0] * 5}, "at least 20"),
])
def test_bad_sources_are_refused_with_a_reason(tmp_path: Any, content: Any, error: str) -> None:
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InvalidValue, match=error):
        read_source(str(path))
    with pytest.raises(InvalidValue, match="not found"):
        read_source(str(tmp_path / "missing.json"))
    with pytest.raises(InvalidValue, match=r"\(inputs, labels\)"):
        read_source(lambda: [1, 2, 3])


def test_the_digest_changes_with_data_labels_and_space() -> None:
    inputs, labels = _data()
    base = digest(inputs, labels, "s")
    assert digest(inputs, labels, "s") == base
    assert digest(inputs, [*labels[:-1], (labels[-1] + 1) % 3], "s") != base
    assert digest([[v + 1e-9 for v in inputs[0]], *inputs[1:]], labels, "s") != base
    assert digest(inputs, labels, "t") != base


def test_a_configured_reference_is_fitted_at_start_up_once(make_guarded: Any, caplog: Any) -> None:
    inputs, labels = _data()
    calls: list[int] = []

    def source() -> tuple[list[list[float]], list[int]]:
        calls.append(1)
        return inputs, labels

    first = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_REFERENCE=source)
    state = ModelGuard.state(first.app)
    assert state.monitor.reference is not None and state.reference_source.startswith("config:")
    status = state.detection_status()
    assert status["detectors"]["add"]["live"] and "MODELGUARD_REFERENCE" in status["detectors"]["add"]["why"]
    stored_at = state.repository.reference_version()
    # A second process (here: a second app on the same database) loads it instead of refitting.
    second = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_REFERENCE=source)
    assert ModelGuard.state(second.app).repository.reference_version() == stored_at
    assert ModelGuard.state(second.app).monitor.reference.to_dict() == state.monitor.reference.to_dict()
    assert len(calls) == 2  # read (to digest) by both, fitted by the first only


def test_an_operators_reference_is_kept_over_the_configured_one(make_guarded: Any) -> None:
    inputs, labels = _data()
    operator = make_guarded(MODELGUARD_DETECTION=True)
    with operator.app.app_context():
        fitted = operator.guard.fit_reference(_data(seed=1)[0], _data(seed=1)[1], source="cli")
    later = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_REFERENCE=lambda: (inputs, labels))
    state = ModelGuard.state(later.app)
    assert state.reference_source == "cli"
    assert state.monitor.reference.to_dict() == {**fitted.to_dict()}


def test_without_a_reference_detection_says_it_is_degraded(make_guarded: Any, caplog: Any) -> None:
    with caplog.at_level("WARNING", logger="flask_modelguard"):
        g: Guarded = make_guarded(MODELGUARD_DETECTION=True)
    status = ModelGuard.state(g.app).detection_status()
    assert status["degraded"] and not status["detectors"]["add"]["live"]
    assert "fit-reference" in status["detectors"]["add"]["why"]
    assert any("detection is degraded" in r.getMessage() and "MODELGUARD_REFERENCE" in r.getMessage()
               for r in caplog.records)


def test_a_reference_stored_by_another_process_is_used_within_a_tick(make_guarded: Any, tmp_path: Any,
                                                                      db_url: str) -> None:
    """Process A serves; process B (the CLI, another Python process) stores a
    reference; A uses it from its worker's next tick, without a restart."""
    g: Guarded = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_KEY_CACHE_TTL=0.5)
    state = ModelGuard.state(g.app)
    _, key = g.account()
    assert g.predict(key).status_code == 200  # starts the worker thread
    assert state.monitor.reference is None
    inputs, labels = _data()
    (tmp_path / "ref.json").write_text(json.dumps({"inputs": inputs, "labels": labels}))
    (tmp_path / "cliapp.py").write_text(
        "from flask import Flask\nfrom flask_modelguard import ModelGuard\n"
        "app = Flask(__name__)\n"
        f"app.config.update(SECRET_KEY='test-secret', MODELGUARD_DATABASE_URL={db_url!r}, "
        "MODELGUARD_METRICS_ENABLED=False)\nModelGuard(app)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "cliapp", "modelguard", "fit-reference",
                           str(tmp_path / "ref.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    stored = time.monotonic()
    while state.monitor.reference is None and time.monotonic() - stored < 5:
        time.sleep(0.05)
    assert state.monitor.reference is not None, "the stored reference did not reach the serving process"
    assert time.monotonic() - stored < 2.0  # within a tick or two of 0.5 s
    assert state.reference_source == "cli" and state.detection_status()["detectors"]["add"]["live"]
