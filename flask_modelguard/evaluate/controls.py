"""The controls of an evaluation: models trained independently of the guard's
key, tested against every account's evidence; a claim on one is a false claim."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..runtime import state_of
from ..simulate.actor import Actor, World
from .scenario import Scenario
from .theft import account_names

#: The independent models' variety, cycled over: (kind, hidden units).
_CONTROLS = (("mlp", 32), ("mlp", 64), ("mlp", 128), ("mlp", 256), ("logreg", 64))


def independent(scenario: Scenario, actors: list[Actor], world: World, app: Any) -> dict[str, Any] | None:
    """``scenario.controls`` models trained independently (on the owner's own
    labelled data, not on stolen answers: different seeds, architectures and
    random halves or more of the data), each tested against every account's
    evidence: the false claims. The first one's test over the thieves'
    accounts is the report's control line."""
    from ..ownership import verify
    from ..simulate.surrogate import train_clone

    state = state_of(app)
    if not state.settings.enabled:
        return None
    labels = world.victim(world.pool).argmax(axis=1)
    options = {k: v for k, v in scenario.surrogate.items() if k not in ("answers", "kind", "hidden")}
    with app.app_context():
        evidence = {name: state.guard.watermark_records(name) for name in state.repository.accounts_with_watermarks()}
    inputs = {name: np.asarray([r["input"] for r in records], dtype=float) for name, records in evidence.items()}
    thieves = {n for a in actors if a.malicious for n in account_names(a)}
    rng = np.random.default_rng(scenario.seed + 1)
    claims, lowest, first = [], 0.0, None
    for i in range(max(1, scenario.controls)):
        kind, hidden = _CONTROLS[i % len(_CONTROLS)]
        rows = rng.random(len(labels)) < rng.uniform(0.5, 1.0)
        model = train_clone(world.pool[rows], labels[rows], answers="labels", kind=kind, hidden=hidden,
                            seed=scenario.seed + 1 + i, low=world.low, high=world.high, **options)
        tests = [verify(name, evidence[name], list(model.predict(inputs[name]))) for name in evidence]
        claims += [(i, t.account) for t in tests if t.claimed]
        lowest = min([lowest, *(t.log2_p for t in tests)])
        if first is None:
            first = _best([t for t in tests if t.account in thieves])
    return {"watermark": first, "models": max(1, scenario.controls), "accounts": len(evidence),
            "false_claims": len(claims), "claimed": claims[:20], "lowest_log2_p": lowest}


def _best(tests: list[Any]) -> dict[str, Any] | None:
    """The most significant of ``tests``, as a report row."""
    tests = [t for t in tests if t.probes]
    if not tests:
        return None
    best = min(tests, key=lambda t: t.log2_p)
    return {"account": best.account, "probes": best.probes, "matched": best.matches, "log2_p": best.log2_p,
            "claimed": best.claimed, "attributed_to": best.account if best.claimed else None}


def false_claims_line(mode: str, models: Mapping[str, Any]) -> str:
    """The report's line on the independent models' tests."""
    many = f"{models['models']} independently trained model" + ("s" if models["models"] != 1 else "")
    return (f"False claims ({mode}) — {many} (MLPs of 32–256 units and "
            f"logistic regressions, other seeds, random halves or more of the owner's data), each tested against "
            f"the evidence of all {models['accounts']} accounts that have some: **{models['false_claims']} "
            f"claimed**; the most significant test at log2 p = {float(models['lowest_log2_p'] or 0.0):.1f}.")
