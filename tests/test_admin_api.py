"""The admin API through real requests: admin authentication, accounts,
keys, scores, alerts, audit log, query-log export, watermark verification,
health; and schemathesis against its OpenAPI document."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from tests.conftest import problem_of

API = "/modelguard/api"


@pytest.fixture
def admin(make_guarded):
    g = make_guarded()
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    return g, {"Authorization": f"Bearer {token}"}


def test_admin_credentials(admin):
    g, auth = admin
    client = g.client
    assert problem_of(client.get(f"{API}/accounts"))["status"] == 401
    assert client.get(f"{API}/accounts").headers["WWW-Authenticate"].startswith("Bearer")
    assert problem_of(client.get(f"{API}/accounts", headers={"Authorization": "Bearer mga_nope"}))["status"] == 401
    _, key = g.account()
    assert problem_of(client.get(f"{API}/accounts", headers={"Authorization": f"Bearer {key}"}))["status"] == 403
    assert client.get(f"{API}/accounts", headers=auth).status_code == 200
    assert client.get(f"{API}/openapi.json").status_code == 200  # the description is public
    state = g.guard.state(g.app)
    with g.app.app_context():
        state.admin.revoke_token("ops")
    assert client.get(f"{API}/accounts", headers=auth).status_code == 401


def test_accounts_listed_by_score_created_updated_and_audited(admin):
    g, auth = admin
    client = g.client
    for name, score in (("low", 0.1), ("high", 0.9), ("mid", 0.5)):
        g.account(name)
        with g.app.app_context():
            g.guard.update_account(name, score=score)
    page = client.get(f"{API}/accounts?sort=score&limit=2", headers=auth).get_json()
    assert [a["name"] for a in page["items"]] == ["high", "mid"] and page["total"] == 3
    assert [a["name"] for a in client.get(f"{API}/accounts?sort=name", headers=auth).get_json()["items"]] == \
        ["high", "low", "mid"]
    created = client.post(f"{API}/accounts", json={"name": "acme", "tier": "pro"}, headers=auth)
    assert created.status_code == 201 and created.get_json()["tier"] == "pro"
    assert problem_of(client.post(f"{API}/accounts", json={"name": "acme"}, headers=auth))["status"] == 409
    assert problem_of(client.post(f"{API}/accounts", json={"name": "x", "colour": 1}, headers=auth))["status"] == 400
    assert problem_of(client.get(f"{API}/accounts/nobody", headers=auth))["status"] == 404
    changed = client.patch(f"{API}/accounts/acme", json={"status": "suspended", "limits": "5/minute"}, headers=auth)
    assert changed.get_json()["status"] == "suspended" and changed.get_json()["limits"] == "5/minute"
    assert problem_of(client.patch(f"{API}/accounts/acme", json={"status": "gone"}, headers=auth))["status"] == 400
    shown = client.get(f"{API}/accounts/acme", headers=auth).get_json()
    assert shown["limits_effective"] == ["5 per 1 minute"]
    audit = client.get(f"{API}/audit", headers=auth).get_json()["items"]
    assert [e["action"] for e in audit[:2]] == ["update-account", "create-account"]
    assert audit[0]["actor"] == "ops" and audit[0]["before"]["status"] == "active"
    assert audit[0]["after"]["status"] == "suspended"


def test_blocking_refuses_the_next_request_and_keys_rotate(admin):
    g, auth = admin
    client = g.client
    name, key = g.account()
    assert g.predict(key).status_code == 200
    assert client.patch(f"{API}/accounts/{name}", json={"status": "blocked"}, headers=auth).status_code == 200
    assert problem_of(g.predict(key))["status"] == 403
    client.patch(f"{API}/accounts/{name}", json={"status": "active"}, headers=auth)
    issued = client.post(f"{API}/accounts/{name}/keys", headers=auth)
    assert issued.status_code == 201
    new_key = issued.get_json()["key"]
    assert g.predict(new_key).status_code == 200
    rotated = client.post(f"{API}/keys/{new_key.split('_')[1]}/rotate", json={"grace": 0}, headers=auth).get_json()
    assert g.predict(rotated["key"]).status_code == 200
    revoked = client.post(f"{API}/keys/{rotated['prefix']}/revoke", headers=auth)
    assert revoked.status_code == 200 and revoked.get_json()["revoked_at"]
    assert g.predict(rotated["key"]).status_code == 403
    keys = client.get(f"{API}/accounts/{name}/keys", headers=auth).get_json()["items"]
    assert len(keys) == 3 and all("secret" not in json.dumps(k) for k in keys)
    assert problem_of(client.post(f"{API}/keys/zzzzzzzzzz/revoke", headers=auth))["status"] == 404


def test_alerts_from_a_flag_and_acknowledgement(admin):
    g, auth = admin
    client = g.client
    name, key = g.account()
    with g.app.app_context():
        g.guard.add_canaries([[9.0, 9.0]])
    g.predict(key, {"features": [9.0, 9.0]})
    g.guard.flush(g.app)
    alerts = client.get(f"{API}/alerts?open=true", headers=auth).get_json()
    assert alerts["total"] == 1
    alert = alerts["items"][0]
    assert alert["account"] == name and alert["action"] == "canary" and "canary" in alert["reason"]
    acked = client.post(f"{API}/alerts/{alert['id']}/ack", headers=auth).get_json()
    assert acked["acknowledged_by"] == "ops" and acked["changed"] and acked["account"] == alert["account"]
    assert client.get(f"{API}/alerts?open=true", headers=auth).get_json()["total"] == 0
    assert client.get(f"{API}/alerts?account={name}", headers=auth).get_json()["total"] == 1
    assert not client.post(f"{API}/alerts/{alert['id']}/ack", headers=auth).get_json()["changed"]
    scores = client.get(f"{API}/accounts/{name}/scores", headers=auth).get_json()
    assert scores["flagged"] and scores["history"] == []


def test_shadow_mode_alerts_once_without_flagging(make_guarded, caplog):
    from flask_modelguard.signals import account_flagged

    g = make_guarded(MODELGUARD_ACTION="observe")
    signalled = []

    def receiver(app, **kw):
        signalled.append(kw)

    account_flagged.connect(receiver, sender=g.app)
    name, key = g.account()
    state = g.guard.state(g.app)
    account_id = state.repository.get_account(name)["id"]
    base = {c: None for c in ("key_id", "route", "ts", "status", "latency_ms", "n_instances", "fingerprint",
                              "labels", "top_confidences", "input")}
    base.update(key_id=1, route="r", ts=1.0, status=200, latency_ms=1.0, n_instances=1, canary=False, watermarks=[])
    for queries in (30, 40):
        evaluation = {"account_id": account_id, "ts": 1.0, "queries": queries, "scores": {},
                      "reasons": ["ADD 50.0 > 26.3 at 30 distinct queries"]}
        state.pipeline.write([{**base, "account_id": account_id, "evaluation": evaluation}])
    alerts, total = state.admin.alerts()
    assert total == 1 and alerts[0]["action"] == "observe" and alerts[0]["reason"].startswith("ADD")
    assert not state.repository.get_account(name)["flagged"]
    # alerted once, by log and signal too, with the action "observe"
    assert caplog.text.count("shadow mode, not acted on") == 1
    assert [s["action"] for s in signalled] == ["observe"]
    account_flagged.disconnect(receiver, sender=g.app)


def test_query_log_export_streams_jsonl_and_csv_in_a_time_range(admin):
    g, auth = admin
    client = g.client
    name, key = g.account(limits="1000/second")
    for t in (100.0, 200.0, 300.0):
        g.clock.now = t
        g.predict(key, {"features": [t, 1.0]})
    g.guard.flush(g.app)
    lines = client.get(f"{API}/accounts/{name}/events?since=150", headers=auth).get_data(as_text=True).splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["ts"] for r in rows] == [200.0, 300.0] and all("input" not in r for r in rows)
    response = client.get(f"{API}/accounts/{name}/events?format=csv&until=250", headers=auth)
    assert response.mimetype == "text/csv" and "attachment" in response.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [float(r["ts"]) for r in table] == [100.0, 200.0] and table[0]["status"] == "200"
    assert problem_of(client.get(f"{API}/accounts/{name}/events?since=x", headers=auth))["status"] == 400
    assert client.get(f"{API}/audit", headers=auth).get_json()["items"][0]["action"] == "export-events"


def test_watermark_verification_with_uploaded_predictions(make_guarded):
    g = make_guarded(MODELGUARD_WATERMARK=1.0)  # every answer a watermark: records at once
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    auth = {"Authorization": f"Bearer {token}"}
    name, key = g.account(limits="1000/second")
    served = [g.predict(key, {"features": [float(i), 2.0]}).get_json()["label"] for i in range(30)]
    g.guard.flush(g.app)
    inputs = g.client.get(f"{API}/accounts/{name}/watermark-inputs", headers=auth).get_json()["items"]
    assert len(inputs) == 30
    copied = g.client.post(f"{API}/accounts/{name}/verify-watermark", json={"predictions": served}, headers=auth)
    assert copied.status_code == 200 and copied.get_json()["claimed"] and copied.get_json()["matches"] == 30
    honest = g.client.post(f"{API}/accounts/{name}/verify-watermark", json={"predictions": [1] * 30}, headers=auth)
    assert not honest.get_json()["claimed"]
    wrong = g.client.post(f"{API}/accounts/{name}/verify-watermark", json={"predictions": [1]}, headers=auth)
    assert problem_of(wrong)["status"] == 400


def test_probability_mark_verification_names_the_account_and_is_audited(make_guarded):
    """A copy of the marked answers one account received is claimed for it, by
    name, among every account; an unmarked copy is not; bad matrices are a 400."""
    from flask_modelguard import probmark

    g = make_guarded(MODELGUARD_PROBABILITY_MARK=0.2)
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
        key = g.guard.state(g.app).protector.key
    auth = {"Authorization": f"Bearer {token}"}
    names = [g.account()[0] for _ in range(3)]
    with g.app.app_context():
        account_id = g.guard.state(g.app).repository.get_account(names[1])["id"]
    rng = np.random.default_rng(0)
    owner = rng.dirichlet(np.full(10, 0.05), 2000)
    copy = probmark.lift(owner, probmark.account_key(key, account_id), 0.2)
    found = g.client.post(f"{API}/verify-mark", json={"owner": owner.tolist(), "suspect": copy.tolist()}, headers=auth)
    items = found.get_json()["items"]
    assert found.status_code == 200 and items[0]["account"] == names[1] and items[0]["claimed"], items[0]
    assert not any(i["claimed"] for i in items[1:]) and found.get_json()["accounts"] >= 3
    honest = g.client.post(f"{API}/verify-mark", headers=auth,
                           json={"owner": owner.tolist(), "suspect": owner.tolist(), "account": names[1]})
    assert [i["claimed"] for i in honest.get_json()["items"]] == [False]
    for bad in ({"owner": [[0.5, 0.5, 0.0]], "suspect": [[0.5, 0.5]]}, {"owner": "x", "suspect": "y"},
                {"owner": 0.5, "suspect": 0.5}, {"owner": True, "suspect": True}, {"owner": [], "suspect": []},
                {"owner": [[0.2, 0.8, 0.0]]}, {"owner": [[1, 0, 0]], "suspect": [[1, 0, 0]], "account": 3}):
        assert problem_of(g.client.post(f"{API}/verify-mark", json=bad, headers=auth))["status"] == 400, bad
    missing = g.client.post(f"{API}/verify-mark", json={"owner": [[1, 0, 0]], "suspect": [[1, 0, 0]], "account": "nobody"},
                            headers=auth)
    assert problem_of(missing)["status"] == 404
    audit = g.client.get(f"{API}/audit", headers=auth).get_json()["items"]
    assert [a["action"] for a in audit[:2]] == ["verify-mark", "verify-mark"]


def test_health_and_own_auth_hook_and_disabling(make_guarded):
    g = make_guarded(MODELGUARD_ADMIN_AUTH=lambda request: "sso-user" if request.headers.get("X-SSO") else None)
    health = g.client.get(f"{API}/health", headers={"X-SSO": "1"})
    assert health.status_code == 200
    body = health.get_json()
    assert body["status"] == "ok" and body["database"] and body["limits_storage"]
    assert {"queue_depth", "dropped", "alive"} <= set(body["worker"])
    assert g.client.get(f"{API}/health").status_code == 401
    off = make_guarded(MODELGUARD_ADMIN_ENABLED=False)
    assert off.client.get(f"{API}/openapi.json").status_code == 404


def test_review_fixes_names_exports_audit_and_odd_ids(make_guarded):
    """From a security review: names that break paths or headers, CSV
    formulas, whole keys in the audit log, non-ASCII digits as ids."""
    g = make_guarded(MODELGUARD_STORE_INPUTS=True)
    with g.app.app_context():
        auth = {"Authorization": "Bearer " + g.guard.state(g.app).admin.create_token("ops")}
    client = g.client
    for bad in ("x/keys", "a\r\nb", " padded"):
        assert problem_of(client.post(f"{API}/accounts", json={"name": bad}, headers=auth))["status"] == 400
    name = "café ☃ \"q\""
    assert client.post(f"{API}/accounts", json={"name": name}, headers=auth).status_code == 201
    key = client.post(f"{API}/accounts/{name}/keys", headers=auth).get_json()["key"]
    client.patch(f"{API}/accounts/{name}", json={"limits": "1000/second"}, headers=auth)
    assert g.client.post("/predict", json="=HYPERLINK(\"http://evil\")", headers={"X-API-Key": key}).status_code
    g.guard.flush(g.app)
    export = client.get(f"{API}/accounts/{name}/events?format=csv", headers=auth)
    disposition = export.headers["Content-Disposition"]
    assert disposition.isascii() and 'filename="caf' in disposition and "filename*=UTF-8''caf%C3%A9" in disposition
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert rows and all(not (r["input"] or "").startswith("=") for r in rows)
    assert any(r["input"].startswith("'=HYPERLINK") for r in rows)
    assert client.post(f"{API}/keys/{key}/revoke", headers=auth).status_code == 200  # a whole key works ...
    entry = client.get(f"{API}/audit", headers=auth).get_json()["items"][0]
    assert entry["action"] == "revoke-key" and entry["target"] == key.split("_")[1]  # ... but only its prefix is kept
    assert key.split("_")[2] not in json.dumps(client.get(f"{API}/audit?limit=1000", headers=auth).get_json())
    assert problem_of(client.post(f"{API}/alerts/%C2%B2/ack", headers=auth))["status"] == 404
    again = make_guarded()
    with pytest.raises(RuntimeError, match="already initialised"):
        again.guard.init_app(again.app)  # a second init_app on the same app is refused ...
    assert again.client.get(f"{API}/openapi.json").status_code == 200  # ... and the first one's API still answers


def test_a_cookie_trusting_hook_does_not_open_the_api_to_cross_site_forms(make_guarded):
    from flask import session

    g = make_guarded(MODELGUARD_ADMIN_AUTH=lambda request: session.get("user"))

    @g.app.get("/sso-login")
    def sso_login():
        session["user"] = "alice"
        return "ok"

    name, key = g.account()
    prefix = key.split("_")[1]
    client = g.client
    client.get("/sso-login")
    forged = client.post(f"{API}/keys/{prefix}/revoke", data="x=1", content_type="text/plain",
                         headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert problem_of(forged)["status"] == 403
    assert g.predict(key).status_code == 200  # the key still works
    assert client.get(f"{API}/accounts", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200  # reading is fine
    same_site = client.post(f"{API}/keys/{prefix}/revoke", headers={"Sec-Fetch-Site": "same-origin"})
    assert same_site.status_code == 200 and g.predict(key).status_code == 403
    _, key2 = g.account()
    as_json = client.post(f"{API}/keys/{key2.split('_')[1]}/revoke", json={}, headers={"Origin": "https://evil.example"})
    assert as_json.status_code == 200  # a JSON body needs a CORS preflight: not a forgeable form


def test_verify_watermark_against_a_suspect_that_answers_nonsense(make_guarded):
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Nonsense(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"not json")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Nonsense)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        g = make_guarded(MODELGUARD_WATERMARK=1.0)
        with g.app.app_context():
            auth = {"Authorization": "Bearer " + g.guard.state(g.app).admin.create_token("ops")}
        name, key = g.account()
        g.predict(key, {"features": [1.0, 2.0]})
        g.guard.flush(g.app)
        response = g.client.post(f"{API}/accounts/{name}/verify-watermark",
                                 json={"url": f"http://127.0.0.1:{server.server_port}/predict"}, headers=auth)
        assert problem_of(response)["status"] == 400
    finally:
        server.shutdown()
        server.server_close()


def test_unrouted_api_paths_are_problems_and_the_host_app_keeps_its_404s(admin):
    g, auth = admin
    response = g.client.get(f"{API}/accounts/a%0Ab/keys", headers=auth)
    assert problem_of(response)["status"] == 404
    assert problem_of(g.client.delete(f"{API}/accounts", headers=auth))["status"] == 405
    elsewhere = g.client.get("/no-such-page")
    assert elsewhere.status_code == 404 and elsewhere.mimetype == "text/html"


def test_a_reference_put_through_the_api_is_used_and_audited(admin):
    import numpy as np

    g, headers = admin
    client = g.client
    assert client.get(f"{API}/reference", headers=headers).status_code == 404
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    inputs = rng.normal(labels[:, None], 1.0, (60, 3)).tolist()
    bad = client.put(f"{API}/reference", json={"inputs": inputs, "labels": labels.tolist()[:-1]}, headers=headers)
    assert bad.status_code == 400 and problem_of(bad)["detail"].startswith("Send inputs")
    done = client.put(f"{API}/reference", json={"inputs": inputs, "labels": labels.tolist()}, headers=headers)
    assert done.status_code == 200, done.get_json()
    assert done.get_json()["source"] == "api" and done.get_json()["classes"] == ["0", "1"]
    state = g.guard.state(g.app)
    assert state.monitor.reference is not None and state.detection_status()["detectors"]["add"]["live"]
    assert client.get(f"{API}/reference", headers=headers).get_json() == done.get_json()
    with g.app.app_context():
        assert state.admin.audit_entries()[0][0]["action"] == "fit-reference"


def test_health_notices_a_sqlite_file_deleted_under_the_server(tmp_path, caplog):
    import shutil

    from flask_modelguard import ModelGuard
    from tests.conftest import model_app

    folder = tmp_path / "db"
    folder.mkdir()
    guard = ModelGuard()
    app = model_app(guard, MODELGUARD_DATABASE_URL=f"sqlite:///{folder}/m.db")
    try:
        with app.app_context():
            auth = {"Authorization": "Bearer " + guard.state(app).admin.create_token("ops")}
        assert app.test_client().get(f"{API}/health", headers=auth).get_json()["status"] == "ok"
        shutil.rmtree(folder)
        caplog.set_level("ERROR", logger="flask_modelguard")
        health = app.test_client().get(f"{API}/health", headers=auth)
        body = health.get_json()
        assert health.status_code == 503 and body["status"] == "degraded" and not body["database"], body
        assert "is gone" in body["database_problem"]
        guard.state(app)._tick()
        assert "is gone: events written now are lost" in caplog.text
    finally:
        guard.close(app)


def test_health_answers_during_a_database_outage_for_a_token_verified_before(postgres_url):
    """The admin token check needs the database; a token verified within the
    last five minutes still opens health while the database is away, so it
    answers its body (degraded), not a bare 503; an unknown one does not."""
    import uuid

    from sqlalchemy import create_engine

    from flask_modelguard import ModelGuard, models
    from tests.conftest import model_app
    from tests.faults import ToggleProxy

    engine = create_engine(postgres_url)
    models.metadata.drop_all(engine)
    engine.dispose()
    proxy = ToggleProxy(("127.0.0.1", 5432))
    guard = ModelGuard()
    app = model_app(guard, MODELGUARD_DATABASE_URL=postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"),
                    MODELGUARD_NAMESPACE=f"t-{uuid.uuid4().hex}")
    try:
        with app.app_context():
            admin = guard.state(app).admin
            token, other = admin.create_token("ops"), admin.create_token("ops2")
        client = app.test_client()
        assert client.get(f"{API}/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        proxy.down()
        health = client.get(f"{API}/health", headers={"Authorization": f"Bearer {token}"})
        assert health.status_code == 503 and health.get_json()["status"] == "degraded"
        assert not health.get_json()["database"]
        refused = client.get(f"{API}/health", headers={"Authorization": f"Bearer {other}"})
        assert problem_of(refused)["type"].endswith("/database-unavailable")
    finally:
        proxy.down()
        guard.close(app)
