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
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import StaticPool

_lock = threading.Lock()
_after_fork: list[weakref.WeakMethod[Callable[[], None]]] = []
_at_exit: list[weakref.WeakMethod[Callable[[], None]]] = []


def after_fork(method: Callable[[], None]) -> None:
    """Run the bound ``method`` in every child forked from now on (while its object lives)."""
    with _lock:
        _after_fork.append(weakref.WeakMethod(method))


def at_exit(method: Callable[[], None]) -> None:
    """Run the bound ``method`` at interpreter exit (while its object lives)."""
    with _lock:
        _at_exit.append(weakref.WeakMethod(method))


def _live(hooks: list[weakref.WeakMethod[Callable[[], None]]]) -> list[Callable[[], None]]:
    with _lock:
        alive = [(ref, ref()) for ref in hooks]
        hooks[:] = [ref for ref, method in alive if method is not None]
    return [method for _, method in alive if method is not None]


def _run_after_fork() -> None:
    global _lock
    _lock = threading.Lock()  # another thread of the parent may have held it
    for method in _live(_after_fork):
        method()


def _run_at_exit() -> None:
    for method in reversed(_live(_at_exit)):
        method()


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
