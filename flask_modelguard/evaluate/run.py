"""Run a scenario: the same simulated traffic against fresh copies of the
served app with the guard off, in shadow mode and with its default policy;
then train each thief's clone and measure it. Talks to the app through WSGI
(its test client); the app is built by the scenario's factory."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..detectors.registry import ENSEMBLE_SCORE, evidence
from ..exc import InvalidValue
from ..runtime import state_of
from ..simulate.actor import Actor, World
from ..simulate.clock import SimulatedClock
from ..simulate.runner import Simulation, WSGITransport
from .controls import independent
from .latency import latency as measure_latency
from .scenario import ACCOUNT_KEYS, MODES, Scenario, import_string, load_scenario
from .theft import account_names, clones

Progress = Callable[[str, int, int], None]


def _evidence(scores: dict[str, Any], prada_threshold: float) -> dict[str, float]:
    """Each detector's evidence in one evaluation (:func:`~..detectors.registry.evidence`:
    its score over its threshold), and the ensemble's score; those with a verdict."""
    out = {e.kind: e.ratio for e in evidence(scores, prada_threshold) if e.ratio is not None}
    malicious = scores.get(ENSEMBLE_SCORE)
    if isinstance(malicious, (int, float)) and math.isfinite(malicious):
        out = {ENSEMBLE_SCORE: float(malicious), **out}
    return out


def _build(scenario: Scenario, actors_spec: list[dict[str, Any]]) -> list[Actor]:
    from ..simulate.attackers import make_actor

    # "limits" and "tier" are the account's, not the actor's
    return [make_actor({k: v for k, v in spec.items() if k not in ACCOUNT_KEYS}) for spec in actors_spec]


def run_mode(
    scenario: Scenario, mode: str, workdir: str, *, progress: Progress | None = None,
    training: dict[str, Any] | None = None, name: str | None = None,
) -> tuple[dict[str, Any], list[Actor], World, Any]:
    """Simulate the scenario's traffic against a fresh app in ``mode`` (with
    the supervised detectors trained on ``training`` first, when given);
    returns the run result (accounts, detections; ``result["training"]`` the
    labelled evaluations), the actors (with what they were served), the world
    and the app."""
    clock = SimulatedClock()
    app = import_string(scenario.app)(_config(scenario, mode, workdir, name or mode, clock))
    state = state_of(app)
    world: World = import_string(scenario.world)(app)
    if training is not None and state.settings.enabled:
        state.fit_detectors(training)
    specs = scenario.expand()
    actors = _build(scenario, specs)
    keys = _open_accounts(app, scenario, actors, specs)
    simulation, elapsed = _simulate(app, scenario, mode, world, actors, keys, clock, progress)
    accounts, rows = _collect(app, actors, clock, simulation)
    result = {
        "mode": mode,
        "queries": int(sum(s.n for s in simulation.log if s.status != 429)),
        "requests": len(simulation.log),
        "refused": int(sum(1 for s in simulation.log if s.status >= 400)),
        "alerts": int(sum(a["flagged"] for a in accounts)),  # one alert per flag (no unflagging here)
        "simulated_seconds": clock.elapsed,
        "wall_seconds": round(elapsed, 2),
        "accounts": accounts,
        "benign": _benign([a for a in actors if not a.malicious], world),
        "benign_unflagged": _benign([a for a in actors if not a.malicious
                                     and not any(r["flagged"] for r in accounts if r["actor"] == a.name)], world),
        "training": rows,
    }
    return result, actors, world, app


def _config(scenario: Scenario, mode: str, workdir: str, name: str, clock: SimulatedClock) -> dict[str, Any]:
    """The app's configuration for one run: the scenario's, the mode's, a fresh
    database in ``workdir`` and the simulated clock."""
    return {
        # The keys of watermarks and misinformation come from the app's secret:
        # fixed by the seed, so that a seed reproduces a run on any machine.
        "SECRET_KEY": f"modelguard-evaluation-{scenario.seed}",
        **scenario.config,
        **MODES[mode],
        "MODELGUARD_DATABASE_URL": f"sqlite:///{os.path.join(workdir, name)}.db",
        "MODELGUARD_CREATE_TABLES": True,
        "MODELGUARD_CLOCK": clock,
        "MODELGUARD_STORAGE_URI": "simulated://",
        "MODELGUARD_STORAGE_OPTIONS": {"clock": clock},
        "MODELGUARD_FLUSH_INTERVAL": 3600.0,  # the simulation drains the worker itself
    }


def _open_accounts(app: Any, scenario: Scenario, actors: list[Actor],
                   specs: list[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """Each actor's accounts created and their keys issued ("none" with the guard off)."""
    state = state_of(app)
    guard = state.guard
    keys: dict[tuple[str, int], str] = {}
    with app.app_context():
        for actor, spec in zip(actors, specs):
            for k, name in enumerate(account_names(actor)):
                if state.settings.enabled:
                    guard.create_account(name, tier=spec.get("tier"), limits=spec.get("limits", scenario.limits))
                    keys[(actor.name, k)] = guard.issue_key(name)
                else:
                    keys[(actor.name, k)] = "none"
    return keys


def _simulate(app: Any, scenario: Scenario, mode: str, world: World, actors: list[Actor],
              keys: dict[tuple[str, int], str], clock: SimulatedClock,
              progress: Progress | None) -> tuple[Simulation, float]:
    """Send the actors' traffic (draining the worker and persisting states on
    the scenario's schedule); the simulation and its wall time."""
    state = state_of(app)
    enabled = state.settings.enabled
    persisted = [clock()]

    def every(n: int) -> None:
        if not enabled:
            return
        if n % scenario.flush_every == 0:
            state.worker.flush()
        if clock() - persisted[0] >= scenario.persist_every:
            persisted[0] = clock()
            state.persist_states()

    simulation = Simulation(WSGITransport(app.test_client()), world, actors, keys, path=scenario.path,
                            clock=clock, seed=scenario.seed, every=every)
    started = time.perf_counter()
    simulation.run(None if progress is None else (lambda done, total: progress(mode, done, total)))
    return simulation, time.perf_counter() - started


def _collect(app: Any, actors: list[Actor], clock: SimulatedClock,
             simulation: Simulation) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Each account's result, and the labelled evaluations of the guard's score
    history (``{"rows", "labels", "groups"}``: the supervised detectors' training set)."""
    state = state_of(app)
    accounts: list[dict[str, Any]] = []
    rows: dict[str, list[Any]] = {"rows": [], "labels": [], "groups": []}
    if not state.settings.enabled:
        for actor in actors:
            accounts += [_account(actor, name, None, [], 0.9, clock.start, simulation) for name in account_names(actor)]
        return accounts, rows
    guard = state.guard
    guard.flush(app)
    with app.app_context():
        stored = {a["name"]: a for a in guard.list_accounts()}
        for actor in actors:
            for name in account_names(actor):
                history = guard.score_history(name)
                accounts.append(_account(actor, name, stored[name], history, state.settings.prada_threshold,
                                         clock.start, simulation))
                for h in history:
                    rows["rows"].append({k: v for k, v in (h["scores"] or {}).items() if v is not None})
                    rows["labels"].append(actor.malicious)
                    rows["groups"].append(name)
    return accounts, rows


def _account(actor: Actor, name: str, stored: dict[str, Any] | None, history: list[dict[str, Any]],
             prada_threshold: float, start: float, simulation: Simulation) -> dict[str, Any]:
    k = 0 if "#" not in name else int(name.rsplit("#", 1)[1])
    sent = [s for s in simulation.log if s.actor == actor.name and s.account == k]
    flags = [h for h in history if h["reasons"]]
    scores: dict[str, float] = {}
    for h in history:
        for detector, value in _evidence(h["scores"] or {}, prada_threshold).items():
            scores[detector] = max(scores.get(detector, -math.inf), value)
    return {
        "name": name, "actor": actor.name, "kind": actor.kind, "malicious": actor.malicious,
        "queries": int(sum(s.n for s in sent if s.status != 429)),
        "refused": int(sum(1 for s in sent if s.status >= 400)),
        "flagged": bool(flags) or bool(stored and stored["flagged"]),
        "first_flag_queries": int(flags[0]["queries"]) if flags else None,
        "reasons": list(flags[0]["reasons"]) if flags else [],
        "score": None if stored is None else stored["score"],
        "scores": scores,
        "timeline": [[round(h["ts"] - start, 3), int(h["queries"]), (h["scores"] or {}).get("malicious")]
                     for h in history],
    }


def _benign(actors: list[Actor], world: World) -> dict[str, Any]:
    """What ``actors`` (benign users) were served, against what the model answers: top-1
    accuracy of both (when the pool's labels are known) and their agreement."""
    served_to = [a for a in actors if len(a.y)]
    if not served_to:
        return {"queries": 0}
    inputs = np.concatenate([a.X for a in served_to])
    served = np.concatenate([a.y for a in served_to]).astype(int)
    model = world.victim(inputs).argmax(axis=1)
    out: dict[str, Any] = {"queries": int(len(served)), "agreement": float((served == model).mean())}
    if world.pool_labels is not None:
        truth = _labels_of(inputs, world)
        if truth is not None:
            out["model_accuracy"] = float((model == truth).mean())
            out["served_accuracy"] = float((served == truth).mean())
            out["accuracy_loss"] = out["model_accuracy"] - out["served_accuracy"]
    return out


def _labels_of(inputs: np.ndarray, world: World) -> np.ndarray | None:
    assert world.pool_labels is not None
    lookup = {row.tobytes(): label for row, label in zip(np.asarray(world.pool, dtype=np.float64), world.pool_labels)}
    labels = [lookup.get(row.tobytes()) for row in inputs]
    if any(label is None for label in labels):
        return None
    return np.asarray(labels)


def run(
    scenario: str | dict[str, Any] | Scenario,
    *,
    out: str | None = None,
    seed: int | None = None,
    modes: list[str] | None = None,
    plots: bool = True,
    progress: Progress | None = None,
    workdir: str | None = None,
    lofo: bool | None = None,
) -> dict[str, Any]:
    """Evaluate a scenario (a bundled name, a file, a dict): one run per guard
    mode; writes ``report.json``, ``report.md`` and plots to ``out`` when
    given; returns the report. ``lofo`` (default: the scenario's) adds the
    leave-one-family-out measurement of the supervised detectors
    (:func:`~.metrics.leave_one_family_out`; it needs a practice run, so a
    scenario without ``train_seed`` gets ``seed + 1000``)."""
    scenario = _prepared(scenario if isinstance(scenario, Scenario) else load_scenario(scenario), seed, modes, lofo)
    lofo_mode = _lofo_mode(scenario) if scenario.lofo else None
    runs: dict[str, dict[str, Any]] = {}
    training: dict[str, Any] | None = None
    practice: list[dict[str, Any]] | None = None
    lofo_result: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="modelguard-eval-") as tmp:
        where = workdir or tmp
        if scenario.train_seed is not None:
            training, practice = _practice(scenario, where, progress)
        for mode in scenario.modes:
            runs[mode], measured = _measure(scenario, mode, where, progress, training, practice,
                                            lofo=mode == lofo_mode)
            lofo_result = measured or lofo_result
        latency = measure_latency(scenario, where) if scenario.latency_requests else None
    return _finish(scenario, runs, latency, training, lofo_result, out=out, plots=plots)


def _prepared(scenario: Scenario, seed: int | None, modes: list[str] | None, lofo: bool | None) -> Scenario:
    """``scenario`` with :func:`run`'s overrides (a LOFO run gets a practice run's seed)."""
    if seed is not None:
        scenario.seed = seed
    if modes is not None:
        scenario.modes = list(modes)
    if lofo is not None:
        scenario.lofo = bool(lofo)
    if scenario.lofo and scenario.train_seed is None:
        scenario.train_seed = scenario.seed + 1000
    return scenario


def _practice(scenario: Scenario, workdir: str,
              progress: Progress | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The practice run the supervised detectors learn from: another simulation
    (other users, other seeds) of the same scenario, in shadow mode; its
    labelled evaluations and its accounts."""
    # The copycat is not a lesson: it is a heavy benign user by construction, no detector's to learn.
    actors = [a for a in scenario.actors if a.get("kind") != "copycat"]
    practice = Scenario.from_dict({**scenario.to_dict(), "seed": scenario.train_seed, "actors": actors})
    result, _, _, app = run_mode(practice, "shadow", workdir, progress=_named(progress, "training"), name="training")
    state_of(app).close()
    return result["training"], result["accounts"]


def _measure(scenario: Scenario, mode: str, workdir: str, progress: Progress | None,
             training: dict[str, Any] | None, practice: list[dict[str, Any]] | None,
             *, lofo: bool) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One mode's run, its thieves' clones and the independent control; and,
    when ``lofo``, the leave-one-family-out measurement on its evaluations."""
    result, actors, world, app = run_mode(scenario, mode, workdir, progress=progress, training=training)
    evaluations = result.pop("training")
    lofo_result = None
    if lofo:
        settings = state_of(app).settings
        lofo_result = {**_lofo(training, practice, evaluations, result["accounts"], settings), "mode": mode}
    try:
        result["clones"] = clones(scenario, actors, world, app)
        result["independent"] = independent(scenario, actors, world, app)
    finally:
        state_of(app).close()
    return result, lofo_result


def _finish(scenario: Scenario, runs: dict[str, dict[str, Any]], latency: dict[str, Any] | None,
            training: dict[str, Any] | None, lofo_result: dict[str, Any] | None, *, out: str | None,
            plots: bool) -> dict[str, Any]:
    """The report of the runs: returned, or written to ``out`` (with the training set, when there is one)."""
    summary = scenario.to_dict()
    summary["config"] = {k: v for k, v in summary["config"].items() if _jsonable(v)}
    if latency is not None:
        summary["latency"] = latency
    if out is None:
        from .metrics import detection_metrics, theft_metrics

        report = {"scenario": summary, "runs": runs,
                  "metrics": {m: {"detection": detection_metrics(r), "theft": theft_metrics(r)}
                              for m, r in runs.items()}}
        return report if lofo_result is None else {**report, "lofo": lofo_result}
    if training is not None:
        import json

        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "training.json"), "w") as fh:
            json.dump(training, fh)
    from .report import write_report

    return write_report(out, summary, runs, plots=plots, lofo=lofo_result)


def _lofo_mode(scenario: Scenario) -> str:
    """The run whose evaluations LOFO re-scores: shadow (answers untouched, so the
    traffic does not depend on the detectors' flags), else the first guarded mode."""
    guarded = [m for m in scenario.modes if MODES[m].get("MODELGUARD_ENABLED", True)]
    if not guarded:
        raise InvalidValue("lofo needs a guarded mode (shadow or default)")
    return "shadow" if "shadow" in guarded else guarded[0]


def _lofo(training: dict[str, Any] | None, practice: list[dict[str, Any]] | None, evaluations: dict[str, Any],
          accounts: list[dict[str, Any]], settings: Any) -> dict[str, Any]:
    """Leave-one-family-out over the practice run's and this run's evaluations,
    with the guard's own training options."""
    from .metrics import leave_one_family_out

    assert training is not None and practice is not None
    families = {a["name"]: a["kind"] for a in [*practice, *accounts] if a["malicious"]}
    timelines = {a["name"]: iter(a["timeline"]) for a in accounts}
    test = {**evaluations, "queries": [next(timelines[g])[1] for g in evaluations["groups"]]}
    return leave_one_family_out(training, test, families, anomaly_kinds=list(settings.anomaly_models),
                                fpr=settings.ensemble_fpr, prada_threshold=settings.prada_threshold)


def _named(progress: Progress | None, name: str) -> Progress | None:
    if progress is None:
        return None
    return lambda _mode, done, total: progress(name, done, total)


def _jsonable(value: Any) -> bool:
    import json

    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True
