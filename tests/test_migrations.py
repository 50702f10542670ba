"""migrations/: the guard's schema under Alembic, on SQLite and PostgreSQL.
A database created by the release before migrations (``create_all``, no
version table) is upgraded in place with its data; a new one is created at
the head; the migrated schema is the models' (no drift)."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import column, create_engine, inspect, select, text
from sqlalchemy import table as sa_table

from flask_modelguard import ModelGuard, evidence, migrations, models
from flask_modelguard.cli import modelguard_cli
from tests.conftest import model_app

NEW_INDEX = "ix_modelguard_query_events_ts_status"  # (0002 made one on ts alone, 0005 this one)
NEW_TABLE = models.account_groups.name


def _previous_release(url: str) -> None:
    """The tables as the release before migrations made them, with data in them."""
    engine = create_engine(url)
    models.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text(f"DROP INDEX {NEW_INDEX}"))
        conn.execute(text(f"DROP TABLE {NEW_TABLE}"))
        conn.execute(text("DROP INDEX ix_modelguard_account_states_updated"))
        conn.execute(text(f"DROP TABLE {migrations.VERSION_TABLE}"))
        conn.execute(text("DROP INDEX ix_modelguard_watermarks_account_order"))
        conn.execute(text(f"ALTER TABLE {models.watermarks.name} DROP COLUMN chain"))
        conn.execute(text("DROP INDEX ix_modelguard_watermarks_account_input"))
        conn.execute(text(f"ALTER TABLE {models.watermarks.name} DROP COLUMN kind"))
        conn.execute(text(f"ALTER TABLE {models.watermarks.name} DROP COLUMN null_rate"))
        conn.execute(models.accounts.insert().values(
            name="old", tier="free", status="active", flagged=False, score=0.0, allowlisted=False,
            reviewed_queries=0, created_at=_now(), updated_at=_now()))
        old_marks = sa_table(models.watermarks.name, *[column(c.name, c.type) for c in models.watermarks.c
                                                       if c.name not in ("id", "chain", "kind", "null_rate")])
        conn.execute(old_marks.insert(), [
            {"account_id": 1, "route": "predict", "ts": 100.0 + n, "fingerprint": f"fp{n}", "input": [n, 0.5],
             "served_label": n % 3, "model_label": 9, "n_classes": 10} for n in range(3)])
    engine.dispose()


def _now() -> Any:
    import datetime

    return datetime.datetime(2026, 11, 1)


def _indexes(engine: Any) -> set[str]:
    return {i["name"] for i in inspect(engine).get_indexes(models.query_events.name)}


def test_head_is_alembics_head() -> None:
    config = Config()
    config.set_main_option("script_location", os.path.dirname(migrations.__file__))
    assert ScriptDirectory.from_config(config).get_current_head() == migrations.HEAD


def test_a_new_database_is_created_at_the_head_once(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert migrations.ensure(engine) == "created"
        assert migrations.current(engine) == migrations.HEAD and NEW_INDEX in _indexes(engine)
        assert migrations.ensure(engine) == "current"
    finally:
        engine.dispose()


def test_processes_starting_together_create_the_schema_once(db_url: str) -> None:
    engines = [create_engine(db_url) for _ in range(4)]
    done: list[str] = []
    errors: list[BaseException] = []

    def start(engine: Any) -> None:
        try:
            done.append(migrations.ensure(engine))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert not errors, errors
        assert sorted(done) == ["created"] + ["current"] * 3
        with engines[0].connect() as conn:
            assert conn.execute(select(models.schema_version.c.version_num)).scalars().all() == [migrations.HEAD]
    finally:
        for e in engines:
            e.dispose()


def test_db_upgrade_migrates_a_database_of_the_previous_release_and_keeps_its_data(db_url: str) -> None:
    _previous_release(db_url)
    guard = ModelGuard()
    app = model_app(guard, MODELGUARD_DATABASE_URL=db_url, MODELGUARD_CREATE_TABLES=False)
    runner = app.test_cli_runner()
    state = ModelGuard.state(app)
    try:
        out = runner.invoke(modelguard_cli, ["db", "current"])
        assert out.exit_code == 0 and out.output.startswith("no version table"), out.output
        out = runner.invoke(modelguard_cli, ["db", "upgrade"])
        assert out.exit_code == 0, out.output
        assert "upgraded from before migrations" in out.output and migrations.HEAD in out.output
        assert NEW_INDEX in _indexes(state.repository.engine)
        assert inspect(state.repository.engine).has_table(NEW_TABLE)
        assert state.repository.get_account("old")["tier"] == "free"
        old = evidence.bundle("old", state.repository.evidence_records("old"), "now")
        assert evidence.check(old).valid and len(old["records"]) == 3  # the records there before are chained
        with app.app_context():  # the app works on the migrated tables
            key = guard.issue_key("old")
        response = app.test_client().post("/predict", json={"features": [1, 2, 3]},
                                          headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200
        assert runner.invoke(modelguard_cli, ["db", "downgrade", migrations.BASELINE]).exit_code == 0
        assert NEW_INDEX not in _indexes(state.repository.engine)
        assert not inspect(state.repository.engine).has_table(NEW_TABLE)
        assert migrations.ensure(state.repository.engine) == f"upgraded from {migrations.BASELINE}"
        assert NEW_INDEX in _indexes(state.repository.engine)
    finally:
        guard.close(app)


def test_the_migrated_schema_is_the_models_schema(db_url: str) -> None:
    """What the migrations build from the previous release equals what the
    models declare: a later model change without its migration fails here."""
    _previous_release(db_url)
    engine = create_engine(db_url)
    try:
        migrations.ensure(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_name": lambda name, kind, parent: kind != "table" or name.startswith("modelguard_"),
                "compare_type": False})
            diff = compare_metadata(context, models.metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


@pytest.fixture(autouse=True)
def _empty(db_url: str) -> Any:
    """Each test starts from an empty database (the version table too)."""
    engine = create_engine(db_url)
    models.metadata.drop_all(engine)
    engine.dispose()
    yield
