"""The guard's schema, versioned with Alembic on a version table of its own
(``modelguard_alembic_version``), apart from the host app's migrations.

- An empty database gets every table at once (``create_all``) and is
  stamped at :data:`HEAD`, without running the migrations one by one.
- A database of a release before migrations (the tables, no version table)
  is stamped at :data:`BASELINE` (what ``create_all`` made then), then upgraded.
- A database at an older revision is upgraded; one at :data:`HEAD` costs
  one ``SELECT`` (Alembic is only imported when there is work to do).

Processes that start together take turns (PostgreSQL: an advisory lock;
SQLite: ``BEGIN IMMEDIATE``, whose waiters give up after the engine's busy
timeout, 5 s, and try again at the next tick). Framework-free.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection, Engine

from .. import models as m
from ..lifecycle import serialised

VERSION_TABLE = "modelguard_alembic_version"
#: The schema as ``create_all`` made it before migrations existed.
BASELINE = "0001"
#: The newest migration (``tests/test_migrations.py`` checks it is Alembic's head).
HEAD = "0006"
#: ``pg_advisory_xact_lock`` key of the guard's schema changes.
_LOCK = 0x6D67_5343  # "mgSC"


def current(engine: Engine) -> str | None:
    """The revision the guard's tables are at (None: no version table)."""
    with engine.connect() as conn:
        return _version(conn)


def _version(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    return conn.execute(select(m.schema_version.c.version_num)).scalar()


def ensure(engine: Engine) -> str:
    """The tables at :data:`HEAD`, however the database was left; what was
    done: ``"current"``, ``"created"`` or ``"upgraded from <revision>"``."""
    if current(engine) == HEAD:  # the usual start: one query, no lock
        return "current"
    return upgrade(engine)


def upgrade(engine: Engine, revision: str = "head") -> str:
    """``flask modelguard db upgrade``: see :func:`ensure`."""
    with serialised(engine, _LOCK) as conn:
        found = _version(conn)
        if found is None and not inspect(conn).has_table(m.accounts.name):
            m.metadata.create_all(conn)
            conn.execute(m.schema_version.insert().values(version_num=HEAD))
            return "created"
        if found == HEAD and revision in ("head", HEAD):
            return "current"
        if found is None:
            _alembic(conn, "stamp", BASELINE)
        _alembic(conn, "upgrade", revision)
        return f"upgraded from {found or 'before migrations'}"


def downgrade(engine: Engine, revision: str) -> None:
    """Back to ``revision`` (to run an older release on this database)."""
    with serialised(engine, _LOCK) as conn:
        _alembic(conn, "downgrade", revision)


def _alembic(conn: Connection, command: str, revision: str) -> None:
    """Alembic's ``command`` (``upgrade``, ``downgrade``, ``stamp``) on ``conn``."""
    from alembic import command as commands
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", os.path.dirname(__file__))
    config.attributes["connection"] = conn
    run: Any = getattr(commands, command)
    run(config, revision)
