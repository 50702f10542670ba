"""runtime.py: one app's parts wired together, found with ``state_of``, and the
worker's tick doing each part's periodic job."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from flask_modelguard import ModelGuard
from flask_modelguard.runtime import state_of
from flask_modelguard.state import AccountState
from tests.conftest import Guarded


def test_state_of_an_app_without_the_guard_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match=r"call ModelGuard\(app\) or guard.init_app\(app\)"):
        state_of(Flask("bare"))


def test_the_parts_are_wired_to_each_other(guarded: Guarded) -> None:
    state = ModelGuard.state(guarded.app)
    assert state_of(guarded.app) is state
    assert state.monitor.loader == state.states.load  # the detectors read stored states through persistence
    assert state.pipeline.monitor is state.monitor and state.training.monitor is state.monitor
    assert state.serving.worker is state.worker and state.serving.protector is state.protector
    _, key = guarded.account()
    assert guarded.predict(key).status_code == 200
    guarded.guard.flush(guarded.app)
    stats = guarded.guard.stats(guarded.app)
    assert stats["written"] == 1 and stats["dropped"] == 0 and stats["failed_open"] == 0
    assert {"detection_errors", "detection_skipped", "states_lost", "answers_unprotected", "accounts"} <= set(stats)


def test_the_tick_writes_what_an_earlier_process_spilled_and_merges_its_states(
        make_guarded: Callable[..., Guarded], tmp_path: Any) -> None:
    guarded = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_SPILL=str(tmp_path / "spill"))
    state = ModelGuard.state(guarded.app)
    state.worker.on_tick = None  # the test ticks; the worker's own first tick would race it
    name, key = guarded.account()
    assert guarded.predict(key).status_code == 200
    guarded.guard.flush(guarded.app)
    account_id = state.repository.get_account(name)["id"]
    row = dict(guarded.rows(name)[0])
    row.pop("id")
    delta = AccountState(state.settings.feature_dim, space=state.space.name)
    delta.queries = 5
    assert state.spill is not None
    state.spill.write([row], kind="events")  # as a process that could not reach the database at exit
    state.spill.write([{"account_id": account_id, "state": delta.to_dict()}], kind="states")
    before = AccountState.from_dict(state.repository.load_state(account_id) or delta.to_dict()).queries
    state._tick()
    state.worker.flush()
    assert len(guarded.rows(name)) == 2 and not state.spill.waiting()
    assert AccountState.from_dict(state.repository.load_state(account_id) or {}).queries == before + 5


def test_the_tick_purges_events_older_than_the_retention(make_guarded: Callable[..., Guarded]) -> None:
    guarded = make_guarded(MODELGUARD_RETENTION=3600.0)
    state = ModelGuard.state(guarded.app)
    state.worker.on_tick = None  # the test ticks; the worker's own first tick would race it
    name, key = guarded.account()
    assert guarded.predict(key).status_code == 200
    guarded.guard.flush(guarded.app)
    state._tick()
    assert len(guarded.rows(name)) == 1  # not old yet
    guarded.clock.now += 7200
    state._next_purge = 0.0  # the hour between purges has passed
    state._tick()
    assert guarded.rows(name) == []
