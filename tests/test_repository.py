"""The repository on real databases (a SQLite file, PostgreSQL): what it
writes is what it reads back. Accounts, keys and their look-up, query events
with their watermark records and evaluations, the account states merged by
several processes (exactly: no delta lost, none twice), the reference and
training rows, canaries."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine

from flask_modelguard.exc import AlreadyExists, InvalidValue, NotFound
from flask_modelguard.keys import hash_secret, parse_key
from flask_modelguard.repository import Repository

from .conftest import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _repository(url: str, clock: Any) -> Repository:
    return Repository(create_engine(url), clock=clock)


@pytest.fixture
def repo(db_url: str, clock: FakeClock) -> Iterator[Repository]:
    repository = _repository(db_url, clock)
    repository.create_all()
    yield repository
    repository.engine.dispose()


def _event(account_id: int, key_id: int, ts: float, **values: Any) -> dict[str, Any]:
    row = {"account_id": account_id, "key_id": key_id, "route": "predict", "ts": ts, "status": 200,
           "latency_ms": 1.5, "n_instances": 1, "fingerprint": None, "labels": None, "top_confidences": None,
           "input": None, "canary": False, "watermarks": [], "evaluation": None}
    row.update(values)
    return row


def _as_utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


# -- accounts ----------------------------------------------------------------------


def test_accounts_are_created_read_listed_and_updated(repo: Repository, clock: FakeClock) -> None:
    created = repo.create_account("beta", "pro", limits="5/second")
    assert {k: created[k] for k in ("name", "tier", "status", "limits", "flagged", "score", "allowlisted",
                                    "reviewed_queries")} == {
        "name": "beta", "tier": "pro", "status": "active", "limits": "5/second", "flagged": False, "score": 0.0,
        "allowlisted": False, "reviewed_queries": 0}
    assert _as_utc(created["created_at"]).timestamp() == pytest.approx(clock.now)
    assert repo.get_account("beta") == created
    assert repo.account_name(created["id"]) == "beta"
    assert repo.account_name(created["id"] + 1000) is None
    repo.create_account("alpha", "free")
    with pytest.raises(AlreadyExists, match="already exists"):
        repo.create_account("beta", "free")
    with pytest.raises(NotFound):
        repo.get_account("nobody")

    clock.now += 60
    updated = repo.update_account("beta", status="suspended", tier="free", limits=None)
    assert (updated["status"], updated["tier"], updated["limits"]) == ("suspended", "free", None)
    assert _as_utc(updated["updated_at"]).timestamp() == pytest.approx(clock.now)
    assert _as_utc(updated["created_at"]) == _as_utc(created["created_at"])
    with pytest.raises(InvalidValue, match="Status must be one of"):
        repo.update_account("beta", status="deleted")
    with pytest.raises(NotFound):
        repo.update_account("nobody", tier="pro")

    listed = repo.list_accounts()
    assert [a["name"] for a in listed] == ["alpha", "beta"]  # by name
    assert [a["active_keys"] for a in listed] == [0, 0]
    assert [a["name"] for a in repo.list_accounts(status="suspended")] == ["beta"]
    assert repo.list_accounts(status="blocked") == []


# -- keys --------------------------------------------------------------------------


def test_keys_are_issued_looked_up_rotated_and_revoked(repo: Repository, clock: FakeClock) -> None:
    account = repo.create_account("holder", "pro", limits="9/second")
    new, row = repo.issue_key("holder")
    parsed = parse_key(new.token)
    assert parsed.prefix == new.prefix == row["prefix"] and row["account"] == "holder"
    assert new.secret_hash == hash_secret(parsed.prefix, parsed.secret)  # only the digest is stored
    assert row["revoked_at"] is None and row["expires_at"] is None
    assert repo.get_key(new.prefix) == row
    with pytest.raises(NotFound):
        repo.get_key("0123456789")
    with pytest.raises(NotFound):
        repo.issue_key("nobody")

    principal = repo.lookup(new.prefix)
    assert principal is not None
    assert (principal.key_id, principal.prefix, principal.secret_hash, principal.account_id, principal.account,
            principal.tier, principal.status, principal.limits, principal.flagged, principal.score,
            principal.revoked, principal.expires_at) == (
        row["id"], new.prefix, new.secret_hash, account["id"], "holder", "pro", "active", "9/second", False, 0.0,
        False, None)
    assert repo.lookup("0123456789") is None
    repo.update_account("holder", status="blocked", flagged=True, score=0.75)
    principal = repo.lookup(new.prefix)
    assert principal is not None and (principal.status, principal.flagged, principal.score) == ("blocked", True, 0.75)

    # rotation: a new key now, the old one expires after the grace period
    clock.now += 10
    rotated, rotated_row = repo.rotate_key(new.prefix, grace=3600)
    assert rotated.prefix != new.prefix and rotated_row["account"] == "holder"
    old = repo.lookup(new.prefix)
    assert old is not None and old.expires_at == pytest.approx(clock.now + 3600) and not old.revoked
    clock.now += 10
    repo.rotate_key(new.prefix, grace=7200)  # a longer grace never extends the first
    old = repo.lookup(new.prefix)
    assert old is not None and old.expires_at == pytest.approx(clock.now - 10 + 3600)
    repo.rotate_key(new.prefix, grace=5)  # a shorter one takes over
    old = repo.lookup(new.prefix)
    assert old is not None and old.expires_at == pytest.approx(clock.now + 5)

    revoked = repo.revoke_key(rotated.prefix)
    assert _as_utc(revoked["revoked_at"]).timestamp() == pytest.approx(clock.now)
    revoked_principal = repo.lookup(rotated.prefix)
    assert revoked_principal is not None and revoked_principal.revoked
    with pytest.raises(InvalidValue, match="already revoked"):
        repo.revoke_key(rotated.prefix)
    with pytest.raises(InvalidValue, match="revoked"):
        repo.rotate_key(rotated.prefix, grace=1)
    with pytest.raises(NotFound):
        repo.revoke_key("0123456789")

    keys = repo.list_keys("holder")
    assert len(keys) == 4 and keys[0]["prefix"] == new.prefix  # oldest first
    assert set(keys[0]) == {"prefix", "created_at", "expires_at", "revoked_at"}  # never the digest
    assert repo.account_prefixes("holder") == [k["prefix"] for k in keys]
    assert [k["revoked_at"] is not None for k in keys] == [False, True, False, False]
    assert {a["name"]: a["active_keys"] for a in repo.list_accounts()} == {"holder": 3}


# -- query events --------------------------------------------------------------------


def test_events_watermarks_and_evaluations_are_read_back(repo: Repository) -> None:
    a = repo.create_account("a", "pro")["id"]
    b = repo.create_account("b", "pro")["id"]
    key = repo.issue_key("a")[1]["id"]
    mark = {"account_id": a, "route": "predict", "ts": 2.0, "fingerprint": "f" * 32, "input": [1.0, 2.5],
            "served_label": 3, "model_label": 1, "n_classes": 10}
    evaluation = {"account_id": a, "ts": 3.0, "queries": 3, "scores": {"malicious": 0.25, "add": None},
                  "reasons": []}
    rows = [
        _event(a, key, 3.0, labels=["cat"], top_confidences=[0.5], evaluation=evaluation),
        _event(a, key, 1.0, fingerprint="0" * 32, labels=[1, 2], top_confidences=[0.9, 0.8], n_instances=2,
               input={"features": [1, 2]}),
        _event(a, key, 2.0, status=429, latency_ms=0.25, canary=True, watermarks=[mark, {**mark, "ts": 2.5}]),
        _event(b, key, 1.5, route="other"),
    ]
    repo.insert_events(rows)
    repo.insert_events([])

    got = list(repo.events(a))
    assert [r["ts"] for r in got] == [1.0, 2.0, 3.0]  # by time
    columns = ("account_id", "key_id", "route", "ts", "status", "latency_ms", "n_instances", "fingerprint",
               "labels", "top_confidences", "input", "canary")
    assert [{c: r[c] for c in columns} for r in got] == [{c: rows[i][c] for c in columns} for i in (1, 2, 0)]
    assert [r["route"] for r in repo.events(b)] == ["other"]
    assert repo.count_events() == 4 and repo.count_events(a) == 3 and repo.count_events(b + 100) == 0

    # one watermark record per distinct input, oldest first
    records = repo.watermark_records("a")
    assert len(records) == 1
    assert {k: records[0][k] for k in mark} == mark
    assert repo.watermark_records("a", limit=1) == records and repo.watermark_records("b") == []
    assert repo.accounts_with_watermarks() == ["a"]

    # evaluations: the score history, and the latest malicious score on the account
    history = repo.score_history("a")
    assert [{k: h[k] for k in evaluation} for h in history] == [evaluation]
    assert repo.get_account("a")["score"] == 0.25
    later = {**evaluation, "ts": 9.0, "queries": 9, "scores": {"malicious": 0.5}, "reasons": ["x"]}
    repo.insert_events([_event(a, key, 9.0, evaluation=later), _event(a, key, 9.5, evaluation={
        **later, "ts": 9.5, "scores": {"malicious": 0.125}})])
    assert repo.get_account("a")["score"] == 0.125  # the batch's last evaluation
    assert [h["ts"] for h in repo.score_history("a")] == [3.0, 9.0, 9.5]
    assert repo.score_history("b") == []


def test_canaries_are_added_once(repo: Repository) -> None:
    assert repo.canary_fingerprints() == frozenset()
    assert repo.add_canaries(["a" * 32, "b" * 32, "a" * 32], note="honey") == 2
    assert repo.add_canaries(["b" * 32, "c" * 32]) == 1
    assert repo.add_canaries([]) == 0
    assert repo.canary_fingerprints() == frozenset({"a" * 32, "b" * 32, "c" * 32})


# -- account states ------------------------------------------------------------------


def test_states_are_stored_merged_and_read_back(repo: Repository) -> None:
    ids = [repo.create_account(f"s{i}", "pro")["id"] for i in range(3)]
    assert repo.load_state(ids[0]) is None
    seen: list[Any] = []

    def first(stored: Any) -> dict[str, Any]:
        seen.append(stored)
        return {"queries": 5, "nested": {"x": [1.5, None]}}

    assert repo.merge_state(ids[0], first) == {"queries": 5, "nested": {"x": [1.5, None]}}
    assert seen == [None]
    assert repo.load_state(ids[0]) == {"queries": 5, "nested": {"x": [1.5, None]}}
    merged = repo.merge_states({i: (lambda s: {"queries": (s or {"queries": 0})["queries"] + 2}) for i in ids})
    assert merged == {ids[0]: {"queries": 7}, ids[1]: {"queries": 2}, ids[2]: {"queries": 2}}
    assert [repo.load_state(i) for i in ids] == [{"queries": 7}, {"queries": 2}, {"queries": 2}]

    # benign states: active, unflagged, with enough queries
    repo.update_account("s1", flagged=True)
    assert sorted(s["queries"] for s in repo.benign_states()) == [2, 7]
    assert [s["queries"] for s in repo.benign_states(min_queries=3)] == [7]
    repo.update_account("s0", status="suspended")
    assert [s["queries"] for s in repo.benign_states()] == [2]


def test_a_failing_merge_writes_no_account(repo: Repository) -> None:
    ids = [repo.create_account(f"f{i}", "pro")["id"] for i in range(2)]
    repo.merge_state(ids[0], lambda s: {"queries": 1})

    def broken(stored: Any) -> dict[str, Any]:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        repo.merge_states({ids[0]: lambda s: {"queries": 100}, ids[1]: broken})
    assert repo.load_state(ids[0]) == {"queries": 1} and repo.load_state(ids[1]) is None  # one transaction


def test_concurrent_merges_from_several_processes_lose_no_delta(db_url: str, repo: Repository) -> None:
    """Four repositories (each with its own engine: four processes' worth) merge
    +1 into the same accounts, 15 times each, at the same time, the accounts
    given in different orders: every delta is counted exactly once, and no
    merge deadlocks or fails."""
    # (On SQLite, pysqlite would open the transaction only at the first write,
    # after the SELECT: BEGIN IMMEDIATE takes the write lock before the read.)
    ids = [repo.create_account(f"c{i}", "pro")["id"] for i in range(4)]
    processes, rounds = 4, 15
    errors: list[BaseException] = []
    barrier = threading.Barrier(processes)

    def add(stored: Any) -> dict[str, Any]:
        return {"queries": (stored or {"queries": 0})["queries"] + 1}

    def process(k: int) -> None:
        other = _repository(db_url, repo.clock)
        try:
            barrier.wait(10)
            for r in range(rounds):
                order = ids[k % len(ids):] + ids[:k % len(ids)]
                other.merge_states({i: add for i in (order if r % 2 else order[::-1])})
        except BaseException as exc:  # handed to the test
            errors.append(exc)
        finally:
            other.engine.dispose()

    threads = [threading.Thread(target=process, args=(k,)) for k in range(processes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert [repo.load_state(i) for i in ids] == [{"queries": processes * rounds}] * len(ids)


def _merge_rounds(url: str, ids: list[int], k: int, rounds: int, start: Any) -> None:
    """One process's merges: +(k + 1) into each account, ``rounds`` times."""
    other = _repository(url, FakeClock())
    start.wait(60)

    def add(stored: Any) -> dict[str, Any]:
        return {"queries": (stored or {"queries": 0})["queries"] + k + 1}

    try:
        for r in range(rounds):
            order = ids[k % len(ids):] + ids[:k % len(ids)]
            other.merge_states({i: add for i in (order if r % 2 else order[::-1])})
    finally:
        other.engine.dispose()


def test_four_processes_merging_fifty_rounds_lose_no_delta(db_url: str, repo: Repository) -> None:
    """Issue #16's exactness test, with real processes: 4 × 50 rounds × 3 accounts,
    each process adding its own amount; the stored counts are the sums."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # fresh interpreters: no lock inherited from this one
    ids = [repo.create_account(f"p{i}", "pro")["id"] for i in range(3)]
    processes, rounds = 4, 50
    start = context.Event()
    children = [context.Process(target=_merge_rounds, args=(db_url, ids, k, rounds, start), daemon=True)
                for k in range(processes)]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(180)
    for child in children:
        if child.is_alive():  # never left behind to hang the run
            child.kill()
    assert [child.exitcode for child in children] == [0] * processes
    expected = rounds * sum(k + 1 for k in range(processes))
    assert [repo.load_state(i) for i in ids] == [{"queries": expected}] * len(ids)


def test_purging_deletes_old_events_in_batches_and_keeps_the_evidence(repo: Repository) -> None:
    a = repo.create_account("old", "pro")["id"]
    mark = {"account_id": a, "route": "predict", "ts": 1.0, "fingerprint": "f" * 32, "input": [1],
            "served_label": 3, "model_label": 2, "n_classes": 10}
    evaluation = {"account_id": a, "ts": 1.0, "queries": 20, "scores": {"malicious": 0.7}, "reasons": []}
    repo.insert_events([_event(a, 1, 1.0, watermarks=[mark], evaluation=evaluation)]
                       + [_event(a, 1, float(t)) for t in range(2, 26)])
    assert repo.purge_events(before=21.0, batch=7) == 20  # ts 1 ... 20, in three batches of 7 and one of 0
    assert sorted(e["ts"] for e in repo.events(a)) == [float(t) for t in range(21, 26)]
    assert len(repo.watermark_records("old")) == 1 and len(repo.score_history("old")) == 1
    assert repo.purge_events(before=21.0) == 0


# -- reference and training ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["reference", "training"])
def test_the_reference_and_the_training_set_are_one_row_each(repo: Repository, clock: FakeClock, kind: str) -> None:
    save, load, version = (getattr(repo, f"save_{kind}"), getattr(repo, f"load_{kind}"),
                           getattr(repo, f"{kind}_version"))
    assert load() is None and version() is None
    first = {"classes": {"1": {"n": 3, "mean": [0.5, 1.25]}}, "thresholds": [[20, 5.0]], "space": "s"}
    save(first)
    assert load() == first
    stamp = version()
    assert _as_utc(stamp).timestamp() == pytest.approx(clock.now)
    clock.now += 30
    second = {"rows": [[1.0, None], [2.0, 3.5]], "labels": [0, 1], "groups": ["a", "b"]}
    save(second)  # replaces the first
    assert load() == second and version() != stamp
    assert _as_utc(version()).timestamp() == pytest.approx(clock.now)
    other = "training" if kind == "reference" else "reference"
    assert getattr(repo, f"load_{other}")() is None  # separate rows


def test_ping_and_file_checks(repo: Repository, db_url: str, tmp_path: Any) -> None:
    assert repo.ping() and repo.file_problem() is None
    if not db_url.startswith("sqlite"):
        return
    path = db_url.removeprefix("sqlite:///")
    moved = tmp_path / "moved.db"
    import os

    os.replace(path, moved)
    assert "is gone" in (repo.file_problem() or "")
    repo.engine.dispose()
    _repository(db_url, repo.clock).create_all()  # a new file at the same path
    assert "was replaced by another file" in (repo.file_problem() or "")
