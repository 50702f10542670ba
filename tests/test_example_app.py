"""The example model server over real HTTP: werkzeug's server in a thread, and
gunicorn with several worker processes sharing Redis limits."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from werkzeug.serving import make_server

from example_app import create_app, guard
from example_app.__main__ import demo_key
from example_app.model import split

from .conftest import listening_socket, sql

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def post(url: str, body: object, key: str | None = None) -> tuple[int, dict, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


@pytest.fixture
def served(tmp_path, model_cache):
    app = create_app({
        "MODEL_CACHE_DIR": model_cache,
        "SECRET_KEY": "example-test",
        "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/example.db",
    })
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    guard.close(app)


def test_example_app_over_http(served):
    app, base = served
    key = demo_key(app)
    _, X_test, _, y_test = split()
    status, headers, body = post(f"{base}/predict", {"features": X_test[0].tolist()}, key)
    assert status == 200 and body["label"] == int(y_test[0])
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-6
    assert headers["X-RateLimit-Limit"] == "10" and "RateLimit-Policy" in headers

    status, headers, body = post(f"{base}/predict", {"instances": X_test[:5].tolist()}, key)
    assert status == 200 and [p["label"] for p in body["predictions"]] == y_test[:5].tolist()
    assert headers["X-RateLimit-Remaining"] == "4"  # 1 + 5 of 10 per second

    status, headers, body = post(f"{base}/predict", {"features": [1, 2]}, key)
    assert status == 400 and headers["Content-Type"] == "application/problem+json"
    assert "64" in body["detail"]
    status, _, body = post(f"{base}/predict", b"{not json", key)
    assert status == 400 and body["status"] == 400
    status, _, body = post(f"{base}/predict", {"features": X_test[0].tolist()})
    assert status == 401 and body["type"].endswith("missing-api-key")


def test_numbers_at_the_float_limits_get_answers_or_clear_errors(served):
    """Integers beyond float range are a 400 problem, not a 500; huge finite
    numbers are clipped to the pixel range and answered with finite probabilities."""
    app, base = served
    key = demo_key(app)
    status, headers, body = post(f"{base}/predict", b'{"features": [' + b",".join([b"1" + b"0" * 400] * 64) + b"]}", key)
    assert status == 400 and headers["Content-Type"] == "application/problem+json", body
    for value in (1e308, -1e308, 5e-324):
        status, _, body = post(f"{base}/predict", {"features": [value] * 64}, key)
        assert status == 200 and all(0.0 <= p <= 1.0 for p in body["probabilities"]), (value, body)


def _raw(base: str, head: str, body: bytes) -> tuple[int, dict]:
    """Send a hand-made HTTP request (what urllib will not send); status and JSON body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode() + b"\r\n" + body)
        conn.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    headers, _, payload = data.partition(b"\r\n\r\n")
    assert b"application/problem+json" in headers, data[:500]
    return status, json.loads(payload)


def test_bodies_too_large_or_unreadable_are_problems_not_500s(served):
    """Over 1 MiB by Content-Length (refused before reading, nothing consumed)
    or by a chunked stream: 413; a broken chunked encoding: 400."""
    app, base = served
    key = demo_key(app)
    big = b'{"features": [' + b"0," * 600_000 + b"0]}"
    status, headers, body = post(f"{base}/predict", big, key)
    assert status == 413 and body["type"].endswith("/payload-too-large"), body
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n")
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in [b'{"features": ['] + [b"0," * 50_000] * 30) + b"0\r\n\r\n"
    status, body = _raw(base, head, chunks)
    assert status == 413, body
    status, body = _raw(base, head, b"zz\r\nnot a chunk\r\n")
    assert status == 400 and body["type"].endswith("/bad-request"), body
    status, _, body = post(f"{base}/predict", {"features": [0] * 64}, key)
    assert status == 200 and body["label"] is not None  # what was refused consumed nothing


def test_demo_key_is_replaced_on_each_start(served):
    app, base = served
    first = demo_key(app)
    second = demo_key(app)
    body = {"features": [0] * 64}
    assert post(f"{base}/predict", body, first)[0] == 403
    assert post(f"{base}/predict", body, second)[0] == 200


def test_gunicorn_workers_share_limits_and_flush_at_exit(tmp_path, model_cache, redis_uri):
    """Three worker processes, one Redis: the per-second limit is global, and every
    worker's events reach the database when gunicorn stops."""
    db = f"sqlite:///{tmp_path}/gunicorn.db"
    env = {
        **os.environ,
        "MODELGUARD_DATABASE_URL": db,
        "MODELGUARD_STORAGE_URI": redis_uri,
        "MODELGUARD_NAMESPACE": f"t-{uuid.uuid4().hex}",
        "MODELGUARD_FLUSH_INTERVAL": "3600",  # only the exit flush writes
        "MODEL_CACHE_DIR": model_cache,
        "SECRET_KEY": "gunicorn-test",
    }
    setup = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "x", "MODELGUARD_DATABASE_URL": db})
    with setup.app_context():
        guard.create_account("g", limits="30/minute")
        key = guard.issue_key("g")
    guard.close(setup)
    with listening_socket() as sock:
        port = sock.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "3", "-b", f"fd://{sock.fileno()}",
             "example_app:create_app()"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=[sock.fileno()],
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()
                time.sleep(0.2)
        body = {"features": [0] * 64}
        statuses = [post(f"{base}/predict", body, key)[0] for _ in range(36)]
        assert statuses.count(200) == 30 and statuses[30:] == [429] * 6
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0].decode()
    assert proc.returncode == 0, out
    rows = sql(db, "select status, count(*) from modelguard_query_events group by status order by status")
    assert rows == [(200, 30), (429, 6)], out
