"""What the thieves of a run got: each one's clone, its fidelity and the
ownership test of the guard's evidence on it (the controls, models trained
independently, are in :mod:`.controls`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..runtime import state_of
from ..simulate.actor import Actor, World
from .scenario import Scenario


def account_names(actor: Actor) -> list[str]:
    """The accounts of an actor: its name, or ``name#k`` for each of a sybil's accounts."""
    return [actor.name] if actor.accounts == 1 else [f"{actor.name}#{k}" for k in range(actor.accounts)]


def clones(scenario: Scenario, actors: list[Actor], world: World, app: Any) -> list[dict[str, Any]]:
    """Each thief's clone trained on what it was served (the learning curve of
    :func:`~..simulate.surrogate.learning_curve`), and the last clone's watermark test."""
    from ..simulate.surrogate import learning_curve

    state = state_of(app)
    options = dict(scenario.surrogate)
    answers = options.pop("answers", "labels")
    kind = options.pop("kind", "mlp")
    out = []
    for actor in actors:
        if not actor.malicious:
            continue
        served = "probabilities" if answers == "auto" and actor.P is not None else "labels"
        last: dict[str, Any] = {}

        def keep(size: int, clone: Any, last: dict[str, Any] = last) -> None:
            last["clone"] = clone  # the clone of the largest prefix comes last

        curve = learning_curve(actor, world, checkpoints=scenario.checkpoints, kind=kind, answers=served,
                               seed=scenario.seed, on_clone=keep, **options)
        watermark = mark = None
        if state.settings.enabled and "clone" in last:
            watermark = _watermark(state, account_names(actor), last["clone"])
        if state.settings.enabled and state.settings.probability_mark and actor.P is not None and len(actor.X):
            mark = _probability_mark(state, account_names(actor), actor, world, scenario.seed, options)
        out.append({"actor": actor.name, "kind": actor.kind, "surrogate": kind,
                    "answers": served, "curve": curve, "watermark": watermark, "mark": mark})
    return out


def _probability_mark(state: Any, names: list[str], actor: Actor, world: World, seed: int,
                      options: dict[str, Any]) -> dict[str, Any] | None:
    """A clone distilled on the probabilities ``actor`` was served (an MLP
    regressing the vectors), tested for every account's probability mark on
    the world's held-out inputs and two noisy copies of each."""
    from ..simulate.surrogate import fidelity, train_clone

    if len(np.unique(actor.y)) < 2:
        return None
    clone = train_clone(actor.X, actor.y, actor.P, answers="probabilities", seed=seed, low=world.low,
                        high=world.high, **{k: v for k, v in options.items() if k in ("hidden", "max_iter")})
    test = np.asarray(world.test, dtype=float)
    noise = np.random.default_rng(seed).normal(0.0, (world.high - world.low) / 16.0, (2, *test.shape))
    probes = np.vstack([test, *np.clip(test + noise, world.low, world.high)])
    owner = np.asarray(world.victim(probes), dtype=float)
    suspect = np.zeros_like(owner)
    suspect[:, clone.classes_] = clone.predict_proba(probes)
    with state._app().app_context():
        ranked = state.guard.verify_probability_mark(owner, suspect)
    mine = next((r for r in ranked if r.account in names), None)
    if mine is None:
        return None
    top = ranked[0] if ranked[0].claimed else None
    return {"account": mine.account, "log2_p": mine.log2_p, "claimed": mine.claimed, "fidelity": fidelity(clone, world),
            "attributed_to": None if top is None else top.account}


def _watermark(state: Any, names: list[str], clone: Any) -> dict[str, Any] | None:
    """The most significant ownership test of ``clone`` over ``names``'
    watermarks, and the attribution: the account, among all that received
    watermarks, whose test is the most significant."""
    def suspect(xs: list[Any]) -> list[Any]:
        return list(clone.predict(np.asarray(xs, dtype=float)))

    best = None
    with state._app().app_context():
        for name in names:
            result = state.guard.verify_watermark(name, suspect)
            if result.probes and (best is None or result.log2_p < best.log2_p):
                best = result
        ranked = state.guard.attribute(suspect) if best is not None else []
    if best is None:
        return None
    top = ranked[0] if ranked and ranked[0].claimed else None
    return {"account": best.account, "probes": best.probes, "matched": best.matches,
            "log2_p": best.log2_p, "claimed": best.claimed,
            "attributed_to": None if top is None else top.account}
