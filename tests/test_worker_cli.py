"""``flask modelguard worker`` with the example served as ``make run`` serves it
(``MODELGUARD_EVENTS`` on Redis), over real HTTP: nothing is judged while no
worker reads the stream, and health says so; what a server could not publish
at shutdown is spilled and published by the next one; every event is
written once, also after a worker was killed."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import sql
from .served import ServedExample, listening_socket

#: The guard's tick (where a serving process asks whether a worker reads) runs every key-cache TTL.
#: A fast key cache, and no first-start calibration: this file tests events, not detection.
TICK = {"MODELGUARD_KEY_CACHE_TTL": "1", "EXAMPLE_CALIBRATE": "0"}


def _send(server: ServedExample, key: str, n: int) -> list[int]:
    statuses = []
    for i in range(n):
        body = json.dumps({"features": [float((i * 7 + j) % 17) for j in range(64)]}).encode()
        req = urllib.request.Request(f"{server.url}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": key})
        with urllib.request.urlopen(req, timeout=30) as response:
            statuses.append(response.status)
    return statuses


def _until(what: Callable[[], Any], timeout: float, message: Callable[[], str]) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = what()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(message())
        time.sleep(0.25)


def _logged(instance: Path) -> int:
    return int(sql(f"sqlite:///{instance}/modelguard.db", "select count(*) from modelguard_query_events")[0][0])


def _events_problem(server: ServedExample, words: str) -> dict[str, Any] | None:
    status, health = server.health()
    events = health["detection"]["events"]
    return health if status == 503 and health["detection"]["degraded"] and words in events["why"] else None


def test_events_wait_for_a_worker_are_spilled_when_redis_is_away_and_each_is_written_once(
        tmp_path: Path, redis_uri: str) -> None:
    instance = tmp_path / "instance"
    namespace = f"served-{uuid.uuid4().hex}"
    with listening_socket() as closed:  # a port nothing will answer on: Redis is "down"
        away = f"redis://127.0.0.1:{closed.getsockname()[1]}/0"
    down = ServedExample(instance, env={"MODELGUARD_EVENTS": away, "MODELGUARD_NAMESPACE": namespace, **TICK})
    with down:
        key = down.create_account("u", limits="100000/second")
        assert _send(down, key, 20) == [200] * 20  # answered: publishing is off the request path
        _until(lambda: _events_problem(down, "cannot be reached"), 30, lambda: f"{down.health()}\n{down.log()}")
    spilled = list((instance / "modelguard-spill").glob("entries-*"))
    assert spilled, f"nothing spilled at shutdown:\n{down.log()}"
    assert _logged(instance) == 0

    env = {"MODELGUARD_EVENTS": redis_uri, "MODELGUARD_NAMESPACE": namespace, **TICK}
    server = ServedExample(instance, env=env)
    try:
        with server:
            assert _send(server, key, 10) == [200] * 10
            # The spilled 20 are published by this server, with its own 10: no worker reads them yet.
            health = _until(lambda: _events_problem(server, "no `flask modelguard worker` reads"), 30,
                            lambda: f"{server.health()}\n{server.log()}")
            assert health["detection"]["events"]["backlog"] == 30 and _logged(instance) == 0
            first = server.start_worker()
            _until(lambda: _logged(instance) == 30, 60, lambda: f"{_logged(instance)} of 30\n{server.worker_log()}")
            _until(lambda: server.health()[0] == 200, 30, lambda: f"{server.health()}")
            # Written and acknowledged (a worker killed between the two writes those rows again: at least once).
            _until(lambda: _pending(redis_uri, namespace) == 0, 10, lambda: "entries still pending")

            first.send_signal(signal.SIGKILL)  # a worker dies; events wait for the next one
            first.wait(10)
            assert _send(server, key, 10) == [200] * 10
            server.start_worker()
            _until(lambda: _logged(instance) >= 40, 60, lambda: f"{_logged(instance)} of 40\n{server.worker_log()}")
            time.sleep(1.0)
            assert _logged(instance) == 40  # each event once
            assert not list((instance / "modelguard-spill").glob("entries-*"))  # claimed when replayed
    finally:
        _delete_stream(redis_uri, namespace)


def _pending(redis_uri: str, namespace: str) -> int:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_uri)
    try:
        return int(client.xpending(f"{namespace}:events", "modelguard-workers")["pending"])
    finally:
        client.close()


def _delete_stream(redis_uri: str, namespace: str) -> None:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(redis_uri)
    try:
        client.delete(f"{namespace}:events")
    finally:
        client.close()
