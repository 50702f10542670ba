"""The admin dashboard: sign-in, CSRF, actions and their audit, escaping,
ranking, charts (Flask's test client). The console's other pages and actions:
test_dashboard_console.py; in a real browser: test_dashboard_browser.py."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from flask_modelguard.admin import charts
from flask_modelguard.limitset import limit_set
from flask_modelguard.quotas import QuotaEnforcer
from tests.conftest import problem_of

UI = "/modelguard"
XSS = "<img src=x onerror=alert(1)>"


def csrf_of(page: Any) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.get_data(as_text=True))
    assert match, page.get_data(as_text=True)
    return match[1]


def rows_of(page: Any) -> list[str]:
    """The account names of the accounts page's table, in order."""
    body = page.get_data(as_text=True).split('id="accounts"', 1)[1].split("</table>", 1)[0]
    return [html.unescape(n) for n in re.findall(r'<td [^>]*class="name"><a href="[^"]*">([^<]*)</a>', body)]


def sign_in(client: Any, token: str) -> Any:
    page = client.get(f"{UI}/login")
    return client.post(f"{UI}/login", data={"token": token, "csrf_token": csrf_of(page)})


@pytest.fixture
def admin(make_guarded):
    g = make_guarded()
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    return g, token


@pytest.fixture
def signed_in(admin):
    g, token = admin
    client = g.app.test_client()
    assert sign_in(client, token).status_code == 302
    return g, client


def audit(g: Any) -> list[dict[str, Any]]:
    with g.app.app_context():
        return g.guard.state(g.app).admin.audit_entries()[0]


def test_sign_in_required_and_wrong_tokens_refused(admin):
    g, token = admin
    client = g.app.test_client()
    page = client.get(f"{UI}/accounts/x")
    assert page.status_code == 302 and page.location.startswith(f"{UI}/login?next=")
    assert client.get(f"{UI}/").status_code == 302
    _, key = g.account()
    for wrong, message in (("mga_nope", "Unknown or revoked"), (key, "customer API key"),
                           (token[:-1] + ("0" if token[-1] != "0" else "1"), "Unknown or revoked")):
        refused = sign_in(client, wrong)
        assert refused.status_code == 401 and message in refused.get_data(as_text=True)
        assert client.get(f"{UI}/").status_code == 302
    login = client.get(f"{UI}/login?next={UI}/accounts/nobody")
    signed = client.post(f"{UI}/login", data={"token": token, "csrf_token": csrf_of(login),
                                              "next": f"{UI}/accounts/nobody"})
    assert signed.status_code == 302 and signed.location == f"{UI}/accounts/nobody"
    assert client.get(f"{UI}/accounts/nobody").status_code == 404
    index = client.get(f"{UI}/")
    assert index.status_code == 200 and ">ops</strong>" in index.get_data(as_text=True)
    assert index.headers["Cache-Control"] == "no-store" and index.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in index.headers["Content-Security-Policy"]
    assert client.get(f"{UI}/static/dashboard.css").status_code == 200
    assert audit(g)[0]["action"] == "dashboard-login" and audit(g)[0]["actor"] == "ops"
    # an open redirect is not: a foreign next goes to the index
    other = g.app.test_client()
    login = other.get(f"{UI}/login")
    assert other.post(f"{UI}/login", data={"token": token, "csrf_token": csrf_of(login),
                                           "next": "https://evil.example/"}).location == f"{UI}/"
    # signing out, and revoking the token, both end a session
    assert client.post(f"{UI}/logout", data={"csrf_token": csrf_of(index)}).status_code == 302
    assert client.get(f"{UI}/").status_code == 302
    assert other.get(f"{UI}/").status_code == 200
    with g.app.app_context():
        g.guard.state(g.app).admin.revoke_token("ops")
    assert other.get(f"{UI}/").status_code == 302


def test_csrf_missing_or_wrong_is_refused_and_changes_nothing(signed_in):
    g, client = signed_in
    name, key = g.account()
    before = len(audit(g))
    for data in ({"status": "blocked"}, {"status": "blocked", "csrf_token": "forged"},
                 {"status": "blocked", "csrf_token": "ü"}):
        refused = client.post(f"{UI}/accounts/{name}/status", data=data)
        assert refused.status_code == 400 and "CSRF" in refused.get_data(as_text=True)
    assert client.post(f"{UI}/logout").status_code == 400
    # a token from another session is not this session's
    stranger = g.app.test_client()
    foreign = csrf_of(stranger.get(f"{UI}/login"))
    assert client.post(f"{UI}/accounts/{name}/status", data={"status": "blocked", "csrf_token": foreign}).status_code == 400
    # nor can a login form be posted without the token it was served with
    assert g.app.test_client().post(f"{UI}/login", data={"token": "x"}).status_code == 400
    assert g.predict(key).status_code == 200
    with g.app.app_context():
        assert g.guard.state(g.app).repository.get_account(name)["status"] == "active"
    assert len(audit(g)) == before


def test_block_via_the_form_is_audited_and_refuses_the_next_request(signed_in):
    g, client = signed_in
    name, key = g.account()
    assert g.predict(key).status_code == 200
    page = client.get(f"{UI}/accounts/{name}")
    assert 'id="block"' in page.get_data(as_text=True)
    done = client.post(f"{UI}/accounts/{name}/status", data={"status": "blocked", "csrf_token": csrf_of(page)})
    assert done.status_code == 302 and done.location == f"{UI}/accounts/{name}"
    page = client.get(done.location).get_data(as_text=True)
    assert "status-blocked" in page and "active → blocked" in page and 'id="unblock"' in page
    assert problem_of(g.predict(key))["status"] == 403
    entry = audit(g)[0]
    assert (entry["actor"], entry["action"], entry["target"]) == ("ops", "update-account", name)
    assert entry["before"] == {"status": "active"} and entry["after"] == {"status": "blocked"}
    page = client.get(f"{UI}/accounts/{name}")
    client.post(f"{UI}/accounts/{name}/status", data={"status": "active", "csrf_token": csrf_of(page)})
    assert g.predict(key).status_code == 200
    bad = client.post(f"{UI}/accounts/{name}/status", data={"status": "gone", "csrf_token": csrf_of(page)})
    assert bad.status_code == 400
    missing = client.post(f"{UI}/accounts/nobody/status", data={"status": "blocked", "csrf_token": csrf_of(page)})
    assert missing.status_code == 404


def test_rotation_shows_the_new_key_once(signed_in):
    g, client = signed_in
    name, key = g.account()
    prefix = key.split("_")[1]
    page = client.get(f"{UI}/accounts/{name}")
    shown = client.post(f"{UI}/keys/{prefix}/rotate", data={"grace": "0", "csrf_token": csrf_of(page)})
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    new_key = re.search(r'<code id="new-key" class="secret">([^<]+)</code>', shown.get_data(as_text=True))[1]
    assert new_key.startswith("mg_") and new_key != key
    assert g.predict(new_key).status_code == 200
    assert g.predict(key).status_code in (401, 403)  # no grace: the old key is expired
    again = client.get(f"{UI}/accounts/{name}").get_data(as_text=True)
    assert new_key.split("_")[1] in again and new_key not in again and new_key.rsplit("_", 1)[1] not in again
    entry = audit(g)[0]
    assert (entry["actor"], entry["action"], entry["target"]) == ("ops", "rotate-key", prefix)
    assert entry["after"] == {"prefix": new_key.split("_")[1], "grace": 0.0}
    bad = client.post(f"{UI}/keys/{new_key.split('_')[1]}/rotate", data={"grace": "soon", "csrf_token": csrf_of(page)})
    assert bad.status_code == 400
    assert client.post(f"{UI}/keys/zzzzzzzzzz/rotate", data={"csrf_token": csrf_of(page)}).status_code == 404


def test_user_controlled_text_is_escaped(signed_in):
    g, client = signed_in
    name, _ = g.account(XSS)
    state = g.guard.state(g.app)
    account_id = state.repository.get_account(name)["id"]
    base = {c: None for c in ("key_id", "route", "ts", "status", "latency_ms", "n_instances", "fingerprint",
                              "labels", "top_confidences", "input")}
    base.update(key_id=1, route="r", ts=1.0, status=200, latency_ms=1.0, n_instances=1, canary=False, watermarks=[])
    evaluation = {"account_id": account_id, "ts": 1.0, "queries": 30, "scores": {"malicious": 0.9, "add_ratio": 1.8},
                  "reasons": ['<img src=x onerror="alert(2)">']}
    state.pipeline.write([{**base, "account_id": account_id, "evaluation": evaluation}])
    index = client.get(f"{UI}/")
    text = index.get_data(as_text=True)
    assert XSS not in text and html.escape(XSS, quote=False) in text
    assert "<img src=x" not in text  # the alert's reason
    href = re.search(r'<td [^>]*class="name"><a href="([^"]+)">', text)[1]  # the flagged accounts' table
    page = client.get(html.unescape(href))
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    assert XSS not in text and "<img src=x" not in text and "&lt;img src=x" in text
    assert 'id="chart-score"><svg class="chart overtime"' in text and '<svg class="chart breakdown"' in text
    for path in ("/accounts", "/alerts", f"/alerts/{state.admin.alerts()[0][0]['id']}"):
        text = client.get(f"{UI}{path}").get_data(as_text=True)
        assert XSS not in text and "<img src=x" not in text, path
    # names that are not URL-safe reach their page, and their actions, through the links
    _, odd_key = g.account("team a b?c#%d")
    listing = client.get(f"{UI}/accounts").get_data(as_text=True)
    href = re.search(r'<td [^>]*class="name"><a href="([^"]*team[^"]*)">', listing)[1]
    page = client.get(html.unescape(href))
    assert page.status_code == 200 and 'id="account-name">team a b?c#%d<' in page.get_data(as_text=True)
    action = html.unescape(re.search(r'<form method="post" action="([^"]+/status)"', page.get_data(as_text=True))[1])
    assert client.post(action, data={"status": "blocked", "csrf_token": csrf_of(page)}).status_code == 302
    assert problem_of(g.predict(odd_key))["status"] == 403


def test_charts_draw_evidence_and_timeline():
    scores = {"add_ratio": 1.8, "prada_w": 0.95, "unique_ratio": 0.9, "isolation_forest_ratio": 1.2,
              "hour_unique_ratio": 0.4, "window_unique_ratio": 1.0, "steps_ratio": 0.2, "malicious": 0.9}
    # window statistics (hour_unique_ratio, ...) are behaviour, not detectors: not drawn as ones
    assert charts.evidence(scores, 0.9) == [("PRADA", pytest.approx(0.5)), ("ADD", 1.8), ("sign steps", 0.2),
                                            ("isolation forest", 1.2)]
    assert charts.evidence({"add_ratio": float("nan")}, 0.9) == [("PRADA", None), ("ADD", None)]
    bars = str(charts.breakdown([("ADD", 25.0), ("PRADA", None), ("<b>", 0.5)]))
    assert bars.count('class="bar over"') == 1 and bars.count('class="bar"') == 1
    assert "no verdict yet" in bars and "25.00×+" in bars and "&lt;b&gt;" in bars and "<b>" not in bars
    start = 1_764_547_200.0  # 2025-12-01 00:00 UTC
    points = [(start + 60 * q, q / 1000, ["ADD <x>"] if q >= 500 else []) for q in range(10, 1010, 1)]
    line = str(charts.scores_over_time(points, start, start + 86400))
    assert line.count("<circle") <= charts.MAX_POINTS + 2 and 'class="flag" cx' in line
    assert "2025-12-01 08:20:00: 0.50" in line  # where the flag starts (query 500, at 500 minutes) is kept
    assert 'class="threshold"' in line and "ADD &lt;x&gt;" in line and "style=" not in line
    assert ">00:00<" in line and ">12:00<" in line  # the x axis is time


def test_time_charts_stack_series_and_leave_gaps():
    starts = [0.0, 60.0, 120.0]
    bars = str(charts.stacked_bars(starts, 60, 180, [charts.Series("answered", [3, 0, 5], "s0"),
                                                     charts.Series("limit <q>", [1, 0, 0], "s1")], "Requests"))
    assert bars.count('<rect class="s0" x=') == 2 + 1 and bars.count('<rect class="s1" x=') == 1 + 1  # bars + swatch
    assert "answered 3, limit &lt;q&gt; 1" in bars and ">5<" in bars and ">2.5<" in bars  # axis top: 1-2-5 steps
    lines = str(charts.lines_over_time(starts, 60, 180, [charts.Series("mean", [2.0, None, 4.0])], "Latency", "ms"))
    assert "<polyline" not in lines and lines.count("<circle") == 2  # a gap, not a line through the missing step


def test_own_auth_hook_needs_no_sign_in_but_still_csrf(make_guarded):
    g = make_guarded(MODELGUARD_ADMIN_AUTH=lambda request: "sso-user" if request.headers.get("X-SSO") else None)
    client = g.app.test_client()
    name, key = g.account()
    assert client.get(f"{UI}/").status_code == 302
    page = client.get(f"{UI}/accounts/{name}", headers={"X-SSO": "1"})
    assert page.status_code == 200 and "sso-user" in page.get_data(as_text=True)
    assert 'id="logout"' not in page.get_data(as_text=True)
    url = f"{UI}/accounts/{name}/status"
    assert client.post(url, data={"status": "blocked"}, headers={"X-SSO": "1"}).status_code == 400
    assert client.post(url, data={"status": "blocked", "csrf_token": csrf_of(page)},
                       headers={"X-SSO": "1"}).status_code == 302
    assert problem_of(g.predict(key))["status"] == 403
    assert audit(g)[0]["actor"] == "sso-user"


def test_accounts_ranked_by_score_with_quota_use_and_alerts(signed_in):
    g, client = signed_in
    for name, score in (("low", 0.1), ("high", 0.9), ("mid", 0.5), ("zero", 0.0)):
        g.account(name, limits="10/minute;100/day")
        with g.app.app_context():
            g.guard.update_account(name, score=score)
    _, key = g.account("canary-sender", limits="10/minute")
    with g.app.app_context():
        g.guard.add_canaries([[9.0, 9.0]])
    g.predict(key, {"features": [9.0, 9.0]})
    g.predict(key, {"instances": [[1.0], [2.0]]})
    g.guard.flush(g.app)
    listing = client.get(f"{UI}/accounts")
    assert rows_of(listing)[:4] == ["high", "mid", "low", "canary-sender"]  # flagged wins a tie at 0.0
    text = listing.get_data(as_text=True)
    assert "3 / 10 <span class=\"muted\">per minute</span>" in text and "0 / 100 <span class=\"muted\">per day</span>" in text
    index = client.get(f"{UI}/")
    text = index.get_data(as_text=True)
    assert "sent a canary input" in text
    alert_id = re.search(r'/alerts/(\d+)/ack', text)[1]
    done = client.post(f"{UI}/alerts/{alert_id}/ack", data={"csrf_token": csrf_of(index), "next": f"{UI}/"})
    assert done.status_code == 302 and done.location == f"{UI}/"
    assert "No open alerts." in client.get(f"{UI}/").get_data(as_text=True)
    assert audit(g)[0]["action"] == "acknowledge-alert" and audit(g)[0]["actor"] == "ops"
    account = client.get(f"{UI}/accounts/canary-sender").get_data(as_text=True)
    assert "acknowledged by ops" in account and "Not evaluated yet" in account


def test_no_secret_key_is_a_clear_error_and_admin_off_removes_it(make_guarded):
    g = make_guarded(SECRET_KEY=None, MODELGUARD_SECRET="the guard's own")  # the dashboard still needs SECRET_KEY
    page = g.app.test_client().get(f"{UI}/login")
    assert page.status_code == 500 and "SECRET_KEY" in page.get_data(as_text=True)
    assert g.app.test_client().get(f"{UI}/static/dashboard.css").status_code == 200
    off = make_guarded(MODELGUARD_ADMIN_ENABLED=False)
    assert off.app.test_client().get(f"{UI}/").status_code == 404


def test_quota_usage_counts_the_current_window():
    enforcer = QuotaEnforcer("memory://", namespace="usage-test")
    limits = limit_set("5/second;100/day")
    assert enforcer.usage(1, limits) == [(limits.items[0], 0), (limits.items[1], 0)]
    enforcer.hit(1, limits, cost=3)
    assert [n for _, n in enforcer.usage(1, limits)] == [3, 3]
    assert enforcer.usage(1, limit_set("")) == []
    moving = QuotaEnforcer("memory://", strategy="moving-window")
    moving.hit(2, limits, cost=2)
    assert [n for _, n in moving.usage(2, limits)] == [2, 2]
    pytest.importorskip("redis")
    down = QuotaEnforcer("redis://127.0.0.1:1", storage_options={"socket_connect_timeout": 0.2})
    assert [n for _, n in down.usage(1, limits)] == [0, 0]


def test_failed_detection_shows_on_the_account_page(make_guarded, monkeypatch):
    from flask_modelguard.monitor import Monitor

    g = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600, MODELGUARD_DETECTION_MIN_QUERIES=2)
    with g.app.app_context():
        token = g.guard.state(g.app).admin.create_token("ops")
    client = g.app.test_client()
    assert sign_in(client, token).status_code == 302
    name, key = g.account(limits="1000/minute")

    def broken(self, account_id, ts):
        raise FloatingPointError("overflow")

    monkeypatch.setattr(Monitor, "evaluate", broken)
    for i in range(3):
        assert g.predict(key, {"features": [float(i)] * 8}).status_code == 200
    g.guard.flush(g.app)
    page = client.get(f"{UI}/accounts/{name}").get_data(as_text=True)
    assert 'id="detection-errors"' in page and "Detection failed 1 time</strong>" in page
    assert "detection failed (FloatingPointError)" in page


def test_a_session_cookie_replayed_after_sign_out_signs_nobody_in(admin):
    g, token = admin
    client = g.app.test_client()
    assert sign_in(client, token).status_code == 302
    cookie = client.get_cookie("session").value
    assert client.get(f"{UI}/").status_code == 200
    page = client.get(f"{UI}/")
    assert client.post(f"{UI}/logout", data={"csrf_token": csrf_of(page)}).status_code == 302
    thief = g.app.test_client()
    thief.set_cookie("session", cookie)
    r = thief.get(f"{UI}/")
    assert r.status_code == 302 and "/login" in r.location  # the copy is worthless after sign-out
    again = g.app.test_client()
    assert sign_in(again, token).status_code == 302 and again.get(f"{UI}/").status_code == 200


def test_session_cookie_is_samesite_and_secure_outside_debug(make_guarded):
    g = make_guarded()  # the test app is not in debug or testing mode
    assert g.app.config["SESSION_COOKIE_SAMESITE"] == "Lax" and g.app.config["SESSION_COOKIE_SECURE"] is True
    plain = make_guarded(MODELGUARD_SECURE_COOKIES=False)
    assert plain.app.config["SESSION_COOKIE_SECURE"] is False
