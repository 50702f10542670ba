"""changes.py: a flag, a block or a revocation made by one process takes effect
in the others within a second (the key cache's TTL is 30 s here), on SQLite
and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flask_modelguard import ModelGuard
from flask_modelguard.changes import POLL_EVERY
from flask_modelguard.keys import parse_key
from tests.conftest import Guarded


def _pair(make_guarded: Callable[..., Guarded]) -> tuple[Guarded, Guarded]:
    """Two apps (two processes' worth) on one database, real clocks."""
    a = make_guarded(clock=time.time, MODELGUARD_KEY_CACHE_TTL=30.0)
    b = make_guarded(clock=time.time, MODELGUARD_KEY_CACHE_TTL=30.0,
                     MODELGUARD_DATABASE_URL=a.app.config["MODELGUARD_DATABASE_URL"],
                     MODELGUARD_NAMESPACE=a.app.config["MODELGUARD_NAMESPACE"])
    return a, b


def _until(status: int, guarded: Guarded, key: str, limit: float = 3.0) -> float:
    """Seconds until ``guarded`` answers ``key`` with ``status``."""
    began = time.monotonic()
    while time.monotonic() - began < limit:
        if guarded.predict(key).status_code == status:
            took = time.monotonic() - began
            print(f"took effect after {took:.3f} s")
            return took
        time.sleep(0.02)
    raise AssertionError(f"still not {status} after {limit} s")  # pragma: no cover


def test_a_block_by_one_process_is_enforced_by_another_within_a_second(
        make_guarded: Callable[..., Guarded]) -> None:
    a, b = _pair(make_guarded)
    name, key = a.account()
    assert b.predict(key).status_code == 200  # b caches the key for 30 s
    with a.app.app_context():
        a.guard.update_account(name, status="blocked")
    assert _until(403, b, key) <= 1.0
    with a.app.app_context():
        a.guard.update_account(name, status="active")
    assert _until(200, b, key) <= 1.0


def test_a_revocation_and_a_detector_flag_reach_the_other_process(
        make_guarded: Callable[..., Guarded]) -> None:
    a, b = _pair(make_guarded)
    name, key = a.account()
    other_name, other_key = a.account()
    assert b.predict(key).status_code == 200 and b.predict(other_key).status_code == 200
    assert a.predict(other_key).status_code == 200
    with a.app.app_context():
        a.guard.revoke_key(parse_key(key).prefix)
    assert _until(403, b, key) <= 1.0
    state_a, state_b = ModelGuard.state(a.app), ModelGuard.state(b.app)
    account_id = state_a.repository.get_account(other_name)["id"]
    row: dict[str, Any] = dict(a.rows(other_name)[0])  # one of its events, with a verdict, written by a's worker
    row.pop("id")
    row["evaluation"] = {"account_id": account_id, "ts": row["ts"], "queries": 50, "scores": {"malicious": 0.9},
                         "reasons": ["ADD 30.0 > 20.0 at 50 distinct queries"]}
    state_a.pipeline.write([row])
    began = time.monotonic()
    while not state_b.auth.lookup(parse_key(other_key).prefix).flagged:  # type: ignore[union-attr]
        assert time.monotonic() - began <= 1.0 + POLL_EVERY
        time.sleep(0.02)
    assert state_b.changes.applied >= 2


def test_while_the_feed_is_read_a_cached_key_outlives_its_ttl_and_still_obeys_a_block(
        make_guarded: Callable[..., Guarded]) -> None:
    """No database read per request for a key used less often than the TTL
    (100,000 accounts each calling once a minute), and no stale answer either."""
    a = make_guarded(clock=time.time, MODELGUARD_KEY_CACHE_TTL=1.0)
    b = make_guarded(clock=time.time, MODELGUARD_KEY_CACHE_TTL=1.0,
                     MODELGUARD_DATABASE_URL=a.app.config["MODELGUARD_DATABASE_URL"],
                     MODELGUARD_NAMESPACE=a.app.config["MODELGUARD_NAMESPACE"])
    name, key = a.account()
    state_b = ModelGuard.state(b.app)
    reads: list[str] = []
    lookup = state_b.repository.lookup
    state_b.repository.lookup = lambda prefix: reads.append(prefix) or lookup(prefix)  # type: ignore[method-assign]
    assert b.predict(key).status_code == 200 and len(reads) == 1
    time.sleep(2.5)  # past the TTL; b's worker reads the feed twice a second meanwhile
    assert b.predict(key).status_code == 200 and len(reads) == 1
    with a.app.app_context():
        a.guard.update_account(name, status="blocked")
    assert _until(403, b, key) <= 1.0


class _Feed:
    """A repository whose feed rows appear when the test says (commits out of id order)."""

    def __init__(self) -> None:
        self.visible: list[tuple[int, int | None, str | None]] = []
        self.asked: list[tuple[int, ...]] = []

    def changes_since(self, last: int | None, also: tuple[int, ...] = ()) -> list[tuple[int, int | None, str | None]]:
        self.asked.append(also)
        if last is None:
            return [max(self.visible, default=(0, None, None))] if self.visible else []
        return [r for r in self.visible if r[0] > last or r[0] in also]


def test_an_id_committed_after_a_higher_one_was_read_is_still_applied(monkeypatch: Any) -> None:
    import flask_modelguard.changes as changes

    repository = _Feed()
    forgotten: list[int | None] = []
    feed = changes.ChangeFeed(repository, lambda account, prefix: forgotten.append(account))  # type: ignore[arg-type]
    repository.visible = [(4, 40, None), (5, 50, None)]  # 1-3 rolled back long ago
    feed.poll()  # the first read looks back: an id below the newest may still be committing
    assert forgotten == [40, 50]
    repository.visible += [(6, 60, None), (8, 80, None)]  # 7 is still committing
    assert feed.poll() == 2 and forgotten == [40, 50, 60, 80]
    repository.visible.append((7, 70, None))
    assert feed.poll() == 1 and forgotten[-1] == 70 and 7 in repository.asked[-1]
    assert feed.poll() == 0 and 7 not in repository.asked[-1]  # found: not asked for again
    repository.visible.append((10, 100, None))  # 9 rolled back: never appears
    feed.poll()
    clock = [time.monotonic() + changes.GAP_WAIT + 1]
    monkeypatch.setattr(changes.time, "monotonic", lambda: clock[0])
    feed.poll()
    assert 9 in repository.asked[-1] and feed.poll() == 0 and repository.asked[-1] == ()  # given up


def test_a_change_whose_transaction_commits_late_reaches_the_cache(postgres_url: str) -> None:
    """On PostgreSQL ids are drawn at insert, not at commit: a revocation whose
    transaction commits after a later change was read is applied all the same."""
    from sqlalchemy import create_engine

    from flask_modelguard import models
    from flask_modelguard.changes import ChangeFeed
    from flask_modelguard.repository import Repository

    engine = create_engine(postgres_url)
    models.metadata.create_all(engine)
    repository = Repository(engine, clock=time.time)
    forgotten: list[str | None] = []
    feed = ChangeFeed(repository, lambda account, prefix: forgotten.append(prefix))
    feed.poll()
    slow = engine.connect()
    try:
        late = slow.begin()
        repository.record_changes(slow, [], ["late"])  # takes the lower id, not committed yet
        with engine.begin() as conn:
            repository.record_changes(conn, [], ["early"])
        feed.poll()
        assert forgotten == ["early"]
        late.commit()
        feed.poll()
        assert forgotten == ["early", "late"]
    finally:
        slow.close()
        models.metadata.drop_all(engine)
        engine.dispose()


def test_a_score_that_moves_reaches_the_other_process(make_guarded: Callable[..., Guarded]) -> None:
    """The cached score sets how hard deception bites: a move of SCORE_BAND
    (no flag) is a change too."""
    a, b = _pair(make_guarded)
    name, key = a.account()
    assert b.predict(key).status_code == 200 and a.predict(key).status_code == 200
    state_a, state_b = ModelGuard.state(a.app), ModelGuard.state(b.app)
    account_id = state_a.repository.get_account(name)["id"]
    row: dict[str, Any] = dict(a.rows(name)[0])
    row.pop("id")
    row["evaluation"] = {"account_id": account_id, "ts": row["ts"], "queries": 30, "scores": {"malicious": 0.3},
                         "reasons": []}
    state_a.pipeline.write([row])
    began = time.monotonic()
    while state_b.auth.lookup(parse_key(key).prefix).score != 0.3:  # type: ignore[union-attr]
        assert time.monotonic() - began <= 1.0 + POLL_EVERY
        time.sleep(0.02)


def test_the_purge_keeps_the_newest_row_so_ids_never_go_back(make_guarded: Callable[..., Guarded]) -> None:
    """SQLite hands out max(id) + 1: an emptied feed would reuse ids readers have passed."""
    a = make_guarded()
    repository = ModelGuard.state(a.app).repository
    with repository.engine.begin() as conn:
        repository.record_changes(conn, [1, 2, 3])
    newest = repository.changes_since(None)[0][0]
    assert repository.purge_changes(before=float("inf")) == 2
    with repository.engine.begin() as conn:
        repository.record_changes(conn, [4])
    assert [r[0] for r in repository.changes_since(newest)] == [newest + 1]
