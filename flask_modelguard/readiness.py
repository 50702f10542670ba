"""Which detectors are live in this process, and why the others are not.

One answer for the start-up warning, ``GET <admin>/api/health``, the
dashboard and the ``modelguard_detector_live`` gauge, so a guard that runs
with less than its full detection says so everywhere, in the same words.
Framework-free.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("flask_modelguard")

_NO_REFERENCE = ("no reference of known-good inputs: set MODELGUARD_REFERENCE (a file or a function) "
                 "or run `flask modelguard fit-reference FILE`")
_NO_CALIBRATION = ("not calibrated: run `flask modelguard calibrate` (until then each detector flags "
                   "at its own calibrated threshold)")


def detection_status(monitor: Any, settings: Any, reference_source: str = "") -> dict[str, Any]:
    """``{"enabled", "degraded", "verdict", "detectors": {name: {"live", "why"}}}``
    for a :class:`~flask_modelguard.monitor.Monitor` and its settings.
    ``degraded``: detection is on but runs without a reference-based detector
    (neither ADD nor the population reference) or without calibration."""
    detectors: dict[str, dict[str, Any]] = {"prada": {"live": True, "why": "needs no set-up"}}
    reference = monitor.reference
    detectors["add"] = {"live": reference is not None,
                        "why": f"reference from {_source(reference_source)}" if reference is not None
                        else _NO_REFERENCE}
    mode = getattr(settings, "population", False)
    if mode is True or (mode == "auto" and reference is None):  # "auto" with a reference: not needed
        detectors["population"] = monitor.population_status()
    fitted = {model.kind for model in monitor.anomaly}
    for kind in settings.anomaly_models:
        detectors[kind] = {"live": kind in fitted, "why": "fitted" if kind in fitted else
                           "not fitted yet: refitted in the worker once 10 benign accounts are stored"}
    calibrated = monitor.ensemble is not None
    for name in ("random_forest", "ensemble"):
        live = calibrated and (name == "ensemble" or "random_forest" in fitted)
        detectors[name] = {"live": live, "why": "calibrated" if live else _NO_CALIBRATION}
    verdict = "ensemble score >= 0.5" if calibrated and settings.verdict != "any" else \
        "any detector over its own calibrated threshold"
    referenced = detectors["add"]["live"] or detectors.get("population", {}).get("live", False)
    return {"enabled": bool(settings.detection), "degraded": bool(settings.detection) and not (referenced and calibrated),
            "verdict": verdict, "detectors": detectors}


def _source(source: str) -> str:
    if source.startswith("config:"):
        return "MODELGUARD_REFERENCE"
    return {"cli": "`flask modelguard fit-reference`", "api": "the admin API or guard.fit_reference()"}.get(
        source, "storage")


def warn_if_degraded(status: dict[str, Any]) -> None:
    """One warning per process naming each detector that is not live, and why."""
    if not status["enabled"] or not status["degraded"]:
        return
    missing = "; ".join(f"{name}: {d['why']}" for name, d in status["detectors"].items() if not d["live"])
    log.warning("modelguard: detection is degraded (flags by %s). %s", status["verdict"], missing)
