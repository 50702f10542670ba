"""The repository's engine, clock and housekeeping, and the helpers its parts share."""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import JSON, Engine, event, select

from .. import models as m

STATUSES = ("active", "suspended", "blocked")

_EVENT_COLUMNS = tuple(c.name for c in m.query_events.columns if c.name != "id")
_EVENT_JSON_AT = tuple(i for i, name in enumerate(_EVENT_COLUMNS) if isinstance(m.query_events.c[name].type, JSON))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _epoch(value: dt.datetime | None) -> float | None:
    value = _utc(value)
    return None if value is None else value.timestamp()


def _enable_sqlite_concurrency(engine: Engine) -> None:
    """WAL and a busy timeout let the worker write while requests read."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class Base:
    """The engine and clock every part of the repository works with."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time, evidence_limit: int = 1000) -> None:
        self.engine = engine
        self.clock = clock
        #: Poison and misinformation answers kept as evidence per account (MODELGUARD_EVIDENCE_LIMIT).
        self.evidence_limit = evidence_limit
        #: Those not kept because their account had as many (this process), and those accounts.
        self.evidence_capped = 0
        self._evidence_full: set[int] = set()
        if engine.dialect.name == "sqlite":
            _enable_sqlite_concurrency(engine)
        self._file_identity: tuple[int, int] | None = None
        self.file_problem()  # remembers which file the engine opened
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(engine.dialect.paramstyle)
        self._raw_insert = None if mark is None else (
            f"INSERT INTO {m.query_events.name} ({', '.join(_EVENT_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_EVENT_COLUMNS))})"
        )

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)

    def create_all(self) -> str:
        """The guard's tables, created or migrated to the current schema (see :mod:`..migrations`)."""
        from ..migrations import ensure

        return ensure(self.engine)

    def file_problem(self) -> str | None:
        """For a SQLite file: what is wrong with it (gone, or replaced by
        another file: SQLite then keeps writing to the old one, which nobody
        will read), None while it is the file the engine first saw."""
        path = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
            return None
        try:
            found = os.stat(path)
        except OSError:
            return f"the SQLite file {path} is gone" if self._file_identity is not None else None
        identity = (found.st_dev, found.st_ino)
        if self._file_identity is None:
            self._file_identity = identity
        elif identity != self._file_identity:
            return f"the SQLite file {path} was replaced by another file"
        return None

    def ping(self) -> bool:
        """Whether the database answers (a ``SELECT 1``; raises when it does not)."""
        with self.engine.connect() as conn:
            conn.execute(select(1))
        return True

    def drop_all(self) -> None:
        m.metadata.drop_all(self.engine)
