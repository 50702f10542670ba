"""Which detectors are live in this process, and why the others are not.

One answer for the start-up warning, ``GET <admin>/api/health``, the
dashboard and the ``modelguard_detector_live`` gauge, so a guard that runs
with less than its full detection says so everywhere, in the same words.
Framework-free.
"""

from __future__ import annotations

import logging
from typing import Any

from .detectors.registry import KINDS, Kind

log = logging.getLogger("flask_modelguard")

_NO_REFERENCE = ("no reference of known-good inputs: set MODELGUARD_REFERENCE (a file or a function) "
                 "or run `flask modelguard fit-reference FILE`")
_NO_CALIBRATION = ("not calibrated: run `flask modelguard calibrate` (until then each detector flags "
                   "at its own calibrated threshold)")


def detection_status(monitor: Any, settings: Any, reference_source: str = "") -> dict[str, Any]:
    """``{"enabled", "degraded", "verdict", "detectors": {name: {"live", "why"}}}``
    for a :class:`~flask_modelguard.monitor.Monitor` and its settings, the
    detectors in :data:`~flask_modelguard.detectors.registry.KINDS`' order.
    ``degraded``: detection is on but runs without a reference-based detector
    (neither ADD nor the population reference) or without calibration."""
    detectors: dict[str, dict[str, Any]] = {}
    for kind in KINDS.values():
        status = _status(kind, monitor, settings, reference_source)
        if status is not None:
            detectors[kind.name] = status
    calibrated = monitor.ensemble is not None
    verdict = "ensemble score >= 0.5" if calibrated and settings.verdict != "any" else \
        "any detector over its own calibrated threshold"
    referenced = detectors["add"]["live"] or detectors.get("population", {}).get("live", False)
    return {"enabled": bool(settings.detection), "degraded": bool(settings.detection) and not (referenced and calibrated),
            "verdict": verdict, "detectors": detectors}


def _status(kind: Kind, monitor: Any, settings: Any, reference_source: str) -> dict[str, Any] | None:
    """Whether one kind of detector is live and why (None: not reported, it is
    part of another one or not configured), by what it needs (:attr:`Kind.needs`)."""
    fitted = {model.kind for model in monitor.anomaly}
    if kind.needs == "nothing":
        return {"live": True, "why": "needs no set-up"}
    if kind.needs == "reference":
        reference = monitor.reference
        return {"live": reference is not None,
                "why": f"reference from {_source(reference_source)}" if reference is not None else _NO_REFERENCE}
    if kind.needs == "population":
        mode = getattr(settings, "population", False)
        if mode is True or (mode == "auto" and monitor.reference is None):  # "auto" with a reference: not needed
            return monitor.population_status()
        return None
    if kind.needs == "fit":
        if kind.name not in settings.anomaly_models:
            return None
        return {"live": kind.name in fitted, "why": "fitted" if kind.name in fitted else
                "not fitted yet: refitted in the worker once 10 benign accounts are stored"}
    if kind.needs == "calibration":
        live = monitor.ensemble is not None and (kind.combines or kind.name in fitted)
        return {"live": live, "why": "calibrated" if live else _NO_CALIBRATION}
    return None


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
