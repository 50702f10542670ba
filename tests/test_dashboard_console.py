"""The dashboard's console pages and actions (Flask's test client, on SQLite
and PostgreSQL): accounts searched, filtered, sorted and paged; every action
a false positive or an incident needs, each audited and effective at the
account's next request; the alerts pages; export; verifying a suspect."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import threading
from typing import Any

import pytest

from tests.conftest import problem_of
from tests.test_dashboard import UI, audit, csrf_of, rows_of, sign_in


@pytest.fixture
def console(make_guarded):
    g = make_guarded()
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    client = g.app.test_client()
    assert sign_in(client, token).status_code == 302
    return g, client


def post(client: Any, path: str, page: Any = None, **data: Any) -> Any:
    """POST a dashboard form with the CSRF token of ``page`` (else of the overview)."""
    page = page if page is not None else client.get(f"{UI}/")
    return client.post(f"{UI}{path}", data={**data, "csrf_token": csrf_of(page)})


def test_accounts_search_filter_sort_and_paging(console):
    g, client = console
    for n in range(30):
        g.account(f"team-{n:02d}", tier="pro" if n % 3 == 0 else "free")
    g.account("odd-one")
    with g.app.app_context():
        g.guard.update_account("team-07", flagged=True, score=0.8)
    first = client.get(f"{UI}/accounts?sort=name")
    assert rows_of(first) == sorted(["odd-one"] + [f"team-{n:02d}" for n in range(24)])
    assert "1–25 of 31" in first.get_data(as_text=True) and 'id="next-page"' in first.get_data(as_text=True)
    second = client.get(f"{UI}/accounts?sort=name&page=2")
    assert rows_of(second) == [f"team-{n:02d}" for n in range(24, 30)]
    assert rows_of(client.get(f"{UI}/accounts?q=TEAM-1"))[:1] == ["team-10"]  # case-insensitive, part of the name
    assert len(rows_of(client.get(f"{UI}/accounts?q=team-1&sort=name"))) == 10
    assert rows_of(client.get(f"{UI}/accounts?flagged=yes")) == ["team-07"]
    assert rows_of(client.get(f"{UI}/accounts?tier=pro&sort=name")) == [f"team-{n:02d}" for n in range(0, 30, 3)]
    assert rows_of(client.get(f"{UI}/accounts"))[0] == "team-07"  # default: highest score first
    assert "No account matches." in client.get(f"{UI}/accounts?q=nobody").get_data(as_text=True)
    for bad in ("page=0", "page=x", "sort=secret", "flagged=maybe", "status=gone", "q=" + "x" * 200):
        refused = client.get(f"{UI}/accounts?{bad}")
        assert refused.status_code == 400 and 'id="error-detail"' in refused.get_data(as_text=True), bad


def test_create_account_shows_its_first_key_once_and_the_key_works(console):
    g, client = console
    shown = post(client, "/accounts", name="new-co", tier="pro", limits="5/minute", issue_key="1")
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    key = re.search(r'<code id="new-key" class="secret">([^<]+)</code>', shown.get_data(as_text=True))[1]
    assert g.predict(key).status_code == 200
    account = client.get(f"{UI}/accounts/new-co").get_data(as_text=True)
    assert key not in account and "own limits: 5/minute" in account
    assert [e["action"] for e in audit(g)[:2]] == ["issue-key", "create-account"]
    again = post(client, "/accounts", name="new-co")
    assert again.status_code == 400 and "already exists" in again.get_data(as_text=True)
    assert post(client, "/accounts", name="").status_code == 400
    plain = post(client, "/accounts", name="no-key-co")
    assert plain.status_code == 302 and client.get(plain.location).status_code == 200


def test_unflag_allowlist_and_block_take_effect_and_are_audited(console):
    g, client = console
    name, key = g.account("suspect")
    with g.app.app_context():
        g.guard.update_account(name, flagged=True, score=0.9)
    page = client.get(f"{UI}/accounts/{name}")
    assert 'id="unflag"' in page.get_data(as_text=True)
    assert post(client, f"/accounts/{name}/unflag", page).status_code == 302
    state = g.guard.state(g.app)
    assert state.repository.get_account(name)["flagged"] is False
    assert audit(g)[0]["action"] == "update-account" and audit(g)[0]["after"] == {"flagged": False}
    assert post(client, f"/accounts/{name}/allowlist", on="1").status_code == 302
    assert state.repository.get_account(name)["allowlisted"] is True
    text = client.get(f"{UI}/accounts/{name}").get_data(as_text=True)
    assert "allow-listed" in text and "Remove from allow-list" in text
    assert post(client, f"/accounts/{name}/allowlist", on="0").status_code == 302
    assert state.repository.get_account(name)["allowlisted"] is False
    assert post(client, f"/accounts/{name}/status", status="suspended").status_code == 302
    assert problem_of(g.predict(key))["status"] == 403
    assert post(client, f"/accounts/{name}/status", status="active").status_code == 302
    assert g.predict(key).status_code == 200
    assert post(client, f"/accounts/{name}/status", status="gone").status_code == 400


def test_tier_and_limits_change_reaches_the_next_request(console):
    g, client = console
    name, key = g.account("grower", limits="2/minute")
    assert g.predict(key).headers["X-RateLimit-Limit"] == "2"
    assert post(client, f"/accounts/{name}/plan", tier="pro", limits="7/minute").status_code == 302
    assert g.predict(key).headers["X-RateLimit-Limit"] == "7"
    assert g.guard.state(g.app).repository.get_account(name)["tier"] == "pro"
    assert post(client, f"/accounts/{name}/plan", tier="pro", limits="").status_code == 302
    assert g.guard.state(g.app).repository.get_account(name)["limits"] is None  # the tier's again
    assert audit(g)[0]["after"] == {"tier": "pro", "limits": None}
    refused = post(client, f"/accounts/{name}/plan", tier="no-such-tier", limits="")
    assert refused.status_code == 400


def test_issue_rotate_and_revoke_keys(console):
    g, client = console
    name, old = g.account("keyed")
    issued = post(client, f"/accounts/{name}/keys")
    new = re.search(r'<code id="new-key" class="secret">([^<]+)</code>', issued.get_data(as_text=True))[1]
    assert g.predict(new).status_code == 200 and g.predict(old).status_code == 200
    prefix = old.split("_")[1]
    assert post(client, f"/keys/{prefix}/revoke").status_code == 302
    assert problem_of(g.predict(old))["type"].endswith("revoked-api-key")
    assert g.predict(new).status_code == 200
    assert audit(g)[0]["action"] == "revoke-key" and audit(g)[0]["target"] == prefix
    assert post(client, f"/keys/{prefix}/revoke").status_code == 400  # already revoked
    rows = client.get(f"{UI}/accounts/{name}").get_data(as_text=True).split('id="keys"')[1].split("</table>")[0]
    assert re.findall(r'class="key-state">(\w+)<', rows) == ["revoked", "live"]


def test_account_console_shows_queries_traffic_and_exports(console):
    g, client = console
    name, key = g.account("busy", limits="3/minute")
    for n in range(5):
        g.predict(key, {"features": [float(n), 1.0]})
    g.guard.flush(g.app)
    page = client.get(f"{UI}/accounts/{name}?range=hour").get_data(as_text=True)
    events = page.split('id="events"')[1].split("</table>")[0]
    assert events.count("<tr") == 1 + 5 and events.count('class="refused"') == 2  # 2 over the limit: 429
    assert 'id="chart-requests"' in page and "answered 3, limit or quota 2" in page
    export = client.get(f"{UI}/accounts/{name}/events.csv")
    assert export.status_code == 200 and "busy-events.csv" in export.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(export.get_data(as_text=True))))
    assert [r["status"] for r in rows] == ["200"] * 3 + ["429"] * 2 and "input" not in rows[0]
    assert audit(g)[0]["action"] == "export-events"
    lines = client.get(f"{UI}/accounts/{name}/events.jsonl").get_data(as_text=True).splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["status"] == 200
    assert client.get(f"{UI}/accounts/{name}/events.xml").status_code == 404


def test_alerts_page_and_an_alerts_detail(console):
    g, client = console
    _, key = g.account("honey", limits="10/minute")
    with g.app.app_context():
        g.guard.add_canaries([[9.0, 9.0]])
    g.predict(key, {"features": [9.0, 9.0]})
    g.guard.flush(g.app)
    listing = client.get(f"{UI}/alerts").get_data(as_text=True)
    alert_id = re.search(r'href="[^"]*/alerts/(\d+)"', listing)[1]
    assert "sent a canary input" in listing
    detail = client.get(f"{UI}/alerts/{alert_id}")
    text = detail.get_data(as_text=True)
    assert detail.status_code == 200 and 'id="alert-reason">' in text and "sent a canary input" in text
    assert 'id="alert-account"' in text and 'id="chart-score"' in text
    done = post(client, f"/alerts/{alert_id}/ack", detail, next=f"{UI}/alerts/{alert_id}")
    assert done.status_code == 302 and done.location == f"{UI}/alerts/{alert_id}"
    assert "acknowledged by ops" in client.get(done.location).get_data(as_text=True)
    assert "No open alerts." in client.get(f"{UI}/alerts").get_data(as_text=True)
    assert f"/alerts/{alert_id}" in client.get(f"{UI}/alerts?show=all").get_data(as_text=True)
    assert client.get(f"{UI}/alerts/999999").status_code == 404
    assert client.get(f"{UI}/alerts?show=secret").status_code == 400


def test_overview_ranges(console):
    g, client = console
    _, key = g.account("someone", limits="100/minute")
    g.predict(key)
    g.guard.flush(g.app)
    for query in ("", "?range=hour", "?range=week", "?range=custom&from=2027-01-14&to=2027-01-16"):
        page = client.get(f"{UI}/{query}")
        assert page.status_code == 200 and page.get_data(as_text=True).count('class="chart overtime"') == 3, query
    assert re.search(r'id="total-requests">1<', client.get(f"{UI}/?range=hour").get_data(as_text=True))
    for bad in ("range=year", "range=custom&from=yesterday", "range=custom&from=2027-01-16&to=2027-01-14"):
        assert client.get(f"{UI}/?{bad}").status_code == 400, bad


def test_verify_a_suspect_from_uploaded_predictions(make_guarded):
    g = make_guarded(MODELGUARD_WATERMARK=1.0)  # every answer a watermark: records at once
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    client = g.app.test_client()
    sign_in(client, token)
    name, key = g.account(limits="1000/second")
    served = [g.predict(key, {"features": [float(i), 2.0]}).get_json()["label"] for i in range(30)]
    g.guard.flush(g.app)
    inputs = json.loads(client.get(f"{UI}/accounts/{name}/watermark-inputs.json").get_data())["inputs"]
    assert len(inputs) == 30
    page = client.get(f"{UI}/accounts/{name}")

    def upload(labels: Any) -> Any:
        data = {"csrf_token": csrf_of(page), "predictions": (io.BytesIO(json.dumps(labels).encode()), "p.json")}
        return client.post(f"{UI}/accounts/{name}/verify", data=data, content_type="multipart/form-data")

    copied = upload(served).get_data(as_text=True)
    assert 'id="verdict">claimed' in copied and 'id="matches">30<' in copied
    honest = html.unescape(upload([1] * 30).get_data(as_text=True))
    assert 'id="verdict">not claimed' in honest and "no claim is made" in honest
    assert upload([1]).status_code == 400  # not one label per input
    neither = client.post(f"{UI}/accounts/{name}/verify", data={"csrf_token": csrf_of(page)})
    assert neither.status_code == 400 and "one of the two" in neither.get_data(as_text=True)
    assert audit(g)[0]["action"] == "verify-watermark"


def test_an_alerts_evidence_is_the_evaluation_that_raised_it(console):
    g, client = console
    name, _ = g.account("judged")
    state = g.guard.state(g.app)
    account_id = state.repository.get_account(name)["id"]
    base = {c: None for c in ("key_id", "route", "status", "latency_ms", "n_instances", "fingerprint", "labels",
                              "top_confidences", "input")}
    base.update(key_id=1, route="r", status=200, latency_ms=1.0, n_instances=1, canary=False, watermarks=[])
    for ts, queries, reasons in ((10.0, 20, ["ADD 40.0 > 30.0 at 20 distinct queries"]),
                                 (20.0, 110, ["ADD 38.0 > 9.5 at 110 distinct queries"])):
        evaluation = {"account_id": account_id, "ts": ts, "queries": queries, "reasons": reasons,
                      "scores": {"malicious": 1.0, "add_ratio": 4.0}}
        state.pipeline.write([{**base, "ts": ts, "account_id": account_id, "evaluation": evaluation}])
    alert = state.admin.alerts(account_id=account_id)[0][-1]  # the first, raised by the evaluation at 20 queries
    assert alert["reason"] == "ADD 40.0 > 30.0 at 20 distinct queries"
    assert state.admin.evaluation_for(account_id, alert["ts"], alert["reason"])["queries"] == 20  # not the later one
    assert state.admin.evaluation_for(account_id, alert["ts"], "sent a canary input")["queries"] == 110
    assert state.admin.evaluation_for(account_id, 5.0, "anything") is None
    page = client.get(f"{UI}/alerts/{alert['id']}").get_data(as_text=True)
    assert "after 20 queries" in page and 'id="evidence"' in page


def test_every_action_needs_the_csrf_token_and_changes_nothing_without(console):
    g, client = console
    name, key = g.account("target", limits="5/minute")
    with g.app.app_context():
        g.guard.update_account(name, flagged=True)
    prefix = key.split("_")[1]
    before = g.guard.state(g.app).repository.get_account(name)
    for path, data in ((f"/accounts/{name}/unflag", {}), (f"/accounts/{name}/allowlist", {"on": "1"}),
                       (f"/accounts/{name}/plan", {"tier": "pro", "limits": ""}), (f"/accounts/{name}/keys", {}),
                       (f"/keys/{prefix}/revoke", {}), ("/accounts", {"name": "sneaky"}),
                       (f"/accounts/{name}/verify", {"url": "http://127.0.0.1:9/"})):
        for token in (None, "forged"):
            sent = {**data, **({"csrf_token": token} if token else {})}
            refused = client.post(f"{UI}{path}", data=sent)
            assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True), path
    assert g.guard.state(g.app).repository.get_account(name) == before
    assert g.predict(key).status_code == 200 and len(g.guard.list_keys(name, app=g.app)) == 1
    assert [e["action"] for e in audit(g)] == ["dashboard-login"]


def test_verify_a_suspect_at_its_url(make_guarded):
    """The suspect is a prediction API over real HTTP: it is sent the watermark inputs."""
    from flask import Flask, request
    from werkzeug.serving import make_server

    g = make_guarded(MODELGUARD_WATERMARK=1.0)
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    client = g.app.test_client()
    sign_in(client, token)
    name, key = g.account(limits="1000/second")
    served = {json.dumps([float(i), 2.0]): g.predict(key, {"features": [float(i), 2.0]}).get_json()["label"]
              for i in range(25)}
    g.guard.flush(g.app)
    suspect = Flask("suspect")
    asked: list[Any] = []

    @suspect.post("/predict")
    def predict() -> Any:  # a clone that learned every watermark answer
        inputs = request.get_json()["instances"]
        asked.extend(inputs)
        return {"predictions": [{"label": served[json.dumps(x)]} for x in inputs]}

    server = make_server("127.0.0.1", 0, suspect, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        page = client.get(f"{UI}/accounts/{name}")
        url = f"http://127.0.0.1:{server.server_port}/predict"
        shown = post(client, f"/accounts/{name}/verify", page, url=url).get_data(as_text=True)
        assert 'id="verdict">claimed' in shown and 'id="matches">25<' in shown and len(asked) == 25
        refused = post(client, f"/accounts/{name}/verify", page, url="http://127.0.0.1:9/predict")
        assert refused.status_code == 400 and "Could not query the suspect" in refused.get_data(as_text=True)
        assert post(client, f"/accounts/{name}/verify", page, url="file:///etc/passwd").status_code == 400
        bad_port = post(client, f"/accounts/{name}/verify", page, url="http://x:abc/")  # http.client.InvalidURL
        assert bad_port.status_code == 400 and "Could not query the suspect" in bad_port.get_data(as_text=True)
    finally:
        server.shutdown()


def test_hostile_requests_get_a_clear_refusal_not_a_500(console):
    from flask_modelguard.admin.session import MAX_BODY

    g, client = console
    name, _ = g.account("target")
    anonymous = g.app.test_client()
    huge = anonymous.post(f"{UI}/login", data=b"x" * (MAX_BODY + 10),
                          content_type="multipart/form-data; boundary=b")
    assert huge.status_code == 413  # refused before the form is parsed: nothing spooled to disk
    assert client.get(f"{UI}/accounts?page=²").status_code == 400
    assert client.get(f"{UI}/?range=custom&from=0001-01-01&to=0001-12-31").status_code == 400
    page = client.get(f"{UI}/accounts/{name}")
    done = post(client, "/alerts/1/ack", page, next=f"{UI}/%0d%0aX-Evil: 1")
    assert done.status_code in (302, 404) and "X-Evil" not in done.headers
    deep = {"csrf_token": csrf_of(page), "predictions": (io.BytesIO(b"[" * 200_000), "p.json")}
    nested = client.post(f"{UI}/accounts/{name}/verify", data=deep, content_type="multipart/form-data")
    assert nested.status_code == 400 and "not JSON" in nested.get_data(as_text=True)
