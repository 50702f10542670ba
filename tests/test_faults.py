"""Failing dependencies, injected through a TCP proxy in front of the real
PostgreSQL: the guard starts, serves per its fail mode, and recovers by itself."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
from sqlalchemy import Engine, create_engine, text

from flask_modelguard import ModelGuard, models

from .conftest import listening_socket, model_app, problem_of
from .faults import ToggleProxy

#: A well-formed key no database has (the lookup must reach the database).
UNKNOWN_KEY = "mg_" + "a" * 10 + "_" + "b" * 32


def _through(url: str, proxy: ToggleProxy) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


def _empty(url: str) -> Engine:
    """An engine on ``url`` with none of the guard's tables (each test starts with none).
    Sessions left by earlier tests' cut connections are ended first: one left
    idle in a transaction through a proxy once held a table's lock and stalled
    the drop for minutes."""
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
    models.metadata.drop_all(engine)
    engine.dispose()
    return engine


def _wait(condition, timeout: float = 15.0) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_server_started_while_the_database_is_down_serves_and_recovers(postgres_url, caplog):
    """With MODELGUARD_CREATE_TABLES and PostgreSQL unreachable, init_app
    returns (no exception: a gunicorn worker boots), requests get a 503
    problem, and once the database is back the worker's tick creates the
    tables without any traffic; the next requests are served."""
    _empty(postgres_url)
    proxy = ToggleProxy(("127.0.0.1", 5432))
    proxy.down()
    caplog.set_level("WARNING", logger="flask_modelguard")
    guard = ModelGuard()
    app = model_app(guard, MODELGUARD_DATABASE_URL=_through(postgres_url, proxy), MODELGUARD_KEY_CACHE_TTL=0.2,
                    MODELGUARD_NAMESPACE=f"t-{uuid.uuid4().hex}")
    try:
        state = ModelGuard.state(app)
        assert state.tables_pending
        assert "could not create the tables" in caplog.text
        r = app.test_client().post("/predict", json={"features": [1, 2]}, headers={"Authorization": f"Bearer {UNKNOWN_KEY}"})
        assert r.status_code == 503 and problem_of(r)["type"].endswith("/database-unavailable")
        proxy.up()
        took = _wait(lambda: not state.tables_pending)
        assert took < 5.0  # within a few ticks
        assert "tables created" in caplog.text
        with app.app_context():
            guard.create_account("after")
            key = guard.issue_key("after")
        r = app.test_client().post("/predict", json={"features": [1, 2]}, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        guard.close(app)
        proxy.down()


def test_events_at_shutdown_during_an_outage_are_spilled_then_written_at_the_next_start(postgres_url, tmp_path, caplog):
    """PostgreSQL cut, then the server stops: its unwritten events go to the
    spill directory (counted, one log line), and the next server to start on
    that directory writes every one of them, without any traffic."""
    engine = _empty(postgres_url)
    proxy = ToggleProxy(("127.0.0.1", 5432))
    config = {"MODELGUARD_DATABASE_URL": _through(postgres_url, proxy), "MODELGUARD_FLUSH_INTERVAL": 3600,
              "MODELGUARD_SPILL": str(tmp_path / "spill"), "MODELGUARD_SHUTDOWN_TIMEOUT": 0.5,
              "MODELGUARD_NAMESPACE": f"t-{uuid.uuid4().hex}"}
    guard = ModelGuard()
    app = model_app(guard, **config)
    with app.app_context():
        guard.create_account("victim-of-outage", limits="1000/minute")
        key = guard.issue_key("victim-of-outage")
    client = app.test_client()
    for i in range(30):
        assert client.post("/predict", json={"features": [i, 1]}, headers={"X-API-Key": key}).status_code == 200
    proxy.down()
    caplog.set_level("ERROR", logger="flask_modelguard")
    guard.close(app)
    stats = guard.stats(app)
    assert stats["spilled"] == 30 and stats["dropped"] == 0
    assert len([r for r in caplog.records if "30 events spilled" in r.getMessage()]) == 1
    proxy.up()
    again = ModelGuard()
    app2 = model_app(again, **config)
    try:
        state = ModelGuard.state(app2)
        _wait(lambda: state.worker.written >= 30)
        with engine.connect() as conn:
            count = conn.execute(text("select count(*) from modelguard_query_events")).scalar()
        assert count == 30 and not os.listdir(tmp_path / "spill")
    finally:
        again.close(app2)
        proxy.down()


def _post(url: str, key: str) -> int:
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps({"features": [3] * 64}).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-API-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_gunicorn_through_a_database_outage_recycles_and_stops_losing_nothing(postgres_url, tmp_path, model_cache):
    """The example under gunicorn (2 workers, recycled every 15 requests) on
    PostgreSQL through a proxy: the database is cut mid-traffic, workers are
    recycled and boot again during the cut, then gunicorn is stopped (SIGTERM)
    while it is still down. The master never exits early; every answered
    request is in the query log once the database is back and a process has
    started on the spill folder (written at exit, or spilled and replayed)."""
    import signal
    import subprocess
    import sys

    from example_app import create_app, guard

    _empty(postgres_url)
    proxy = ToggleProxy(("127.0.0.1", 5432))
    url = _through(postgres_url, proxy)
    namespace = f"t-{uuid.uuid4().hex}"
    config = {"MODELGUARD_DATABASE_URL": url, "MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "outage-test",
              "MODELGUARD_SPILL": str(tmp_path / "spill"), "MODELGUARD_NAMESPACE": namespace}
    setup = create_app(dict(config))
    with setup.app_context():
        guard.create_account("steady", limits="100000/minute")
        key = guard.issue_key("steady")
    guard.close(setup)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, **{k: str(v) for k, v in config.items()}, "MODELGUARD_SHUTDOWN_TIMEOUT": "1"}
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"fd://{sock.fileno()}",
                                 "--max-requests", "15", "example_app:create_app()"],
                                cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                pass_fds=[sock.fileno()])
    base = f"http://127.0.0.1:{port}"
    answered = 0
    try:
        _wait(lambda: _up(f"{base}/health"), timeout=60)
        statuses = [_post(f"{base}/predict", key) for _ in range(10)]
        proxy.down()
        statuses += [_post(f"{base}/predict", key) for _ in range(50)]  # workers recycle meanwhile
        assert proc.poll() is None, "gunicorn exited during the outage"
        answered = statuses.count(200)
        assert set(statuses) <= {200, 503} and answered >= 10, statuses
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    spilled = os.listdir(tmp_path / "spill")
    # Each worker that exits holding unwritten events leaves a file (one that
    # booted during the cut never cached the key: it answered only 503s).
    assert len(spilled) >= 1, out[-3000:]
    assert "events spilled" in out and "Traceback" not in out, out[-3000:]
    proxy.up()
    after = create_app(dict(config))  # the next start: replays what was spilled
    try:
        def logged() -> int:
            with create_engine(postgres_url).connect() as conn:
                return int(conn.execute(text("select count(*) from modelguard_query_events where status = 200")).scalar())

        _wait(lambda: logged() >= answered, timeout=30)
        time.sleep(1.0)
        assert logged() == answered, out[-3000:]  # every answer once: none lost, none twice
    finally:
        guard.close(after)
        proxy.down()


def _up(url: str) -> bool:
    import urllib.request

    try:
        urllib.request.urlopen(url, timeout=1)
        return True
    except OSError:
        return False


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
def test_a_hung_redis_costs_a_request_at_most_its_timeout_and_recovers(redis_uri, fail_mode):
    """Redis accepting connections and never answering: with the default
    timeouts (0.5 s) a request waits at most about that, is answered per the
    fail mode, the next ones do not wait at all (the storage is skipped for
    MODELGUARD_STORAGE_RETRY), and limits apply again once Redis answers."""
    proxy = ToggleProxy(("127.0.0.1", 6379))
    guard = ModelGuard()
    app = model_app(guard, MODELGUARD_DATABASE_URL="sqlite://", MODELGUARD_STORAGE_URI=f"redis://127.0.0.1:{proxy.port}/0",
                    MODELGUARD_FAIL_MODE=fail_mode, MODELGUARD_STORAGE_RETRY=0.5,
                    MODELGUARD_NAMESPACE=f"t-{uuid.uuid4().hex}")
    try:
        with app.app_context():
            guard.create_account("a", limits="100/minute")
            key = guard.issue_key("a")
        client = app.test_client()

        def call():
            began = time.monotonic()
            r = client.post("/predict", json={"features": [1, 2]}, headers={"X-API-Key": key})
            return r, time.monotonic() - began

        assert call()[0].status_code == 200
        proxy.hang()
        r, took = call()
        assert took < 2.0 and r.status_code == (200 if fail_mode == "open" else 503), (took, r.status_code)
        r, took = call()
        assert took < 0.2  # skipped while it is down
        proxy.hang(False)
        proxy.down()
        proxy.up()  # fresh connections
        time.sleep(0.6)
        _wait(lambda: call()[0].headers.get("X-RateLimit-Limit") == "100", timeout=10)
    finally:
        guard.close(app)
        proxy.down()


def test_account_states_at_shutdown_during_an_outage_are_spilled_then_merged(postgres_url, tmp_path):
    """The statistics of the queries a server saw since its last merge are
    not lost either: spilled at a shutdown during a cut, merged into the
    stored state by the next process (the account counts every query once)."""
    _empty(postgres_url)
    proxy = ToggleProxy(("127.0.0.1", 5432))
    # (ticks an hour apart: only the first, as the worker starts, before the traffic, and the exit merge)
    config = {"MODELGUARD_DATABASE_URL": _through(postgres_url, proxy), "MODELGUARD_FLUSH_INTERVAL": 3600,
              "MODELGUARD_SPILL": str(tmp_path / "spill"), "MODELGUARD_SHUTDOWN_TIMEOUT": 0.5,
              "MODELGUARD_DETECTION": True, "MODELGUARD_NAMESPACE": f"t-{uuid.uuid4().hex}",
              "MODELGUARD_KEY_CACHE_TTL": 3600}
    guard = ModelGuard()
    app = model_app(guard, **config)
    # The worker's first tick merges the states; were it late (a busy machine), it
    # would merge these requests' deltas before the cut and leave nothing to spill.
    worker, ticked = ModelGuard.state(app).worker, threading.Event()
    tick = worker.on_tick
    assert tick is not None
    worker.on_tick = lambda: (tick(), ticked.set())
    worker.start()
    assert ticked.wait(15)
    with app.app_context():
        guard.create_account("stats", limits="1000/minute")
        key = guard.issue_key("stats")
    client = app.test_client()
    for i in range(12):
        assert client.post("/predict", json={"features": [i, 1]}, headers={"X-API-Key": key}).status_code == 200
    ModelGuard.state(app).worker.flush()  # the events are written; the states wait for their merge
    account_id = ModelGuard.state(app).repository.get_account("stats")["id"]
    proxy.down()
    guard.close(app)
    assert any(n.startswith("states-") for n in os.listdir(tmp_path / "spill"))
    assert guard.stats(app)["states_lost"] == 0
    proxy.up()
    again = ModelGuard()
    app2 = model_app(again, **config)
    try:
        state = ModelGuard.state(app2)
        _wait(lambda: (state.repository.load_state(account_id) or {}).get("queries") == 12)
        assert not os.listdir(tmp_path / "spill")
    finally:
        again.close(app2)
        proxy.down()
