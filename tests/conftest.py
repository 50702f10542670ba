"""Shared fixtures: real backends (SQLite file, PostgreSQL, memory, Redis),
parametrised; PostgreSQL and Redis are skipped with a reason when unreachable."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask, request
from sqlalchemy import create_engine, text

from flask_modelguard import ModelGuard, models

# One BLAS/OpenMP thread per process unless the caller chose otherwise: on this
# 2-core machine, shared with other processes, OpenBLAS's default of one thread
# per core made a test's MLP fits 3-4 times slower (25 s instead of 7 s for the
# ownership clone). Set here for this process (numpy is already loaded) and in
# the environment for the servers the tests start (gunicorn, python -m example_app).
if "OPENBLAS_NUM_THREADS" not in os.environ and "OMP_NUM_THREADS" not in os.environ:
    from threadpoolctl import threadpool_limits

    os.environ.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    _BLAS_LIMITS = threadpool_limits(1)

#: The server; each run makes a database of its own on it (``postgres_url``).
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URI = "redis://127.0.0.1:6379/0"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """The random order's seed at the end of the run, ``-q`` or not (pytest-randomly
    shows it only in the header, which ``-q`` hides): what repeats a failing order."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"tests ran in random order: repeat it with --randomly-seed={seed}")


def listening_socket() -> socket.socket:
    """A loopback socket on a port the kernel chose, listening, to hand to a server
    process (gunicorn's ``-b fd://N``, ``pass_fds``): the port is taken from the
    start, so no other process (another test run at the same time) can take it
    between choosing a free port and the server binding it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _postgres_ready() -> str | None:
    if not reachable("127.0.0.1", 5432):
        return "PostgreSQL is not listening on 127.0.0.1:5432"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    return None


def _redis_ready() -> str | None:
    if not reachable("127.0.0.1", 6379):
        return "Redis is not listening on 127.0.0.1:6379"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis is not installed (pip install '.[redis]')"
    return None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test run's own (``test_<random>``), dropped at
    the end: two runs on one server never see each other's tables."""
    reason = _postgres_ready()
    if reason:
        pytest.skip(reason)
    name = f"test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
        # A session left idle in a transaction (a connection cut mid-way by a fault test's
        # proxy) would hold its locks until the run ends: ended after 30 s instead.
        conn.execute(text(f'ALTER DATABASE "{name}" SET idle_in_transaction_session_timeout = \'30s\''))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A clean database for the guard's tables: a SQLite file, or this run's PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/modelguard.db"
        return
    url = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    models.metadata.drop_all(engine)
    engine.dispose()
    yield url
    engine = create_engine(url)
    models.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture(params=["memory", "redis"])
def storage_uri(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    reason = _redis_ready()
    if reason:
        pytest.skip(reason)
    return REDIS_URI


@pytest.fixture
def redis_uri() -> str:
    reason = _redis_ready()
    if reason:
        pytest.skip(reason)
    return REDIS_URI


PROBS = [0.05, 0.7, 0.05, 0.05, 0.05, 0.02, 0.02, 0.02, 0.02, 0.02]


def model_app(guard: ModelGuard, **config: Any) -> Flask:
    """A small model server: ``/predict`` (protected), ``/open`` (not)."""
    app = Flask(__name__)
    # Watermarks and detection off unless a test asks: they would change answers.
    app.config.update(SECRET_KEY="test-secret", MODELGUARD_CREATE_TABLES=True, MODELGUARD_WATERMARK=0.0,
                      MODELGUARD_DETECTION=False)
    app.config.update(config)
    guard.init_app(app)

    @app.post("/predict")
    @guard.protect
    def predict() -> Any:
        body = request.get_json()
        if "instances" in body:
            return {"predictions": [{"label": 1, "probabilities": PROBS} for _ in body["instances"]]}
        return {"label": 1, "probabilities": PROBS}

    @app.get("/open")
    def open_route() -> Any:
        return {"ok": True}

    return app


@dataclass
class Guarded:
    app: Flask
    guard: ModelGuard
    clock: Any

    @property
    def client(self) -> Any:
        return self.app.test_client()

    def account(self, name: str | None = None, **kwargs: Any) -> tuple[str, str]:
        """Create an account and a key; returns (name, key)."""
        name = name or f"acct-{uuid.uuid4().hex[:8]}"
        with self.app.app_context():
            self.guard.create_account(name, **kwargs)
            return name, self.guard.issue_key(name)

    def predict(self, key: str | None, body: Any = None, **headers: str) -> Any:
        if key is not None:
            headers.setdefault("Authorization", f"Bearer {key}")
        return self.client.post("/predict", json=body or {"features": [1, 2, 3]}, headers=headers)

    def rows(self, name: str) -> list[dict[str, Any]]:
        state = ModelGuard.state(self.app)
        self.guard.flush(self.app)
        account_id = state.repository.get_account(name)["id"]
        return list(state.repository.events(account_id))


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_guarded(db_url: str) -> Iterator[Callable[..., Guarded]]:
    """Build guarded apps on the parametrised database; closed after the test."""
    made: list[Guarded] = []

    def make(clock: Any = None, **config: Any) -> Guarded:
        clock = clock or FakeClock()
        config.setdefault("MODELGUARD_DATABASE_URL", db_url)
        config.setdefault("MODELGUARD_NAMESPACE", f"t-{uuid.uuid4().hex}")
        guard = ModelGuard(clock=clock)
        g = Guarded(model_app(guard, **config), guard, clock)
        made.append(g)
        return g

    yield make
    for g in made:
        g.guard.close(g.app)


@pytest.fixture
def guarded(make_guarded: Callable[..., Guarded]) -> Guarded:
    return make_guarded()


def problem_of(response: Any) -> dict[str, Any]:
    """The problem+json body of ``response``, checked for RFC 9457 members."""
    assert response.mimetype == "application/problem+json", response.get_data(as_text=True)
    body = response.get_json(force=True)
    assert set(body) >= {"type", "title", "status", "detail"}
    assert body["status"] == response.status_code
    assert body["type"].startswith("https://")
    return body


def sql(url: str, statement: str) -> Any:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(statement)).all()
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def _model_folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("digits-model"))


@pytest.fixture(scope="session")
def model_cache(_model_folder: str) -> str:
    """The one cache folder of the example's trained MLP for the whole run
    (``MODEL_CACHE_DIR``): trained once, by the first test that needs it, then
    loaded by every app and test of the run."""
    from example_app.model import load_model

    load_model(_model_folder)
    return _model_folder


@pytest.fixture(scope="session", autouse=True)
def example_instance(tmp_path_factory: pytest.TempPathFactory, _model_folder: str) -> Iterator[str]:
    """The example app's instance folder for this run, never the repository's
    ``instance/``: what builds ``example_app.create_app()`` without saying where
    (the evaluation harness, gunicorn workers) writes its secret and database
    here and loads the session's model (``MODEL_CACHE_DIR``). Two runs at once
    share no file; the servers of tests/served.py still get fresh folders."""
    folder = str(tmp_path_factory.mktemp("example-instance"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EXAMPLE_INSTANCE_PATH", folder)
        mp.setenv("MODEL_CACHE_DIR", _model_folder)
        yield folder
