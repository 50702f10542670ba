"""Colluding accounts over real HTTP (issue #16, point 4): the example served
as ``make run`` serves it, with the group search every second instead of every
minute (``MODELGUARD_GROUPS_INTERVAL``, and the worker's tick, every key-cache
TTL, set to a second too), attacked by sybil thieves of 5, 10 and 20 accounts
(Knockoff-style natural images of another domain) and of 10 accounts (uniform
noise), 15 queries per account: below the detectors' first evaluation of an
account (20 queries), so no per-account detector can flag a part. Benign users
send 40 queries each. With the default ``MODELGUARD_GROUPS="flag"`` the
sybils must be found as groups (80 % of each one's accounts at least, each
with an evaluation giving the group's reason), one alert per group, no benign
user in any group, and the grouped accounts flagged, nobody else."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from example_app.simulation import digits_world
from flask_modelguard.runtime import state_of
from flask_modelguard.simulate.attackers import make_actor

from .served import Sent, ServedExample, account_names, drive, first_flag, table

SYBILS = [("sybil-5", 5, "knockoff"), ("sybil-10", 10, "knockoff"), ("sybil-20", 20, "knockoff"),
          ("sybil-random", 10, "random")]
PER_ACCOUNT = 15
#: Seconds to wait for the group search after the traffic.
WAIT = 10.0
#: Share of each sybil's accounts that must be grouped: searched every second while
#: the thief spreads, its first parts are grouped early, and a last part or two may
#: be left with no partner like it (the harness, searching less often, groups 44 of 45).
GROUPED = 0.8


@pytest.fixture
def served(tmp_path: Any) -> Any:
    env = {"MODELGUARD_GROUPS_INTERVAL": "1", "MODELGUARD_KEY_CACHE_TTL": "1"}
    server = ServedExample(tmp_path / "instance", env=env)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _grouped(served: ServedExample) -> set[str]:
    return {str(name) for g in state_of(served.reader).repository.list_groups(1000) for name in g["accounts"]}


def test_served_example_flags_sybils_as_groups_and_no_benign_user(served: ServedExample,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with threadpool_limits(1):
        world = digits_world(served.reader.extensions["digits_model"].predict_proba)
        sybils = [make_actor({"kind": "sybil", "name": name, "budget": k * PER_ACCOUNT, "accounts": k, "batch": 5,
                              "inner": inner}) for name, k, inner in SYBILS]
        benign = [make_actor({"kind": "benign", "name": f"benign-{i:02d}", "budget": 40}) for i in range(20)]
        actors = [*sybils, *benign]
        for actor, ss in zip(actors, np.random.SeedSequence(16).spawn(len(actors))):
            actor.bind(world, np.random.default_rng(ss))
        keys = {(a.name, k): served.create_account(name, limits="100000/second")
                for a in actors for k, name in enumerate(account_names(a))}
        sent: dict[str, Sent] = {}
        started = time.monotonic()
        drive(served.url, actors, keys, sent=sent, in_flight=3, deadline=300.0)
        traffic = time.monotonic() - started
        parts = [n for a in sybils for n in account_names(a)]
        deadline = time.monotonic() + WAIT
        while not set(parts) <= (found := _grouped(served)) and time.monotonic() < deadline:
            time.sleep(0.5)
        waited = time.monotonic() - started - traffic
    everyone = served.accounts()
    problems, lines = [], []
    for actor in sybils:
        names = account_names(actor)
        reasons = [(first_flag(served.score_history(n)) or {}).get("reasons") or [] for n in names]
        grouped = [n for n, r in zip(names, reasons) if r and r[0].startswith("colluding group of")]
        alone = [n for n, r in zip(names, reasons) if r and not r[0].startswith("colluding group of")]
        lines.append([actor.name, actor.accounts, actor.sent, sum(n in found for n in names), len(grouped), len(alone)])
        if len(grouped) < GROUPED * actor.accounts or alone:
            problems.append(f"{actor.name}: {len(grouped)} of {actor.accounts} accounts grouped, flagged alone: {alone}")
    wrongly = [n for a in benign for n in account_names(a) if n in found]
    if wrongly:
        problems.append(f"benign accounts grouped: {wrongly}")
    flagged = {n for n, row in everyone.items() if row["flagged"]}
    grouped_parts = {n for n in parts if n in found}
    if flagged != grouped_parts:
        problems.append(f"flagged {sorted(flagged - grouped_parts)} though not grouped; grouped but not flagged "
                        f"{sorted(grouped_parts - flagged)} (MODELGUARD_GROUPS is 'flag')")
    repository = state_of(served.reader).repository
    groups = repository.list_groups()
    with served.reader.app_context():
        alerts = [a for a in served.reader.extensions["modelguard"].admin.alerts(limit=1000)[0]
                  if a["reason"].startswith("colluding group of")]
    if len(alerts) != len(groups):
        problems.append(f"{len(alerts)} group alerts for {len(groups)} groups")
    status, health = served.health()
    report = "\n".join(["", f"== colluding accounts, served example ({served.url}) ==",
                        f"20 benign users, 800 queries: {len(wrongly)} grouped; {len(groups)} groups, "
                        f"{len(alerts)} group alerts; traffic {traffic:.1f} s, flags {waited:.1f} s after it; "
                        f"group search: {health['worker'].get('group_search')}",
                        table(lines, ["sybil", "accounts", "queries", "in a group", "evaluated as one", "flagged alone"]),
                        ""])
    with capsys.disabled():
        print(report)
    assert status == 200 and health["worker"]["group_searches"] >= 1 and health["worker"]["groups_found"] >= 1
    assert not problems, "\n".join(["", *problems, report, served.log()])
