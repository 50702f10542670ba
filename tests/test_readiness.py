"""Degraded detection is visible: the status, the admin API's health, the
dashboard and the ``modelguard_detector_live`` gauge say the same thing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from flask_modelguard import ModelGuard
from flask_modelguard.detectors.add import Reference
from flask_modelguard.readiness import detection_status

from .test_dashboard import UI, sign_in


def _monitor(reference: Any = None, ensemble: Any = None, anomaly: Any = ()) -> Any:
    return SimpleNamespace(reference=reference, ensemble=ensemble, anomaly=list(anomaly))


def _settings(**values: Any) -> Any:
    return SimpleNamespace(**{"detection": True, "anomaly_models": [], "verdict": "auto", **values})


def _reference() -> Reference:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    return Reference.fit(rng.normal(labels[:, None], 1.0, (60, 3)), labels.tolist(), calibration=0.0)


def test_status_names_each_missing_piece_and_the_verdict_in_force() -> None:
    bare = detection_status(_monitor(), _settings(anomaly_models=["lof"]))
    assert bare["degraded"] and bare["verdict"] == "any detector over its own calibrated threshold"
    live = {name: d["live"] for name, d in bare["detectors"].items()}
    assert live == {"prada": True, "add": False, "lof": False, "random_forest": False, "ensemble": False}
    assert "MODELGUARD_REFERENCE" in bare["detectors"]["add"]["why"]
    assert "flask modelguard calibrate" in bare["detectors"]["ensemble"]["why"]
    forest = SimpleNamespace(kind="random_forest")
    full = detection_status(_monitor(_reference(), object(), [forest]), _settings(), "config:abc")
    assert not full["degraded"] and full["verdict"] == "ensemble score >= 0.5"
    assert all(d["live"] for d in full["detectors"].values())
    assert full["detectors"]["add"]["why"] == "reference from MODELGUARD_REFERENCE"
    off = detection_status(_monitor(), _settings(detection=False))
    assert not off["enabled"] and not off["degraded"]


def test_health_and_the_dashboard_show_degraded_detection(make_guarded: Any) -> None:
    g = make_guarded(MODELGUARD_DETECTION=True)
    with g.app.app_context():
        token = ModelGuard.state(g.app).admin.create_token("ops")
    client = g.app.test_client()
    health = client.get(f"{UI}/api/health", headers={"Authorization": f"Bearer {token}"})
    assert health.status_code == 200  # a missing reference degrades detection, not serving
    detection = health.get_json()["detection"]
    assert detection["degraded"] and detection["detectors"]["add"] == {
        "live": False, "why": ModelGuard.state(g.app).detection_status()["detectors"]["add"]["why"]}
    assert sign_in(client, token).status_code == 302
    page = client.get(f"{UI}/").get_data(as_text=True)
    section = page.split('id="detection"', 1)[1].split("</section>", 1)[0]
    assert "degraded" in section and "<strong>add</strong>" in section and "fit-reference" in section
    # With a reference fitted (and no calibration), ADD turns live everywhere.
    with g.app.app_context():
        g.guard.fit_reference(*_inputs())
    detection = client.get(f"{UI}/api/health", headers={"Authorization": f"Bearer {token}"}).get_json()["detection"]
    assert detection["detectors"]["add"]["live"] and detection["degraded"]  # still not calibrated
    section = client.get(f"{UI}/").get_data(as_text=True).split('id="detection"', 1)[1].split("</section>", 1)[0]
    assert "<strong>add</strong> <span class=\"badge status-active\">live</span>" in section


def _inputs() -> tuple[list[list[float]], list[int]]:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 80)
    return rng.normal(labels[:, None], 1.0, (80, 3)).tolist(), labels.tolist()


def test_the_gauge_says_which_detectors_are_live(make_guarded: Any) -> None:
    pytest.importorskip("prometheus_client")
    g = make_guarded(MODELGUARD_DETECTION=True)
    text = g.app.test_client().get("/modelguard/metrics").get_data(as_text=True)
    assert 'modelguard_detector_live{detector="prada"} 1.0' in text
    assert 'modelguard_detector_live{detector="add"} 0.0' in text
    with g.app.app_context():
        g.guard.fit_reference(*_inputs())
    text = g.app.test_client().get("/modelguard/metrics").get_data(as_text=True)
    assert 'modelguard_detector_live{detector="add"} 1.0' in text
