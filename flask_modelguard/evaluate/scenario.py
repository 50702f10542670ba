"""Scenarios: what an evaluation simulates, as data (JSON or YAML).

A scenario names the app factory and the simulated world, the guard modes to
compare, and the actors::

    {"name": "small", "seed": 0,
     "app": "example_app:create_app",           # factory(config) -> Flask
     "world": "example_app.simulation:world",   # world(app) -> World (may prepare the app)
     "modes": ["off", "shadow", "default"],
     "config": {"MODELGUARD_WATERMARK": 0.005},   # MODELGUARD_* keys of every mode
     "limits": "100000/day",                       # limits of every simulated account
     "checkpoints": [250, 500, 1000],
     "surrogate": "mlp",
     "actors": [{"kind": "benign", "count": 20, "budget": [40, 300]},
                {"kind": "random", "name": "uniform", "strategy": "uniform", "budget": 1000}]}

``count`` makes that many actors named ``<name or kind>-000``...; a budget
given as ``[low, high]`` is drawn log-uniformly per actor from the
scenario's seed. Bundled scenarios (``default``, ``small``) are found by name.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..exc import InvalidValue

BUNDLED = os.path.join(os.path.dirname(__file__), "scenarios")

#: Guard modes: "off" (no guard), "shadow" (detectors run, answers untouched),
#: "default" (the configured policy).
MODES: dict[str, dict[str, Any]] = {
    "off": {"MODELGUARD_ENABLED": False},
    "shadow": {"MODELGUARD_ACTION": "observe"},
    "default": {},
}


#: A thief that fits its data to the end (no early stopping): the clone that
#: memorises watermark answers, as a determined thief's does.
DEFAULT_SURROGATE: dict[str, Any] = {"kind": "mlp", "answers": "labels", "hidden": 128, "max_iter": 500,
                                     "early_stopping": False}

#: Actor entries' keys that set up its account(s), not the actor.
ACCOUNT_KEYS = ("limits", "tier")


@dataclass
class Scenario:
    name: str
    actors: list[dict[str, Any]]
    seed: int = 0
    description: str = ""
    app: str = "example_app:create_app"
    world: str = "example_app.simulation:world"
    path: str = "/predict"
    modes: list[str] = field(default_factory=lambda: list(MODES))
    config: dict[str, Any] = field(default_factory=dict)
    limits: str | None = "1000000/day"
    checkpoints: list[int] = field(default_factory=lambda: [250, 500, 1000, 2500, 5000])
    #: How thieves train their clones (options of
    #: :func:`~flask_modelguard.simulate.surrogate.train_clone`; ``answers``:
    #: "labels", or "auto" for probabilities where they were served).
    surrogate: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SURROGATE))
    #: Requests between two flushes of the guard's worker (its queue is drained
    #: about twice a second in a real server; a simulated second is much shorter).
    flush_every: int = 10
    #: Simulated seconds between merges of account states into the database.
    persist_every: float = 3600.0
    #: Seed of a first, shadow-mode simulation whose labelled accounts train
    #: the random forest and the stacked ensemble (None: not trained).
    train_seed: int | None = None
    #: Requests per mode of the latency measurement (guard off vs default; 0: none).
    latency_requests: int = 1000
    #: Independently trained models tested against every account's evidence (false claims).
    controls: int = 1
    #: Measure the supervised detectors leave-one-family-out (see
    #: :func:`~.metrics.leave_one_family_out`; needs ``train_seed``, else ``seed + 1000``).
    lofo: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise InvalidValue(f"Unknown scenario field(s): {', '.join(sorted(unknown))}")
        if "name" not in data or not isinstance(data.get("actors"), list) or not data["actors"]:
            raise InvalidValue("A scenario needs a name and a non-empty list of actors")
        scenario = cls(**copy.deepcopy(data))
        if isinstance(scenario.surrogate, str):
            scenario.surrogate = {**DEFAULT_SURROGATE, "kind": scenario.surrogate}
        else:
            scenario.surrogate = {**DEFAULT_SURROGATE, **scenario.surrogate}
        bad = [m for m in scenario.modes if m not in MODES]
        if bad:
            raise InvalidValue(f"Unknown mode(s) {bad}; known: {', '.join(MODES)}")
        from ..simulate.attackers import parameters

        for spec in scenario.actors:
            if not isinstance(spec, dict) or "kind" not in spec:
                raise InvalidValue(f"Each actor needs a kind: {spec!r}")
            try:
                accepted = parameters(str(spec["kind"]))
            except ValueError as exc:
                raise InvalidValue(str(exc)) from None
            unknown = set(spec) - set(accepted) - {"kind", "name", "budget", "count", *ACCOUNT_KEYS}
            if unknown:
                raise InvalidValue(f"{spec['kind']}: unknown parameter(s) {', '.join(sorted(unknown))}"
                                   f" (accepted: {', '.join(accepted + ACCOUNT_KEYS)})")
        return scenario

    def to_dict(self) -> dict[str, Any]:
        return {name: copy.deepcopy(getattr(self, name)) for name in self.__dataclass_fields__}

    def expand(self) -> list[dict[str, Any]]:
        """One spec per actor: counts expanded, budget ranges drawn, names unique."""
        rng = np.random.default_rng(self.seed)
        out: list[dict[str, Any]] = []
        names: set[str] = set()
        for spec in self.actors:
            spec = dict(spec)
            count = int(spec.pop("count", 1))
            base = spec.pop("name", spec["kind"])
            for i in range(count):
                one = dict(spec)
                one["name"] = f"{base}-{i:03d}" if count > 1 else base
                budget = one.get("budget", 100)
                if isinstance(budget, list):
                    low, high = float(budget[0]), float(budget[1])
                    budget = int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
                one["budget"] = int(budget)
                if one["name"] in names:
                    raise InvalidValue(f"Two actors are named {one['name']!r}")
                names.add(one["name"])
                out.append(one)
        return out


def load_scenario(source: str | dict[str, Any]) -> Scenario:
    """A scenario from a dict, a bundled name (``default``, ``small``) or a
    JSON/YAML file."""
    if isinstance(source, dict):
        return Scenario.from_dict(source)
    path = source
    if not os.path.exists(path):
        for ext in (".json", ".yaml", ".yml"):
            candidate = os.path.join(BUNDLED, source + ext)
            if os.path.exists(candidate):
                path = candidate
                break
        else:
            names = sorted(os.path.splitext(n)[0] for n in os.listdir(BUNDLED))
            raise InvalidValue(f"No scenario file or bundled scenario {source!r} (bundled: {', '.join(names)})")
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise InvalidValue("YAML scenarios need PyYAML: pip install 'flask-modelguard[evaluate]'") from None
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise InvalidValue(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InvalidValue(f"{path}: a scenario is a mapping")
    return Scenario.from_dict(data)


def import_string(spec: str) -> Any:
    """``"package.module:attribute"`` → the attribute."""
    module, _, attribute = spec.partition(":")
    if not module or not attribute:
        raise InvalidValue(f"Expected 'module:attribute', not {spec!r}")
    try:
        target: Any = importlib.import_module(module)
    except ImportError as exc:
        raise InvalidValue(f"Cannot import {module!r}: {exc}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise InvalidValue(f"{module!r} has no {attribute!r}") from None
    return target
