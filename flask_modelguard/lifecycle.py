"""The guard's life in a process: database engines, and what runs after a fork
and at interpreter exit. Framework-free.

Every at-fork and at-exit hook of the package is registered here, as a weak
reference to a bound method, so an object that goes away takes its hooks with
it. After a fork (gunicorn's pre-fork model, ``--preload``) the child's hooks
run in the order they were registered (engines forget inherited connections
before workers restart and states reset); at exit they run in reverse (a
guard's state flushes its worker before the worker's own hook looks).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.pool import StaticPool

log = logging.getLogger("flask_modelguard")

class Hooks:
    """Bound methods held weakly, run in order (or in reverse); one that
    raises does not stop the others."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: list[weakref.WeakMethod[Callable[[], None]]] = []

    def add(self, method: Callable[[], None]) -> None:
        with self._lock:
            self._refs.append(weakref.WeakMethod(method))

    def live(self) -> list[Callable[[], None]]:
        with self._lock:
            alive = [(ref, ref()) for ref in self._refs]
            self._refs[:] = [ref for ref, method in alive if method is not None]
        return [method for _, method in alive if method is not None]

    def run(self, reverse: bool = False) -> None:
        methods = self.live()
        for method in reversed(methods) if reverse else methods:
            try:
                method()
            except Exception:
                log.exception("modelguard: a lifecycle hook failed")

    def reset_lock(self) -> None:
        """After a fork: another thread of the parent may have held the lock."""
        self._lock = threading.Lock()


_after_fork = Hooks()
_at_exit = Hooks()


def after_fork(method: Callable[[], None]) -> None:
    """Run the bound ``method`` in every child forked from now on (while its object lives)."""
    _after_fork.add(method)


def at_exit(method: Callable[[], None]) -> None:
    """Run the bound ``method`` at interpreter exit (while its object lives)."""
    _at_exit.add(method)


def _run_after_fork() -> None:
    _after_fork.reset_lock()
    _at_exit.reset_lock()
    _after_fork.run()


def _run_at_exit() -> None:
    _at_exit.run(reverse=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_run_after_fork)
atexit.register(_run_at_exit)


class _EngineHandle:
    """Forgets, without closing, the connections a child inherited through fork."""

    def __init__(self, engine: Engine) -> None:
        self.engine = weakref.ref(engine)
        after_fork(self.forget_connections)

    def forget_connections(self) -> None:
        engine = self.engine()
        if engine is not None:
            engine.dispose(close=False)


_handles: weakref.WeakKeyDictionary[Engine, _EngineHandle] = weakref.WeakKeyDictionary()


def make_engine(url: str, options: Mapping[str, Any]) -> Engine:
    """A SQLAlchemy engine for ``url`` (parameters never in error messages;
    a SQLite file's folder created; an in-memory SQLite database shared by
    threads), safe to use in forked children."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])) or ".", exist_ok=True)
    engine_options = {"hide_parameters": True, **options}
    if url in ("sqlite://", "sqlite:///:memory:"):
        engine_options.setdefault("poolclass", StaticPool)
        engine_options.setdefault("connect_args", {"check_same_thread": False})
    engine = create_engine(url, **engine_options)
    _handles[engine] = _EngineHandle(engine)
    return engine


@contextmanager
def serialised(engine: Engine, lock: int) -> Iterator[Connection]:
    """A transaction no other process holding ``lock`` runs alongside (schema
    changes, group verdicts). On PostgreSQL the advisory lock ``lock`` is a
    session lock taken before the transaction starts, so that its snapshot
    (under REPEATABLE READ too) sees what the process that held it did; on
    SQLite, ``BEGIN IMMEDIATE`` takes the write lock before any read."""
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        if postgres:
            conn.exec_driver_sql(f"SELECT pg_advisory_lock({int(lock)})")
            conn.commit()  # (the lock is the session's; the next statement begins a new transaction)
        try:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            if postgres:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({int(lock)})")
                conn.commit()
