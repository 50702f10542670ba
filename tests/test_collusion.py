"""collusion.py and repository/groups.py: the group search on a schedule over
the stored states (SQLite and PostgreSQL), each group's verdict written once,
however many processes find it."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, func, select

from flask_modelguard import models
from flask_modelguard.alerting import Alerter
from flask_modelguard.collusion import GroupWatch
from flask_modelguard.detectors.add import Reference
from flask_modelguard.features import FeatureSpace
from flask_modelguard.monitor import Monitor
from flask_modelguard.persistence import StateStore
from flask_modelguard.policy import FlagPolicy
from flask_modelguard.repository import Repository
from flask_modelguard.state import AccountState
from tests.test_groups import DIM, _draw, _shift, _state

NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def reference() -> Reference:
    X, labels = _draw(np.random.default_rng(0), 3000)
    return Reference.fit(X, labels, seed=0)


class _Process:
    """One process's guard parts around a shared database."""

    def __init__(self, url: str, reference: Reference, action: str = "degrade") -> None:
        self.repository = Repository(create_engine(url), clock=lambda: NOW)
        self.monitor = Monitor(DIM, reference=reference)
        self.states = StateStore(self.monitor, self.repository, FeatureSpace("", DIM))
        self.forgotten: list[int] = []
        self.webhooks: list[dict[str, Any]] = []
        alerter = Alerter(self.repository.account_name, self.forgotten.append, lambda: None, lambda: NOW)
        alerter.webhook = self  # type: ignore[assignment]
        self.watch = GroupWatch(self.monitor, self.states, self.repository, FlagPolicy(action), alerter)

    def send(self, payload: dict[str, Any]) -> None:  # the webhook's interface
        self.webhooks.append(payload)


def _accounts(process: _Process, states: dict[str, AccountState]) -> dict[str, int]:
    """Accounts created and their states stored; name → id."""
    repository = process.repository
    ids = {name: repository.create_account(name, "free")["id"] for name in states}
    def store(state: AccountState) -> Any:
        return lambda _stored: state.to_dict()

    repository.merge_states({ids[name]: store(state) for name, state in states.items()})
    return ids


def _population(seed: int, sybil_parts: int = 10) -> dict[str, AccountState]:
    rng = np.random.default_rng(seed)
    benign = {f"benign-{i}": _state(rng, int(rng.integers(15, 200))) for i in range(60)}
    return {**benign, **{f"sybil#{k}": _state(rng, 15, _shift(0)) for k in range(sybil_parts)}}


def _count(process: _Process, table: Any) -> int:
    with process.repository.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


@pytest.fixture
def process(db_url: str, reference: Reference) -> Any:
    found = _Process(db_url, reference)
    found.repository.create_all()
    yield found
    found.repository.engine.dispose()


def test_a_group_is_flagged_with_one_alert_and_found_once(process: _Process) -> None:
    ids = _accounts(process, _population(1))
    sybils = {ids[f"sybil#{k}"]: f"sybil#{k}" for k in range(10)}
    groups = process.watch.scan(NOW)
    assert len(groups) == 1 and set(groups[0].members) <= set(sybils) and len(groups[0].members) >= 9, groups
    members = sorted(sybils[a] for a in groups[0].members)
    size = len(members)
    assert {a["name"] for a in process.repository.list_accounts() if a["flagged"]} == set(members)
    assert _count(process, models.alerts) == 1 and _count(process, models.account_groups) == 1
    with process.repository.engine.connect() as conn:
        reason = conn.execute(select(models.alerts.c.reason)).scalar_one()
    assert reason.startswith(f"colluding group of {size} accounts") and all(name in reason for name in members)
    history = process.repository.score_history(members[0])
    assert history[-1]["reasons"][0].startswith(f"colluding group of {size}")
    assert history[-1]["scores"]["group_size"] == size
    assert sorted(process.forgotten) == sorted(groups[0].members)  # each member's cached look-ups dropped
    assert [w["event"] for w in process.webhooks] == ["group_flagged"]
    assert sorted(process.webhooks[0]["accounts"]) == members
    assert process.watch.scan(NOW + 60) == []  # flagged members are no candidates
    assert _count(process, models.alerts) == 1 and _count(process, models.account_groups) == 1
    stats = process.watch.stats()
    assert stats["groups_found"] == 1 and stats["group_members_flagged"] == size and stats["group_searches"] == 2

def test_in_shadow_mode_a_group_is_alerted_once_and_nothing_flagged(db_url: str, reference: Reference) -> None:
    shadow = _Process(db_url, reference, action="observe")
    shadow.repository.create_all()
    try:
        _accounts(shadow, _population(2))
        assert len(shadow.watch.scan(NOW)) == 1
        assert not any(a["flagged"] for a in shadow.repository.list_accounts())
        assert len(shadow.watch.scan(NOW + 60)) == 0  # found again: no new alert
        assert _count(shadow, models.alerts) == 1 and _count(shadow, models.account_groups) == 1
    finally:
        shadow.repository.engine.dispose()


def test_processes_that_find_the_same_group_write_it_once(db_url: str, reference: Reference,
                                                          process: _Process) -> None:
    _accounts(process, _population(3))
    others = [_Process(db_url, reference) for _ in range(3)]
    found: list[int] = []
    errors: list[BaseException] = []

    def scan(p: _Process) -> None:
        try:
            found.append(len(p.watch.scan(NOW)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=scan, args=(p,)) for p in [process, *others]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert sorted(found) == [0, 0, 0, 1]
        assert _count(process, models.alerts) == 1 and _count(process, models.account_groups) == 1
        assert sum(len(p.webhooks) for p in [process, *others]) == 1
    finally:
        for p in others:
            p.repository.engine.dispose()


def test_this_processs_unmerged_queries_count(process: _Process) -> None:
    """Half of each part is stored, half waits in this process's memory: the
    group is found from both, and the merge later still stores everything once."""
    population = _population(4)
    rng = np.random.default_rng(40)
    stored = {name: (_state(rng, 8, _shift(0)) if name.startswith("sybil") else s) for name, s in population.items()}
    ids = _accounts(process, stored)
    for k in range(10):
        account = ids[f"sybil#{k}"]
        process.monitor.observe(account, _observation(rng))
    assert len(process.watch.scan(NOW)) == 1
    process.states.persist()
    stored_state = process.repository.load_state(ids["sybil#0"])
    assert stored_state is not None and AccountState.from_dict(stored_state).queries == 8 + 10


def _observation(rng: np.random.Generator) -> Any:
    from flask_modelguard.state import Observation

    X, labels = _draw(rng, 10, _shift(0))
    return Observation(NOW, [f"{rng.integers(2**62):016x}" for _ in labels], X, labels, [0.9] * 10)


def test_allow_listed_accounts_are_no_candidates(process: _Process) -> None:
    ids = _accounts(process, _population(5))
    for k in range(10):
        process.repository.update_account(f"sybil#{k}", allowlisted=True)
    assert process.watch.scan(NOW) == []
    assert process.repository.unflagged([ids["sybil#0"], ids["benign-0"]]) == {ids["benign-0"]}


def test_the_schedule_and_what_it_says_when_it_cannot_search(db_url: str, process: _Process) -> None:
    _accounts(process, _population(6))
    watch = process.watch
    watch.interval = 60.0
    assert len(watch.tick(NOW)) == 1 and watch.tick(NOW + 30) == [] and watch.searches == 1
    process.monitor.reference = None
    assert watch.tick(NOW + 61) == [] and watch.stats()["group_search"].startswith("waiting for a reference")
    off = GroupWatch(process.monitor, process.states, process.repository, FlagPolicy(), watch.alerter, enabled=False)
    assert off.tick(NOW) == [] and off.stats()["group_search"] == "off (MODELGUARD_GROUPS)"


def test_a_failing_search_is_counted_and_said(process: _Process, caplog: pytest.LogCaptureFixture) -> None:
    process.repository.engine.dispose()
    process.repository.drop_all()
    assert process.watch.tick(NOW) == []
    assert process.watch.stats()["group_searches_failed"] == 1
    assert process.watch.stats()["group_search"].startswith("the last search failed")
    said = [r for r in caplog.records if "colluding" in r.getMessage()]
    assert said and all(r.exc_info is None for r in said)  # a database away is said, without a traceback


def test_in_shadow_mode_parts_found_later_make_a_group_of_their_own(db_url: str, reference: Reference) -> None:
    """Members of a shadow-mode group stay unflagged but are no candidates again:
    later parts make their own group (one alert each group, none repeated);
    an enforcing action then catches the earlier members."""
    shadow = _Process(db_url, reference, action="observe")
    shadow.repository.create_all()
    try:
        population = _population(7)
        first = {n: s for n, s in population.items() if not n.startswith("sybil#") or int(n.split("#")[1]) < 5}
        ids = _accounts(shadow, first)
        assert len(shadow.watch.scan(NOW)) == 1
        ids.update(_accounts(shadow, {n: s for n, s in population.items() if n not in first}))
        assert len(shadow.watch.scan(NOW + 60)) == 1
        assert shadow.watch.scan(NOW + 120) == []  # nothing new: no alert repeated
        assert _count(shadow, models.alerts) == 2 and _count(shadow, models.account_groups) == 2
        members = {a for g in shadow.repository.list_groups() for a in g["members"]}
        assert members <= {ids[f"sybil#{k}"] for k in range(10)} and len(members) >= 9
        assert not any(a["flagged"] for a in shadow.repository.list_accounts())
        evaluations = {a: {"account_id": a, "ts": NOW, "queries": 15, "scores": {"malicious": 0.9},
                           "reasons": ["colluding group"]} for a in members}
        record = {"queries": 150, "ratio": 2.0, "z": 50.0, "reason": "colluding group"}
        caught = shadow.repository.record_group(record, evaluations, FlagPolicy(), since=NOW - 86_400)
        assert {c.account_id for c in caught} == members  # enforcing now: the shadow-mode members are flagged
    finally:
        shadow.repository.engine.dispose()


def test_an_unrelated_group_later_is_a_group_of_its_own(process: _Process) -> None:
    rng = np.random.default_rng(8)
    ids = _accounts(process, _population(8))
    assert len(process.watch.scan(NOW)) == 1
    _accounts(process, {f"other#{k}": _state(rng, 15, _shift(5, -2.5)) for k in range(8)})
    assert len(process.watch.scan(NOW + 60)) == 1
    assert _count(process, models.alerts) == 2 and _count(process, models.account_groups) == 2
    assert ids  # (the first population's accounts exist)


def test_the_apps_client_id_reaches_the_state_hashed_and_a_failing_one_is_counted(make_guarded: Any) -> None:
    from flask_modelguard.runtime import state_of

    g = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_CLIENT_ID=lambda request: request.headers.get("X-Client"))
    name, key = g.account()
    for i in range(3):
        assert g.predict(key, {"features": [i, 2, 3]}, **{"X-Client": "203.0.113.7"}).status_code == 200
    state = state_of(g.app)
    g.guard.flush(g.app)
    stored = state.repository.load_state(state.repository.get_account(name)["id"])
    assert stored is not None and len(stored["clients"]) == 1
    assert "203.0.113.7" not in str(stored) and "203.0.113.7" not in str(g.rows(name))
    failing = make_guarded(MODELGUARD_CLIENT_ID=lambda request: 1 / 0)
    _, other = failing.account()
    assert failing.predict(other).status_code == 200
    assert state_of(failing.app).stats()["client_id_errors"] == 1


def test_operators_list_groups_through_the_admin_api_and_the_cli(make_guarded: Any) -> None:
    from flask_modelguard.cli import modelguard_cli
    from flask_modelguard.runtime import state_of

    g = make_guarded()
    repository = state_of(g.app).repository
    ids = [repository.create_account(f"part-{k}", "free")["id"] for k in range(3)]
    evaluations = {a: {"account_id": a, "ts": NOW, "queries": 15, "scores": {"malicious": 0.9},
                       "reasons": ["colluding group of 3 accounts: test"]} for a in ids}
    record = {"queries": 45, "ratio": 1.8, "z": 40.0, "reason": "colluding group of 3 accounts: test"}
    catches = repository.record_group(record, evaluations, FlagPolicy())
    assert len(catches) == 3
    with g.app.app_context():
        token = state_of(g.app).admin.create_token("ops")
    response = g.client.get("/modelguard/api/groups", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200 and response.json["total"] == 1
    item = response.json["items"][0]
    assert item["accounts"] == ["part-0", "part-1", "part-2"] and item["members"] == ids and item["action"] == "degrade"
    assert g.client.get("/modelguard/api/groups").status_code == 401
    out = g.app.test_cli_runner().invoke(modelguard_cli, ["groups"])
    assert out.exit_code == 0 and "3 accounts degrade" in out.stdout and "part-0, part-1, part-2" in out.stdout
