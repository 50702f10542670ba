"""QuotaEnforcer on real storages, and what happens when the storage goes away."""

from __future__ import annotations

import os
import threading
import time
import uuid
from typing import Any

import pytest

from flask_modelguard import ModelGuard
from flask_modelguard.exc import InvalidValue
from flask_modelguard.limitset import limit_set, parse_limits
from flask_modelguard.quotas import QuotaEnforcer

from .conftest import model_app, problem_of
from .faults import ToggleProxy


def enforcer(uri: str, **kwargs) -> QuotaEnforcer:
    return QuotaEnforcer(uri, namespace=f"t-{uuid.uuid4().hex}", **kwargs)


def test_parse_limits_sorts_by_window_and_rejects_garbage():
    items = parse_limits("1000/hour;10/second,5/minute")
    assert [i.amount for i in items] == [10, 5, 1000]
    assert parse_limits("") == ()
    with pytest.raises(InvalidValue):
        parse_limits("ten per second")


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter", "moving-window"])
def test_hit_counts_cost_and_refuses_over_limit(storage_uri, strategy):
    e = enforcer(storage_uri, strategy=strategy)
    # Hour windows: the sliding counter weighs in the previous window, which
    # would make "remaining" inexact if the test straddled a boundary.
    limits = limit_set("5/hour;100/day")
    v = e.hit(1, limits, cost=3)
    assert v.allowed and v.remaining == 2 and v.limit.amount == 5
    refused = e.hit(1, limits, cost=3)
    assert not refused.allowed and refused.limit.amount == 5 and refused.remaining == 2
    # (limits' sliding-window counter on Redis may report the reset as "now"
    # right after a window is created; the guard's Retry-After is at least 1.)
    assert time.time() - 1 <= refused.reset <= time.time() + 3600 + 1
    v = e.hit(1, limits, cost=2)  # the refused request consumed nothing
    assert v.allowed and v.remaining == 0
    assert e.hit(2, limits).allowed  # accounts are counted apart
    e.reset_account(1, limits)
    assert e.hit(1, limits).remaining == 4


def test_unknown_strategy_and_fail_mode_are_rejected():
    with pytest.raises(InvalidValue):
        QuotaEnforcer("memory://", strategy="leaky")
    with pytest.raises(InvalidValue):
        QuotaEnforcer("memory://", fail_mode="sideways")


def test_redis_limits_are_shared_between_enforcers(redis_uri):
    """Two enforcers (two processes' worth) on one Redis count together."""
    namespace = f"t-{uuid.uuid4().hex}"
    a = QuotaEnforcer(redis_uri, namespace=namespace)
    b = QuotaEnforcer(redis_uri, namespace=namespace)
    limits = limit_set("4/minute")
    assert [a.hit(7, limits).allowed, b.hit(7, limits).allowed] == [True, True]
    assert b.hit(7, limits, cost=2).remaining == 0
    assert not a.hit(7, limits).allowed


@pytest.mark.parametrize("fail_mode, down_status", [("open", 200), ("closed", 503)])
def test_storage_down_fails_open_or_closed_and_recovers(redis_uri, tmp_path, fail_mode, down_status):
    proxy = ToggleProxy(("127.0.0.1", 6379))
    guard = ModelGuard()
    app = model_app(
        guard,
        MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/mg.db",
        MODELGUARD_STORAGE_URI=f"redis://127.0.0.1:{proxy.port}/0",
        MODELGUARD_STORAGE_OPTIONS={"socket_timeout": 0.5, "socket_connect_timeout": 0.5},
        MODELGUARD_FAIL_MODE=fail_mode,
        MODELGUARD_STORAGE_RETRY=0.3,
        MODELGUARD_NAMESPACE=f"t-{uuid.uuid4().hex}",
    )
    with app.app_context():
        guard.create_account("a", limits="100/minute")
        key = guard.issue_key("a")
    client = app.test_client()

    def call():
        return client.post("/predict", json={"features": [1]}, headers={"X-API-Key": key})

    assert call().status_code == 200
    proxy.down()
    r = call()
    assert r.status_code == down_status
    if fail_mode == "closed":
        assert problem_of(r)["type"].endswith("limits-storage-unavailable") and "Retry-After" in r.headers
    else:
        assert "RateLimit" not in r.headers
    assert call().status_code == down_status  # within the retry interval: storage not asked
    stats = guard.stats(app)
    assert stats["limits_storage_errors"] >= 2 and stats["limits_storage_down"]
    assert stats["failed_open"] == (2 if fail_mode == "open" else 0)
    proxy.up()
    time.sleep(0.4)
    r = call()
    assert r.status_code == 200 and r.headers["X-RateLimit-Limit"] == "100"
    assert not guard.stats(app)["limits_storage_down"]
    proxy.down()
    guard.close(app)


@pytest.mark.parametrize("strategy", ["fixed-window", "sliding-window-counter", "moving-window"])
def test_refusal_by_a_later_limit_consumes_nothing(storage_uri, strategy):
    e = enforcer(storage_uri, strategy=strategy)
    limits = limit_set("100/hour;2/day")
    assert [e.hit(1, limits).allowed for _ in range(3)] == [True, True, False]
    assert [count for _, count in e.usage(1, limits)] == [2, 2]  # the third request counted in neither


def test_unknown_tier_falls_back_to_the_default_tier():
    e = QuotaEnforcer("memory://", tiers={"a": "1/second", "b": "2/second"}, default_tier="b")
    assert e.limits_for("gone") is limit_set("2/second")
    assert limit_set("2/second").max_cost == 2 and limit_set("").max_cost is None
    with pytest.raises(InvalidValue):
        QuotaEnforcer("memory://", tiers={"a": "1/second"}, default_tier="zzz")


def _hammer(uri: str, namespace: str, seconds: float, out: Any) -> None:
    """Two threads hitting account 1's 20/second limit as fast as they can;
    every verdict (allowed, remaining, reset) goes to ``out``."""
    e = QuotaEnforcer(uri, namespace=namespace)
    limits = limit_set("20/second;1000000/day")
    verdicts: list[tuple[bool, int, float]] = []

    def run() -> None:
        end = time.time() + seconds
        while time.time() < end:
            cost = 1 + len(verdicts) % 3  # batches of 1 to 3 instances
            v = e.hit(1, limits, cost=cost)
            verdicts.append((v.allowed, v.remaining, v.reset, cost))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(verdicts)


def _windows(admitted: list[tuple[float, int]]) -> list[int]:
    """Instances admitted per window, windows told apart by their reset times
    (one window's resets agree to milliseconds; windows are a second apart)."""
    counts: list[int] = []
    last = None
    for reset, cost in sorted(admitted):
        if last is None or reset - last > 0.5:
            counts.append(0)
        counts[-1] += cost
        last = reset
    return counts


@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_fixed_window_is_exact_at_window_edges(backend, request):
    """4 processes × 2 threads on Redis (2 threads in one process on memory,
    which is per process) hammer a 20/second limit with batches of 1 to 3:
    no window admits more than 20 instances, no admitted answer says more
    than 19 remain, and the counters are never negative (a refund never
    leaks into the next window). 4 s here, 30 s with MODELGUARD_SLOW=1."""
    import multiprocessing

    uri = "memory://" if backend == "memory" else request.getfixturevalue("redis_uri")
    seconds = 30.0 if os.environ.get("MODELGUARD_SLOW") else 4.0
    namespace = f"t-{uuid.uuid4().hex}"
    ctx = multiprocessing.get_context("fork")
    queue: Any = ctx.Queue()
    workers = [ctx.Process(target=_hammer, args=(uri, namespace, seconds, queue)) for _ in range(4 if backend == "redis" else 1)]
    for w in workers:
        w.start()
    verdicts = [v for _ in workers for v in queue.get(timeout=seconds + 60)]
    for w in workers:
        w.join(timeout=30)
    admitted = [(reset, cost) for allowed, _, reset, cost in verdicts if allowed]
    refused = sum(1 for allowed, *_ in verdicts if not allowed)
    assert refused > 10 * len(admitted) / 20, "the limit was not under pressure"
    windows = _windows(admitted)
    assert len(windows) >= seconds - 1
    assert max(windows) <= 20, windows
    assert sum(windows[1:-1]) >= 0.9 * 20 * len(windows[1:-1]), windows  # full windows are (nearly) full
    assert max(remaining for allowed, remaining, _, _ in verdicts if allowed) <= 19
    assert min(remaining for _, remaining, _, _ in verdicts) >= 0


def test_memory_storage_under_several_processes_warns_once(make_guarded, caplog):
    g = make_guarded()
    _, key = g.account()
    caplog.set_level("WARNING", logger="flask_modelguard")
    for _ in range(3):
        r = g.client.post("/predict", json={"features": [1]}, headers={"X-API-Key": key},
                          environ_overrides={"wsgi.multiprocess": True})
        assert r.status_code == 200
    assert caplog.text.count("each process counts its own limits") == 1 and "redis://" in caplog.text
    single = make_guarded()
    _, key = single.account()
    caplog.clear()
    single.client.post("/predict", json={"features": [1]}, headers={"X-API-Key": key})
    assert "each process counts its own limits" not in caplog.text


@pytest.mark.parametrize("deduct_when", ["success", "always"])
def test_answers_the_view_refuses_give_their_cost_back(make_guarded, storage_uri, deduct_when):
    """A request the view answers with a 4xx (a malformed body) consumes
    nothing by default: the next valid ones get the whole limit."""
    from flask import request as flask_request

    from flask_modelguard import BadRequest

    g = make_guarded(MODELGUARD_STORAGE_URI=storage_uri, MODELGUARD_DEDUCT_WHEN=deduct_when)

    @g.app.post("/strict")
    @g.guard.protect
    def strict():
        if "features" not in (flask_request.get_json(silent=True) or {}):
            raise BadRequest("Send features.")
        return {"label": 1, "probabilities": [0.2, 0.8]}

    _, key = g.account(limits="3/minute")
    bad = [g.client.post("/strict", json={"nope": 1}, headers={"X-API-Key": key}).status_code for _ in range(5)]
    good = [g.client.post("/strict", json={"features": [1]}, headers={"X-API-Key": key}).status_code for _ in range(4)]
    if deduct_when == "success":
        assert bad == [400] * 5 and good == [200, 200, 200, 429]
    else:
        assert bad == [400, 400, 400, 429, 429] and good == [429] * 4


def test_a_route_can_have_limits_of_its_own_on_top_of_the_accounts(make_guarded, storage_uri):
    g = make_guarded(MODELGUARD_STORAGE_URI=storage_uri)

    @g.app.post("/costly")
    @g.guard.protect(limits="2/minute")
    def costly():
        return {"label": 1, "probabilities": [0.2, 0.8]}

    _, key = g.account(limits="5/minute")
    costly_answers = [g.client.post("/costly", json={"features": [1]}, headers={"X-API-Key": key}) for _ in range(3)]
    assert [r.status_code for r in costly_answers] == [200, 200, 429]
    assert costly_answers[1].headers["X-RateLimit-Limit"] == "2"  # the route's limit binds, so it is shown
    assert problem_of(costly_answers[2])["type"].endswith("/rate-limit-exceeded")
    # the refused request did not count against the account: 5 - 2 = 3 left for other routes
    assert [g.predict(key).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_memory_fixed_windows_start_no_thread_and_forget_expired_windows() -> None:
    import threading

    from flask_modelguard.simulate.clock import SimulatedClock
    from flask_modelguard.windows import SWEEP_EVERY, LocalWindows

    e = QuotaEnforcer("memory://")
    limits = limit_set("1000/second;100000/day")
    time.sleep(0.05)  # (limits' memory storage, still built for the other strategies, starts one 10 ms timer)
    timers: set[threading.Thread] = set()
    for account in range(300):
        assert e.hit(account, limits).allowed
        timers |= {t for t in threading.enumerate() if isinstance(t, threading.Timer)}
    assert not timers  # limits' memory storage starts a timer thread every few hits
    clock = SimulatedClock()
    windows = LocalWindows(clock)
    items = limit_set("5/minute").items
    for n in range(50):
        windows.hit(items, [f"k{n}"], 1)
    assert len(windows) == 50
    clock.advance(SWEEP_EVERY + 61)
    assert windows.hit(items, ["fresh"], 1).allowed and len(windows) == 1  # the expired ones swept
    assert windows.counts(["k1", "fresh"]) == [0, 1]
