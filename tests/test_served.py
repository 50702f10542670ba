"""Acceptance over real HTTP (issue #11, point 6): the example served exactly
as ``make run`` serves it (``python -m example_app``, a fresh instance folder,
its defaults), attacked by simulated thieves of every family the simulator
has, next to benign users, over loopback HTTP.

Nothing is set up on the server beyond creating accounts with the CLI. Every
thief but the pure in-distribution copycat must be flagged within 100 of its
queries (the Jacobian thief opens with one request of 1e308s, which must not
switch detection off for it, issue #13); no benign account may be flagged. The per-family figures are printed
to the terminal (outside pytest's capture) so the test log carries them.

The small version runs by default; the large one is marked ``slow`` and runs
only with ``MODELGUARD_SLOW=1`` (``MODELGUARD_SLOW=1 pytest -m slow tests/test_served.py``).
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from example_app.simulation import digits_world
from flask_modelguard.simulate import Actor
from flask_modelguard.simulate.attackers import ACTORS, make_actor
from flask_modelguard.simulate.surrogate import fidelity

from .served import (
    Sent,
    ServedExample,
    account_names,
    drive,
    first_flag,
    replace_world,
    summary,
    table,
)

#: Every thief (except the copycat) must be flagged within this many of its queries.
WITHIN = 100
#: Seconds to wait for the guard's worker (it writes every 0.5 s) after the thieves' 100th query.
FLAG_WAIT = 6.0
#: Seconds to let the worker write the last evaluations after all traffic.
SETTLE = 2.0
#: Accounts are created on tier "pro" with their limits replaced by this
#: (``--limits``): the test sends as fast as the server answers, a few requests in
#: flight, and a thief alone would pass pro's 100 inputs/second; the test measures
#: detection, not rate limiting.
LIMITS = "100000/second"
#: The one family allowed to go unflagged: natural digits of the pool, nothing else.
COPYCAT = "copycat"


@dataclass
class Plan:
    benign: int
    benign_budget: int
    thief_budget: int
    #: Add the 5-account sybil (large version).
    sybil_5: bool = False
    in_flight: int = 3
    deadline: float = 600.0


def thief_specs(plan: Plan) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(make_actor spec, World changes) of every thief family."""
    specs: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"kind": "random-uniform", "name": "uniform"}, {}),
        ({"kind": "random-gaussian", "name": "gaussian"}, {}),
        ({"kind": "random-exhaustive", "name": "exhaustive"}, {}),
        ({"kind": "random-systematic", "name": "systematic"}, {}),
        ({"kind": "random-adversarial", "name": "adversarial"}, {}),
        # With the World's 100 natural seeds, a Jacobian thief's first 100 queries
        # *are* natural digits (a copycat's): it starts from 20 here, so most of
        # its first 100 queries are augmented ones.
        ({"kind": "jacobian", "name": "jacobian"}, {"seeds": "first-20"}),
        ({"kind": "knockoff", "name": "knockoff"}, {}),
        ({"kind": "active", "name": "active"}, {}),
        ({"kind": "adaptive", "name": "adaptive"}, {}),  # Knockoff queries, 10% natural cover
        # Round-robin over 3 accounts: each reaches the detectors' first evaluation
        # (at 25-30 of its queries) within the thief's 100.
        ({"kind": "sybil", "name": "sybil", "accounts": 3}, {}),
        ({"kind": "low-and-slow", "name": "low-and-slow"}, {}),
        # The simulator's default sybil: 5 accounts, 20 queries each by the thief's
        # 100th, below the detectors' first evaluation of an account (20 queries,
        # then every 25): only a cross-account detector can flag it within 100.
        *([({"kind": "sybil", "name": "sybil-5", "accounts": 5}, {})] if plan.sybil_5 else []),
        # The pure in-distribution copycat: only natural held-out digits (the whole
        # pool benign users draw from, not just the 100 seeds), no attack queries.
        ({"kind": "adaptive", "name": COPYCAT, "natural": 1.0}, {"seeds": None}),
    ]
    for kind in ("natural-patches", "data-free", "mixed"):  # being added to the simulator: used once registered
        if kind in ACTORS:
            specs.append(({"kind": kind, "name": kind}, {}))
    return specs


def first_start(served: ServedExample) -> str:
    """What the server's log says its first start did (the example calibrates once)."""
    found = re.search(r"Calibrated in (\d+) s", served.log(tail=1_000_000))
    return f"calibrated at start-up in {found.group(1)} s" if found else "no calibration in its log"


def clone_of(actor: Actor, world: Any) -> Any:
    """A clone trained to the end on every label the thief was served (the
    evaluation's determined thief); None with too few answers."""
    from flask_modelguard.evaluate.scenario import DEFAULT_SURROGATE
    from flask_modelguard.simulate.surrogate import train_clone

    if len(actor.y) < 50 or len(set(np.asarray(actor.y).tolist())) < 2:
        return None
    options = {k: v for k, v in DEFAULT_SURROGATE.items() if k not in ("answers",)}
    return train_clone(np.asarray(actor.X), np.asarray(actor.y), answers="labels", seed=0,
                       low=world.low, high=world.high, **options)


#: Stolen answers from which every flagged thief's clone must be proven ours (issue 17's goal).
PROVEN_FROM = 1000


def ownership(served: ServedExample, actor: Actor, clone: Any) -> tuple[str, str | None]:
    """The ownership test of ``clone`` with the server's evidence (the best of
    the thief's accounts), and what is wrong with it: a claim for another
    account (a false claim), or none for the thief where one is due."""
    if clone is None:
        return "-", None

    def suspect(xs: list[Any]) -> list[Any]:
        return list(clone.predict(np.asarray(xs, dtype=float)))

    from example_app import guard

    with served.reader.app_context():
        ranked = guard.attribute(suspect)
    names = account_names(actor)
    wrong = [r.account for r in ranked if r.claimed and r.account not in names]
    mine = [r for r in ranked if r.account in names]
    best = mine[0] if mine else None
    attributed = best is not None and best.claimed and ranked[0].account == best.account
    text = "no evidence" if best is None else f"{best.matches}/{best.probes}, 2^{best.log2_p:.0f}" + \
        (" ✓" if attributed else "")
    if wrong:
        return text, f"its clone is claimed for other accounts: {wrong}"
    # The copycat is unsuspected: at the base watermark rate 1,000 answers hold
    # about 2.5 marks, too few (issue 17, points 2 and 3, are open).
    if actor.sent >= PROVEN_FROM and actor.name != COPYCAT and not attributed:
        return text, f"its clone, from {actor.sent} answers, is not proven ours and attributed ({text})"
    return text, None


def family(actor: Actor) -> str:
    return actor.name if actor.name == actor.kind or actor.name == COPYCAT else f"{actor.kind} ({actor.name})"


def _hostile(url: str, key: str) -> int:
    """One request of 1e308s, the statistics-poisoning request of issue 13."""
    req = urllib.request.Request(f"{url}/predict", data=json.dumps({"features": [1e308] * 64}).encode(),
                                 method="POST", headers={"Content-Type": "application/json", "X-API-Key": key})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return int(resp.status)


def run(served: ServedExample, plan: Plan, capsys: pytest.CaptureFixture[str]) -> None:
    # The thieves' substitutes train here, next to the server: one BLAS thread each
    # (see served._environment).
    with threadpool_limits(1):
        _run(served, plan, capsys)


def _actors(world: Any, plan: Plan) -> tuple[list[Actor], list[Actor]]:
    """The thieves of every family and the benign users, bound to their worlds and seeds."""
    worlds: dict[str, Any] = {}  # thief name -> its World, when not the shared one
    thieves: list[Actor] = []
    for spec, changes in thief_specs(plan):
        actor = make_actor({**spec, "budget": plan.thief_budget})
        if changes.get("seeds") == "first-20":
            changes = {"seeds": world.seeds[:20]}
        if changes:
            worlds[actor.name] = replace_world(world, **changes)
        thieves.append(actor)
    benign = [make_actor({"kind": "benign", "name": f"benign-{i:02d}", "budget": plan.benign_budget})
              for i in range(plan.benign)]
    for actor, ss in zip([*thieves, *benign], np.random.SeedSequence(0).spawn(len(thieves) + len(benign))):
        actor.bind(worlds.get(actor.name, world), np.random.default_rng(ss))
    return thieves, benign


def _accounts(served: ServedExample, actors: list[Actor]) -> dict[tuple[str, int], str]:
    """Accounts: the first through a real `flask` subprocess (what an operator
    types), the rest through the same command in-process (a `flask` process costs
    4-9 s of imports on this machine)."""
    keys: dict[tuple[str, int], str] = {}
    first = True
    for actor in actors:
        for k, name in enumerate(account_names(actor)):
            keys[(actor.name, k)] = served.create_account(name, tier="pro", limits=LIMITS, subprocess_cli=first)
            first = False
    return keys


def _flags_at_checkpoint(served: ServedExample, thieves: list[Actor]) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Each thief's flagged accounts, read until every thief that must be is (at most FLAG_WAIT s)."""
    must = [a for a in thieves if a.name != COPYCAT]
    deadline = time.monotonic() + FLAG_WAIT
    while True:
        rows = served.accounts()
        flagged = {a.name: [n for n in account_names(a) if rows[n]["flagged"]] for a in thieves}
        if all(flagged[a.name] for a in must) or time.monotonic() > deadline:
            return flagged, rows
        time.sleep(0.5)


def _check_harness(served: ServedExample, actors: list[Actor], sent: dict[str, Sent],
                   final: dict[str, Any]) -> Counter[int]:
    """Every request answered, every budget spent, every account listed; the statuses."""
    statuses: Counter[int] = Counter()
    for record in sent.values():
        statuses.update(record.statuses)
    # Benign users get 200 only; a thief may also get 403 (if the policy blocks it).
    unexpected = {a.name: dict(sent[a.name].statuses) for a in actors
                  if set(sent[a.name].statuses) - ({200, 403} if a.malicious else {200})}
    assert not unexpected, f"unexpected HTTP statuses: {unexpected}\n{served.log()}"
    assert all(a.sent == a.budget for a in actors), {a.name: (a.sent, a.budget) for a in actors if a.sent != a.budget}
    missing = [n for a in actors for n in account_names(a) if n not in final]
    assert not missing, f"accounts unknown to list-accounts: {missing}"
    return statuses


def _thief_figures(served: ServedExample, actor: Actor, record: Sent, flagged_now: list[str],
                   checkpoint_rows: dict[str, Any], world: Any) -> tuple[list[Any], str | None]:
    """One thief's row of the table, and what is wrong with it (None: flagged in time)."""
    flags, up_to = [], []  # (thief's queries then, the account's, account, evaluation); evaluations in its first 100
    for k, name in enumerate(account_names(actor)):
        history = served.score_history(name)
        hit = first_flag(history)
        if hit is not None:
            flags.append((record.total_when(k, hit["queries"]), hit["queries"], name, hit))
        up_to += [h for h in history if record.total_when(k, h["queries"]) <= WITHIN]
    best = max(up_to, key=lambda h: (h["scores"] or {}).get("malicious") or 0.0, default=None)
    if flags:
        total, own, name, hit = min(flags, key=lambda f: f[0])
        when = f"{total}" + (f" ({own} on {name})" if actor.accounts > 1 else "")
        reason = "; ".join(hit["reasons"])
    else:
        when, reason = "-", "-"
    score_now = max((checkpoint_rows[n]["score"] for n in account_names(actor)), default=0.0)
    clone = clone_of(actor, world)
    proof, wrong = ownership(served, actor, clone)
    line = [family(actor), actor.accounts, actor.sent, "yes" if flagged_now else "no", when, f"{score_now:.3g}",
            "-" if clone is None else f"{fidelity(clone, world):.2f}", proof,
            summary(best["scores"] if best else None), reason]
    if wrong and (flagged_now or "other accounts" in wrong):
        return line, f"{family(actor)}: {wrong}"
    if actor.name == COPYCAT or (flagged_now and flags and min(f[0] for f in flags) <= WITHIN):
        return line, None
    first_at = f"first flagged at {min(f[0] for f in flags)} queries" if flags else "never flagged"
    evaluated = f"{len(up_to)} evaluation(s) up to {WITHIN} queries"
    return line, (f"{family(actor)}: not flagged within {WITHIN} queries ({first_at}; {evaluated}; "
                  f"score {score_now:.3g} at the checkpoint; best: {summary(best['scores'] if best else None)})")


def _run(served: ServedExample, plan: Plan, capsys: pytest.CaptureFixture[str]) -> None:
    wall = time.monotonic()
    model = served.reader.extensions["digits_model"]  # the model the server cached in the instance folder
    world = digits_world(model.predict_proba)
    thieves, benign = _actors(world, plan)
    actors = [*thieves, *benign]
    keys = _accounts(served, actors)
    # The Jacobian thief opens with one request of huge finite numbers (which
    # the example answers): it must not switch detection off for its account
    # (issue #13). The other thieves stay clean: their families are measured.
    jacobian = next(a for a in thieves if a.kind == "jacobian")
    assert _hostile(served.url, keys[(jacobian.name, 0)]) == 200
    setup = time.monotonic() - wall

    # Phase 1: every thief up to its 100th query (benign users interleaved, a
    # proportional share of theirs), then a bounded wait for the flags.
    sent: dict[str, Sent] = {}
    share = max(1, round(plan.benign_budget * WITHIN / plan.thief_budget))
    caps = {a.name: (WITHIN if a.malicious else share) for a in actors}
    t0 = time.monotonic()
    drive(served.url, actors, keys, sent=sent, caps=caps, in_flight=plan.in_flight, deadline=plan.deadline)
    phase1 = time.monotonic() - t0
    assert all(a.sent == WITHIN for a in thieves), {a.name: a.sent for a in thieves}
    at_checkpoint, checkpoint_rows = _flags_at_checkpoint(served, thieves)

    # Phase 2: the rest of every budget.
    t0 = time.monotonic()
    drive(served.url, actors, keys, sent=sent, in_flight=plan.in_flight, deadline=plan.deadline)
    phase2 = time.monotonic() - t0
    time.sleep(SETTLE)
    final = served.accounts(subprocess_cli=True)  # the operator's view, through the real CLI
    statuses = _check_harness(served, actors, sent, final)

    # -- figures ----------------------------------------------------------------
    lines, problems = [], []
    for actor in thieves:
        line, problem = _thief_figures(served, actor, sent[actor.name], at_checkpoint[actor.name],
                                       checkpoint_rows, world)
        lines.append(line)
        if problem:
            problems.append(problem)
    benign_flagged = [(a, n) for a in benign for n in account_names(a) if final[n]["flagged"]]
    for _actor, name in benign_flagged:
        hit = first_flag(served.score_history(name))
        problems.append(f"benign {name} flagged at {hit['queries'] if hit else '?'} queries: "
                        f"{'; '.join(hit['reasons']) if hit else 'no reasons recorded'} "
                        f"[{summary(hit['scores'] if hit else None)}]")
    benign_scores = [final[n]["score"] for a in benign for n in account_names(a)]
    benign_queries = sum(a.sent for a in benign)
    wall = time.monotonic() - wall
    report = "\n".join([
        "",
        f"== served example ({served.url}, instance {served.instance}) ==",
        f"{len(benign)} benign users, {benign_queries} queries: {len(benign_flagged)} flagged, "
        f"highest malicious score {max(benign_scores, default=0.0):.3g}",
        f"{len(thieves)} thieves, {sum(a.sent for a in thieves)} queries "
        f"(checkpoint at {WITHIN} queries each, flags read within {FLAG_WAIT:.0f} s):",
        table(lines, ["family", "accts", "queries", f"flagged@{WITHIN}", "first flag at (queries)",
                      f"score@{WITHIN}", "clone fidelity", "ownership (matches, p, ✓ attributed)",
                      f"best evaluation <= {WITHIN}", "reason"]),
        f"server up in {served.started_in:.1f} s ({first_start(served)}); then {wall:.1f} s: reader app + accounts {setup:.1f} s, traffic {phase1:.1f} + {phase2:.1f} s, "
        f"{sum(statuses.values())} requests",
        "",
    ])
    with capsys.disabled():
        print(report)
    assert not problems, "\n".join(["", *problems, report])


@pytest.fixture
def served(tmp_path: Any) -> Any:
    server = ServedExample(tmp_path / "instance")
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def served_stream(tmp_path: Any, redis_uri: str) -> Any:
    """The example as ``make run`` serves it, with one setting more in the
    environment: ``MODELGUARD_EVENTS`` on Redis, and ``flask modelguard worker``
    started beside it (docs/deployment.md): the server only publishes."""
    env = {"MODELGUARD_EVENTS": redis_uri, "MODELGUARD_NAMESPACE": f"served-{uuid.uuid4().hex}"}
    server = ServedExample(tmp_path / "instance", env=env)
    try:
        server.start()  # its first start trains and calibrates: the worker starts on what it stored
        server.start_worker()
        yield server
    finally:
        server.stop()
        _delete_stream(redis_uri, env["MODELGUARD_NAMESPACE"])


def _delete_stream(redis_uri: str, namespace: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_uri)
    try:
        client.delete(f"{namespace}:events")
    finally:
        client.close()


def test_served_example_flags_thieves_not_users(served: ServedExample, capsys: pytest.CaptureFixture[str]) -> None:
    """Small version (CI): 20 benign users × 40 queries, every thief 150 queries."""
    run(served, Plan(benign=20, benign_budget=40, thief_budget=150), capsys)


def test_served_example_with_a_stream_worker_flags_thieves_not_users(
        served_stream: ServedExample, capsys: pytest.CaptureFixture[str]) -> None:
    """The same acceptance with detection off the serving process: every event
    goes through the Redis stream to `flask modelguard worker`, which flags."""
    run(served_stream, Plan(benign=20, benign_budget=40, thief_budget=150), capsys)
    status, health = served_stream.health()
    events = health["detection"]["events"]
    assert status == 200 and events["mode"] == "stream" and events["why"].startswith("judged by"), health
    assert health["worker"]["stream_refused"] == 0 and health["worker"]["dropped"] == 0, health


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MODELGUARD_SLOW"), reason="large served run: set MODELGUARD_SLOW=1")
def test_served_example_flags_thieves_not_users_large(served: ServedExample,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Large version: 60 benign users × 150 queries, every thief 1,000 queries, and a
    sybil over 5 accounts."""
    run(served, Plan(benign=60, benign_budget=150, thief_budget=1000, sybil_5=True, deadline=1500.0), capsys)
