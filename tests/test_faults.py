"""Failing dependencies, injected through a TCP proxy in front of the real
PostgreSQL: the guard starts, serves per its fail mode, and recovers by itself."""

from __future__ import annotations

import os
import time
import uuid

from sqlalchemy import create_engine, text

from flask_modelguard import ModelGuard, models

from .conftest import model_app, problem_of
from .faults import ToggleProxy

#: A well-formed key no database has (the lookup must reach the database).
UNKNOWN_KEY = "mg_" + "a" * 10 + "_" + "b" * 32


def _through(url: str, proxy: ToggleProxy) -> str:
    return url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")


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
    engine = create_engine(postgres_url)
    models.metadata.drop_all(engine)
    engine.dispose()
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
    engine = create_engine(postgres_url)
    models.metadata.drop_all(engine)
    engine.dispose()
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
