"""The alert webhook against a real local HTTP server: retries, drops, and
the guard posting one alert per flagged account."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flask_modelguard.alerts import Webhook


@pytest.fixture
def receiver():
    """An HTTP server that records POSTed JSON; ``fail`` first answers get a 500."""
    got: list[dict] = []
    state = {"fail": 0, "headers": []}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["headers"].append(dict(self.headers))
            if state["fail"] > 0:
                state["fail"] -= 1
                self.send_response(500)
            else:
                got.append(body)
                self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", got, state
    server.shutdown()
    server.server_close()


def test_alerts_are_retried_until_delivered(receiver):
    url, got, state = receiver
    state["fail"] = 2
    hook = Webhook(url, retries=3, backoff=0.01, headers={"Authorization": "Bearer t"})
    hook.send({"account": "a"})
    hook.send({"account": "b"})
    assert hook.flush(5)
    assert [g["account"] for g in got] == ["a", "b"]
    assert (hook.delivered, hook.dropped) == (2, 0)
    assert state["headers"][0]["Authorization"] == "Bearer t"


def test_an_alert_is_dropped_and_counted_after_the_last_try(receiver, caplog):
    url, got, state = receiver
    state["fail"] = 10
    hook = Webhook(url, retries=1, backoff=0.01)
    hook.send({"account": "a"})
    assert hook.flush(5)
    assert got == [] and hook.dropped == 1 and "webhook failed after 2 tries" in caplog.text
    unreachable = Webhook("http://127.0.0.1:9/nothing", retries=0, timeout=0.5)
    unreachable.send({"account": "x"})
    assert unreachable.flush(5) and unreachable.dropped == 1
    full = Webhook(url, max_queue=0)
    full.send({"account": "y"})
    assert full.dropped == 1
    with pytest.raises(ValueError):
        Webhook("ftp://example.org")


def test_the_guard_posts_one_alert_per_flagged_account(receiver, make_guarded):
    url, got, _ = receiver
    g = make_guarded(MODELGUARD_ALERT_WEBHOOK=url)
    name, key = g.account()
    with g.app.app_context():
        g.guard.add_canaries([[6.0, 6.0]])
    assert g.predict(key, {"features": [6.0, 6.0]}).status_code == 200
    assert g.predict(key, {"features": [6.0, 6.0]}).status_code == 200
    g.guard.flush(g.app)
    state = g.guard.state(g.app)
    assert state.webhook.flush(5)
    assert len(got) == 1
    assert got[0]["event"] == "account_flagged" and got[0]["account"] == name
    assert got[0]["action"] == "canary" and "canary" in got[0]["reason"]
