"""``flask modelguard calibrate``: train the random forest and the stacked
ensemble on the app's own model, with no lab set-up.

The app's protected route is served by a sandbox (a copy of the app's
protected views with its own guard: a temporary SQLite file, a simulated
clock, simulated rate-limit storage, shadow mode), and the simulator sends
it benign users drawn from the owner's reference data and one thief of every
family. Two such simulations with different seeds: the detectors are trained
on the first, and the second (other users, other thieves' draws) says what
to expect: queries until each family is flagged, and the benign flag rate.
The trained set is stored with the guard's tables, so every process of the
app loads it (at start-up, or at its worker's next tick).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flask import Flask

from .detectors.registry import KINDS
from .detectors.supervised import Trained, rescore
from .exc import InvalidValue
from .reference_data import read_source
from .runtime import state_of
from .simulate.actor import World
from .simulate.attackers import ACTORS, make_actor
from .simulate.clock import SimulatedClock
from .simulate.runner import Simulation, WSGITransport

#: The ratios of the detectors that measure distance to a reference (what a shifted copy of a benign user moves).
_REFERENCE_RATIOS = tuple(k.ratio for k in KINDS.values() if k.threshold == "reference" and k.ratio)

log = logging.getLogger("flask_modelguard")

Progress = Callable[[str, int, int], None]

#: Thief families a calibration simulates (every malicious kind of the simulator but
#: the generic "random", whose strategies have kinds of their own).
FAMILIES = tuple(kind for kind, cls in ACTORS.items() if cls.malicious and kind != "random")


@dataclass
class Calibration:
    """What a calibration trained and what it expects of the trained detectors."""

    trained: Trained
    #: family → queries at its first flag in the held-out simulation (None: not flagged).
    queries_to_flag: dict[str, int | None] = field(default_factory=dict)
    #: Benign accounts of the held-out simulation flagged, and how many there were.
    benign_flagged: int = 0
    benign_accounts: int = 0
    seconds: float = 0.0

    @property
    def benign_flag_rate(self) -> float:
        return self.benign_flagged / self.benign_accounts if self.benign_accounts else 0.0

    def summary(self) -> dict[str, Any]:
        return {"queries_to_flag": dict(self.queries_to_flag), "benign_flagged": self.benign_flagged,
                "benign_accounts": self.benign_accounts, "benign_flag_rate": self.benign_flag_rate,
                "seconds": round(self.seconds, 1)}


def calibrate(
    app: Flask,
    *,
    inputs: Any = None,
    labels: Any = None,
    route: str | None = None,
    benign: int = 40,
    budget: int = 300,
    families: tuple[str, ...] = FAMILIES,
    seed: int = 0,
    progress: Progress | None = None,
    store: bool = True,
) -> Calibration:
    """Calibrate ``app``'s guard (see the module's docstring). Benign users draw
    from ``inputs``/``labels`` (default: ``MODELGUARD_REFERENCE``); ``route``
    is the protected endpoint attacked (default: the only one); ``benign``
    users of the reference per simulation, plus ``2 * benign`` short-lived
    users of noised inputs (:func:`_unseen`); ``budget`` queries per thief."""
    began = time.perf_counter()
    state = state_of(app)
    if inputs is None:
        if state.settings.reference is None:
            raise InvalidValue("Calibration needs known-good inputs: set MODELGUARD_REFERENCE, or pass a file "
                               "(flask modelguard calibrate --reference FILE)")
        inputs, labels = read_source(state.settings.reference)
    X = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    path = _route(app, route)
    with tempfile.TemporaryDirectory(prefix="modelguard-calibrate-") as tmp:
        sandbox = _sandbox(app, os.path.join(tmp, "sandbox.db"), X, list(labels), seed)
        try:  # two simulations in one sandbox: other accounts, other seeds
            runs = [_simulate(sandbox, X, path, benign, budget, families, seed + k, f"{name}-", _stage(progress, name))
                    for k, name in enumerate(("training", "check"))]
        finally:
            state_of(sandbox["app"]).close()
    training, check = runs
    trained = state.fit_detectors(_with_shifted_benign(training), store=store)
    result = _expectations(trained, check, state.settings.prada_threshold)
    result.seconds = time.perf_counter() - began
    return result


def _stage(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """``progress`` for one named stage."""
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def _route(app: Flask, route: str | None) -> str:
    """The path of the protected route to attack."""
    protected = [rule for rule in app.url_map.iter_rules()
                 if hasattr(app.view_functions.get(rule.endpoint), "__modelguard__") and not rule.arguments]
    if route is not None:
        protected = [r for r in protected if route in (r.rule, r.endpoint)]
    if len(protected) != 1:
        found = ", ".join(r.rule for r in protected) or "none"
        raise InvalidValue(f"Calibration needs one protected route without URL arguments (found: {found}); "
                           "name it with --route")
    return protected[0].rule


def _sandbox(app: Flask, db: str, X: np.ndarray, labels: list[Any], seed: int) -> dict[str, Any]:
    """A copy of ``app``'s protected views with a guard of its own, in shadow mode."""
    clock = SimulatedClock()
    sandbox = Flask(app.import_name, instance_path=os.path.dirname(db))
    sandbox.config.update({k: v for k, v in app.config.items() if not k.startswith("MODELGUARD_")})
    sandbox.config.update({
        "MODELGUARD_FEATURES": app.config.get("MODELGUARD_FEATURES"), "MODELGUARD_ACTION": "observe",
        "MODELGUARD_DATABASE_URL": f"sqlite:///{db}", "MODELGUARD_CREATE_TABLES": True,
        "MODELGUARD_CLOCK": clock, "MODELGUARD_STORAGE_URI": "simulated://",
        "MODELGUARD_STORAGE_OPTIONS": {"clock": clock}, "MODELGUARD_FLUSH_INTERVAL": 3600.0,
        "MODELGUARD_METRICS_ENABLED": False, "MODELGUARD_ADMIN_ENABLED": False, "MODELGUARD_WATERMARK": 0.0,
    })
    state = state_of(app)
    for name in ("feature_dim", "feature_space", "anomaly_models", "prada_threshold", "detection_min_queries",
                 "detection_every", "rules", "ensemble_fpr", "output", "secret"):
        sandbox.config["MODELGUARD_" + name.upper()] = getattr(state.settings, name)
    sandbox.extensions.update({k: v for k, v in app.extensions.items() if k != "modelguard"})
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        if hasattr(view, "__modelguard__"):
            sandbox.add_url_rule(rule.rule, rule.endpoint, view, methods=rule.methods)
    level = log.level
    log.setLevel(logging.ERROR)  # the sandbox has no reference yet: its "degraded" warning would mislead
    try:
        guard = type(state.guard)(sandbox, clock=clock)  # the app's own extension class
    finally:
        log.setLevel(level)
    # The sandbox's reference is fitted on 70 % of the data; benign users draw from the rest.
    order = np.random.default_rng(seed).permutation(len(X))
    cut = int(len(X) * 0.7)
    with sandbox.app_context():
        state_of(sandbox).fit_reference(X[order[:cut]].tolist(), [labels[i] for i in order[:cut]])
    return {"app": sandbox, "guard": guard, "clock": clock, "pool": X[order[cut:]]}


def _world(pool: np.ndarray, X: np.ndarray) -> World:
    integer = bool(np.all(np.equal(np.mod(X, 1), 0)))
    seeds = pool[: max(10, len(pool) // 10)]

    def victim(_: np.ndarray) -> np.ndarray:
        raise RuntimeError("a calibration trains no clone")

    return World(pool=pool, test=pool[:1], test_labels=np.zeros(1), victim=victim, n_classes=2,
                 low=float(X.min()), high=float(X.max()), integer=integer, seeds=seeds)


#: Noise on the inputs of the "unseen" benign users, in each feature's standard deviations.
UNSEEN_NOISE = 0.3


def _unseen(world: World, X: np.ndarray, seed: int) -> World:
    """``world`` with its pool's inputs slightly noised: benign users who send
    inputs the model was not trained on. The reference is often the model's
    training data, on which it is more confident than on real users' inputs (on
    the example, 99.5 % of answers above 0.9 against 92.8 % on held-out digits;
    93.9 % with this noise); without these users the forest learnt that any
    unsure answer means a thief and flagged 1 to 4 of 200 of the served
    example's real users at their first evaluation."""
    noise = np.random.default_rng(seed).normal(size=world.pool.shape) * X.std(axis=0) * UNSEEN_NOISE
    pool = np.clip(world.pool + noise, X.min(axis=0), X.max(axis=0))
    return replace(world, pool=np.rint(pool) if world.integer else pool)


def _simulate(sandbox: dict[str, Any], X: np.ndarray, path: str, benign: int, budget: int,
              families: tuple[str, ...], seed: int, prefix: str,
              progress: Callable[[int, int], None] | None) -> dict[str, Any]:
    """One simulation against the sandbox; the labelled evaluations of its accounts."""
    app, guard, clock = sandbox["app"], sandbox["guard"], sandbox["clock"]
    state = state_of(app)
    specs: list[dict[str, Any]] = [{"kind": "benign", "name": f"{prefix}benign-{i:03d}", "budget": b,
                                    "interval": 120}
                                   for i, b in enumerate(np.random.default_rng(seed).integers(30, 250, benign))]
    unseen = [{"kind": "benign", "name": f"{prefix}unseen-{i:03d}", "budget": b, "interval": 120}
              for i, b in enumerate(np.random.default_rng(seed + 100).integers(20, 60, 2 * benign))]
    specs += unseen
    specs += [{"kind": kind, "name": prefix + kind, "budget": budget} for kind in families]
    actors = [make_actor({k: (int(v) if isinstance(v, np.integer) else v) for k, v in s.items()}) for s in specs]
    keys: dict[tuple[str, int], str] = {}
    with app.app_context():
        for actor in actors:
            for k in range(actor.accounts):
                name = actor.name if actor.accounts == 1 else f"{actor.name}#{k}"
                guard.create_account(name, limits="1000000/day")
                keys[(actor.name, k)] = guard.issue_key(name)

    def every(n: int) -> None:
        if n % 10 == 0:
            state.worker.flush()

    simulation = Simulation(WSGITransport(app.test_client()), _world(sandbox["pool"], X), actors, keys,
                            path=path, clock=clock, seed=seed, every=every)
    unseen_world = _unseen(simulation.world, X, seed)
    for actor in actors:
        if actor.name.startswith(f"{prefix}unseen-"):
            actor.bind(unseen_world, actor.rng)
    simulation.run(progress)
    guard.flush(app)
    rows: dict[str, list[Any]] = {"rows": [], "labels": [], "groups": [], "families": [], "queries": []}
    with app.app_context():
        for actor in actors:
            for k in range(actor.accounts):
                name = actor.name if actor.accounts == 1 else f"{actor.name}#{k}"
                for h in guard.score_history(name):
                    rows["rows"].append({k2: v for k2, v in (h["scores"] or {}).items() if v is not None})
                    rows["labels"].append(actor.malicious)
                    rows["groups"].append(name)
                    rows["families"].append(actor.kind)
                    rows["queries"].append(int(h["queries"]))
    return rows


#: How much further from the reference real users' queries sit than the
#: simulated ones (drawn from the reference data itself): ADD's own margin
#: between the fitted data and new natural data (``Reference.calibrate``).
SHIFT = 1.5


def _with_shifted_benign(training: dict[str, Any]) -> dict[str, Any]:
    """The training set plus, for every benign account, a copy whose
    reference-distance ratios are ``SHIFT`` times larger: the simulated benign
    users draw from the very data the reference (and often the model) was fitted
    on, so real users look further away; without the copies the trained
    ensemble flagged 6 of 30 real held-out users of the example."""
    out = {key: list(values) for key, values in training.items()}
    for row, label, group, *rest in zip(*(training[k] for k in ("rows", "labels", "groups", "families", "queries"))):
        if label:
            continue
        shifted = dict(row)
        for name in _REFERENCE_RATIOS:
            if shifted.get(name) is not None:
                shifted[name] = shifted[name] * SHIFT
        for key, value in zip(("rows", "labels", "groups", "families", "queries"), (shifted, label, f"{group}~", *rest)):
            out[key].append(value)
    return out


def _expectations(trained: Trained, check: dict[str, Any], prada_threshold: float) -> Calibration:
    """Queries to the first flag per family, and benign accounts flagged, when
    the held-out simulation's evaluations are judged by ``trained``."""
    malicious = rescore(trained, check["rows"], prada_threshold)
    first: dict[str, int | None] = {}
    flagged_groups: set[str] = set()
    for score, group, family, queries in zip(malicious, check["groups"], check["families"], check["queries"]):
        first.setdefault(family, None)
        if score >= 0.5 and group not in flagged_groups:
            flagged_groups.add(group)
            if first[family] is None or queries < first[family]:
                first[family] = queries
    benign = {g for g, label in zip(check["groups"], check["labels"]) if not label}
    result = Calibration(trained)
    result.queries_to_flag = {f: q for f, q in first.items() if f not in ("benign", "benign-power")}
    result.benign_accounts = len(benign)
    result.benign_flagged = len(benign & flagged_groups)
    return result
