"""persistence.py: account deltas merged into storage without holding the
monitor's lock across a database round trip, still counted by the detectors
while in flight, and kept for the next merge when one fails."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from flask_modelguard import ModelGuard
from flask_modelguard.state import AccountState
from tests.conftest import Guarded


def _served(make_guarded: Callable[..., Guarded], n: int) -> tuple[Guarded, int]:
    """An account with ``n`` queries in memory, none merged yet."""
    guarded = make_guarded(MODELGUARD_DETECTION=True)
    state = ModelGuard.state(guarded.app)
    state.worker.on_tick = None  # its schedule would merge at a moment of its own
    name, key = guarded.account(limits="100000/minute")
    rng = np.random.default_rng(1)
    for _ in range(n):
        assert guarded.predict(key, {"features": rng.uniform(0, 16, 8).round(2).tolist()}).status_code == 200
    state.worker.flush()
    return guarded, state.repository.get_account(name)["id"]


def _stored_queries(guarded: Guarded, account_id: int) -> int:
    data = ModelGuard.state(guarded.app).repository.load_state(account_id)
    return 0 if data is None else AccountState.from_dict(data).queries


def test_the_merge_runs_outside_the_lock_and_the_detectors_still_count_it(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    guarded, account_id = _served(make_guarded, 25)
    state = ModelGuard.state(guarded.app)
    seen: list[tuple[bool, int]] = []
    real = state.repository.merge_states

    def merge_states(merges: Any) -> Any:
        seen.append((state.monitor.lock.locked(), state.monitor.accounts[account_id].queries))
        return real(merges)

    monkeypatch.setattr(state.repository, "merge_states", merge_states)
    assert state.persist_states() == 1
    assert seen == [(False, 25)]  # not under the lock; the in-flight delta still counted
    assert _stored_queries(guarded, account_id) == 25
    assert state.monitor.accounts[account_id].queries == 25  # merged once, not counted twice


def test_a_failed_merge_keeps_every_delta_for_the_next_one(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    guarded, account_id = _served(make_guarded, 20)
    state = ModelGuard.state(guarded.app)
    real = state.repository.merge_states

    def down(merges: Any) -> Any:
        raise OperationalError("merge", {}, Exception("database away"))

    monkeypatch.setattr(state.repository, "merge_states", down)
    with pytest.raises(OperationalError):
        state.persist_states()
    assert state.monitor.accounts[account_id].queries == 20
    monkeypatch.setattr(state.repository, "merge_states", real)
    assert state.persist_states() == 1
    assert _stored_queries(guarded, account_id) == 20
    assert state.persist_states() == 0  # nothing left over to merge twice


def test_the_stored_state_is_read_outside_the_lock(
        make_guarded: Callable[..., Guarded], monkeypatch: pytest.MonkeyPatch) -> None:
    guarded, _ = _served(make_guarded, 15)
    state = ModelGuard.state(guarded.app)
    locked: list[bool] = []
    real = state.monitor.loader
    assert real is not None

    def load(account: int) -> Any:
        locked.append(state.monitor.lock.locked())
        return real(account)

    state.monitor.loader = load
    key = guarded.account()[1]  # an account not in memory: its stored state is read
    guarded.predict(key, {"features": [1.0] * 8})
    state.worker.flush()
    assert locked and not any(locked)


def test_a_forked_child_gets_a_merge_lock_of_its_own(make_guarded: Callable[..., Guarded]) -> None:
    """(The fork itself is tested in test_lifecycle.py, in a fresh interpreter.)"""
    states = ModelGuard.state(make_guarded().app).states
    held = states._persisting
    with held:  # the parent's worker in the middle of a merge at the fork
        states.reset_in_child()  # what the fork hook runs in the child
        assert states._persisting is not held and states._persisting.acquire(timeout=1)
    states._persisting.release()


def test_evicted_deltas_are_merged_early_not_piled_up(make_guarded: Callable[..., Guarded],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """More active accounts than MODELGUARD_MAX_ACCOUNTS: the deltas of those
    evicted from memory are merged once a few wait, and nothing is lost."""
    from flask_modelguard import runtime

    monkeypatch.setattr(runtime, "EARLY_MERGE", 3)
    guarded = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_MAX_ACCOUNTS=2, MODELGUARD_BATCH_SIZE=1)
    state = ModelGuard.state(guarded.app)
    state.worker.on_tick = None  # no scheduled merge: only the early ones
    accounts = [guarded.account(limits="1000/minute") for _ in range(8)]
    most = 0
    for round_ in range(3):
        for _, key in accounts:
            assert guarded.predict(key, {"features": [float(round_)] * 8}).status_code == 200
            state.worker.flush()
            most = max(most, len(state.monitor.evicted))
    assert most <= 3  # bounded by the early merge
    state.persist_states()
    ids = [state.repository.get_account(name)["id"] for name, _ in accounts]
    assert [_stored_queries(guarded, i) for i in ids] == [3] * 8  # every query merged exactly once


def test_the_scheduled_merge_leaves_a_quiet_account_for_later_and_takes_a_busy_one(
        make_guarded: Callable[..., Guarded]) -> None:
    """Each merge reads, merges and writes a whole state: with many quiet accounts
    the schedule takes a delta once it holds MERGE_QUERIES queries or is
    MERGE_AGE old; a flush takes every delta."""
    from flask_modelguard.persistence import MERGE_AGE, MERGE_QUERIES

    guarded, busy = _served(make_guarded, MERGE_QUERIES)
    state = ModelGuard.state(guarded.app)
    quiet_name, quiet_key = guarded.account(limits="100000/minute")
    assert guarded.predict(quiet_key, {"features": [1.0] * 8}).status_code == 200
    state.worker.flush()
    quiet = state.repository.get_account(quiet_name)["id"]
    first = state.monitor.accounts[quiet].delta.first_ts  # type: ignore[union-attr]
    assert state.states.persist(now=first + 1) == 1
    assert (_stored_queries(guarded, busy), _stored_queries(guarded, quiet)) == (MERGE_QUERIES, 0)
    assert state.states.persist(now=first + MERGE_AGE + 1) == 1  # old enough now
    assert _stored_queries(guarded, quiet) == 1
