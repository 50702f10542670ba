"""The simulator's clock, its rate-limit storage, reading answers, and the
event loop driving actors through a real guarded app."""

from __future__ import annotations

import numpy as np
import pytest
from flask import Flask, request

from flask_modelguard import ModelGuard
from flask_modelguard.limitset import limit_set
from flask_modelguard.quotas import QuotaEnforcer
from flask_modelguard.simulate import Actor, SimulatedClock, Simulation, World, WSGITransport, read_answer


def test_simulated_clock_never_runs_backwards():
    clock = SimulatedClock(100.0)
    assert clock() == 100.0
    clock.advance(5)
    clock.set(50)  # ignored: earlier
    assert clock() == 105.0 and clock.elapsed == 5.0
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_rate_limit_windows_run_on_the_simulated_clock():
    clock = SimulatedClock()
    enforcer = QuotaEnforcer("simulated://", storage_options={"clock": clock})
    limits = limit_set("3/minute")
    assert [enforcer.hit(1, limits).allowed for _ in range(4)] == [True, True, True, False]
    refused = enforcer.hit(1, limits)
    assert not refused.allowed and refused.reset == pytest.approx(clock() + 60)
    assert enforcer.clock is clock
    clock.advance(59)
    assert not enforcer.hit(1, limits).allowed  # still the same window: refusals consumed nothing
    clock.advance(1)
    assert enforcer.hit(1, limits).allowed and enforcer.hit(1, limits, cost=2).allowed
    assert not enforcer.hit(1, limits).allowed
    with pytest.raises(ValueError, match="clock"):
        QuotaEnforcer("simulated://")


def test_read_answer_batches_top_k_labels_only_and_refusals():
    headers = {"RateLimit": '"free";r=7;t=42', "Retry-After": "3"}
    batch = {"predictions": [{"label": 1, "probabilities": [0.2, 0.8, 0.0]},
                             {"label": 0, "probabilities": [0.9], "classes": [0]}]}
    answer = read_answer(200, batch, headers, 2, 3)
    assert answer.ok and answer.labels.tolist() == [1, 0]
    np.testing.assert_allclose(answer.probabilities, [[0.2, 0.8, 0.0], [0.9, 0.0, 0.0]])
    assert (answer.remaining, answer.reset) == (7, 42.0)
    labels_only = read_answer(200, {"predictions": [{"label": 2}]}, {}, 1, 3)
    assert labels_only.labels.tolist() == [2] and labels_only.probabilities is None
    single = read_answer(200, {"label": 1, "probabilities": [0.1, 0.9, 0.0]}, {}, 1, 3)
    assert single.labels.tolist() == [1]
    refused = read_answer(429, {"title": "Too Many Requests"}, headers, 1, 3)
    assert not refused.ok and refused.retry_after == 3.0
    assert not read_answer(200, {"predictions": [{"label": 1}]}, {}, 2, 3).ok  # count mismatch: unreadable


class _Steady(Actor):
    """Sends the pool's rows in order, one request every ``interval`` seconds."""

    kind = "steady"

    def start(self) -> None:
        self.i = 0

    def plan(self, n):
        rows = self.world.pool[self.i : self.i + n]
        self.i += n
        return rows, self.interval

    def requeue(self, inputs):
        self.i -= len(inputs)  # sent again after the wait


@pytest.fixture
def served(tmp_path):
    clock = SimulatedClock()
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/s.db",
                      MODELGUARD_CREATE_TABLES=True, MODELGUARD_WATERMARK=0.0, MODELGUARD_DETECTION=False,
                      MODELGUARD_CLOCK=clock, MODELGUARD_STORAGE_URI="simulated://",
                      MODELGUARD_STORAGE_OPTIONS={"clock": clock})
    guard = ModelGuard(app)

    @app.post("/predict")
    @guard.protect
    def predict():
        rows = request.get_json()["instances"]
        return {"predictions": [{"label": int(sum(r) > 0), "probabilities": [0.3, 0.7] if sum(r) > 0 else [0.7, 0.3]}
                                for r in rows]}

    world = World(pool=np.arange(40, dtype=float).reshape(20, 2) - 10, test=np.zeros((1, 2)),
                  test_labels=np.zeros(1), victim=lambda X: np.tile([0.5, 0.5], (len(X), 1)),
                  n_classes=2, low=-100, high=100)
    yield app, guard, clock, world
    guard.close(app)


def test_simulation_runs_on_simulated_time_through_the_guard(served):
    app, guard, clock, world = served
    with app.app_context():
        guard.create_account("a", limits="4/minute")
        guard.create_account("b", limits="1000/minute")
        keys = {("a", 0): guard.issue_key("a"), ("b", 0): guard.issue_key("b")}
    slow = _Steady("a", 20, batch=2, interval=20.0)   # 6 per minute wanted, 4 allowed
    fast = _Steady("b", 20, batch=5, interval=1.0)
    sim = Simulation(WSGITransport(app.test_client()), world, [slow, fast], keys, clock=clock)
    log = sim.run()
    assert slow.sent == fast.sent == 20  # budgets spent exactly, refusals not counted
    assert slow.refused >= 1 and fast.refused == 0
    assert [s.ts for s in log] == sorted(s.ts for s in log)  # in simulated time order
    assert clock.elapsed > 150  # minutes of simulated time ...
    np.testing.assert_array_equal(slow.X, world.pool)  # ... refused rows planned anew, in order here
    assert slow.y.tolist() == [int(r.sum() > 0) for r in world.pool]
    guard.flush(app)
    with app.app_context():
        events = guard.state().repository.count_events()
    assert events == len(log)
    ts = [s.ts for s in log if s.actor == "a"]
    assert min(np.diff(ts)) >= 20.0 - 1e-9  # the thief waited Retry-After or its interval


def test_simulation_over_http_to_a_live_server(tmp_path):
    """The same loop over real HTTP (real time, no sleeping): the live server's
    guard logs every request and refuses what is over the limit."""
    import threading

    from werkzeug.serving import make_server

    app = Flask(__name__)
    app.config.update(SECRET_KEY="s", MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/h.db",
                      MODELGUARD_CREATE_TABLES=True, MODELGUARD_WATERMARK=0.0, MODELGUARD_DETECTION=False)
    guard = ModelGuard(app)

    @app.post("/api/predict")
    @guard.protect
    def predict():
        rows = request.get_json()["instances"]
        return {"predictions": [{"label": 1, "probabilities": [0.2, 0.8]} for _ in rows]}

    with app.app_context():
        guard.create_account("h", limits="25/hour")
        keys = {("h", 0): guard.issue_key("h")}
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        from flask_modelguard.simulate import HTTPTransport

        world = World(pool=np.ones((30, 2)), test=np.zeros((1, 2)), test_labels=np.zeros(1),
                      victim=lambda X: np.tile([0.5, 0.5], (len(X), 1)), n_classes=2, low=0, high=2)
        actor = _Steady("h", 30, batch=10, interval=0.0)

        def stop_after_refusal(n):
            if actor.refused:
                actor.budget = actor.sent  # a real client would wait an hour: stop here
        sim = Simulation(HTTPTransport(f"http://127.0.0.1:{server.server_port}/api"), world, [actor], keys,
                         every=stop_after_refusal)
        log = sim.run()
    finally:
        server.shutdown()
    assert [s.status for s in log] == [200, 200, 429]  # 20 of 25 used; 10 more would exceed
    assert actor.sent == 20 and actor.y.tolist() == [1] * 20
    np.testing.assert_allclose(actor.P, np.tile([0.2, 0.8], (20, 1)))
    guard.flush(app)
    with app.app_context():
        assert guard.state().repository.count_events() == 3
    guard.close(app)
