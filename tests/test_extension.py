"""The guard end to end through Flask's test client, on every backend."""

from __future__ import annotations

import time

import pytest
from flask import Flask

from flask_modelguard import ModelGuard, protect
from flask_modelguard.exc import InvalidValue

from .conftest import FakeClock, model_app, problem_of


def test_authenticated_request_gets_prediction_and_headers(guarded):
    _, key = guarded.account(limits="5/second;100/hour")
    r = guarded.predict(key)
    assert r.status_code == 200
    assert r.get_json()["label"] == 1
    assert r.headers["X-RateLimit-Limit"] == "5"
    assert r.headers["X-RateLimit-Remaining"] == "4"
    assert int(r.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert r.headers["RateLimit-Policy"] == '"5/1second";q=5;w=1, "100/1hour";q=100;w=3600'
    assert r.headers["RateLimit"].startswith('"5/1second";r=4;t=')


def test_x_api_key_header_is_accepted(guarded):
    _, key = guarded.account()
    assert guarded.predict(None, **{"X-API-Key": key}).status_code == 200


@pytest.mark.parametrize(
    "headers, slug",
    [
        ({}, "missing-api-key"),
        ({"Authorization": "Basic abc"}, "missing-api-key"),
        ({"Authorization": "Bearer not-a-key"}, "malformed-api-key"),
        ({"X-API-Key": "mg_short_secret"}, "malformed-api-key"),
        ({"Authorization": "Bearer mg_abcdefghij_" + "a" * 32}, "invalid-api-key"),
    ],
)
def test_401_problems(guarded, headers, slug):
    r = guarded.predict(None, **headers)
    assert r.status_code == 401
    assert problem_of(r)["type"].endswith(slug)


def test_wrong_secret_with_known_prefix_is_401(guarded):
    _, key = guarded.account()
    forged = key[:-1] + ("a" if key[-1] != "a" else "b")
    r = guarded.predict(forged)
    assert r.status_code == 401 and problem_of(r)["type"].endswith("invalid-api-key")


def test_revoked_key_is_403_at_once_in_this_process(guarded):
    _, key = guarded.account()
    assert guarded.predict(key).status_code == 200  # now cached
    with guarded.app.app_context():
        guarded.guard.revoke_key(key)
    r = guarded.predict(key)
    assert r.status_code == 403 and problem_of(r)["type"].endswith("revoked-api-key")


@pytest.mark.parametrize("status", ["blocked", "suspended"])
def test_blocked_and_suspended_accounts_are_403(guarded, status):
    name, key = guarded.account()
    assert guarded.predict(key).status_code == 200
    with guarded.app.app_context():
        guarded.guard.update_account(name, status=status)
    r = guarded.predict(key)
    assert r.status_code == 403 and problem_of(r)["type"].endswith(f"account-{status}")
    with guarded.app.app_context():
        guarded.guard.update_account(name, status="active")
    assert guarded.predict(key).status_code == 200


def test_change_elsewhere_takes_effect_after_cache_ttl(make_guarded):
    """Two apps (two processes' worth of caches) on one database."""
    server = make_guarded(MODELGUARD_KEY_CACHE_TTL=0.5)
    admin = make_guarded(MODELGUARD_DATABASE_URL=server.app.config["MODELGUARD_DATABASE_URL"])
    _, key = server.account()
    assert server.predict(key).status_code == 200
    with admin.app.app_context():
        admin.guard.revoke_key(key)
    assert server.predict(key).status_code == 200  # still cached in the server
    time.sleep(0.6)
    assert server.predict(key).status_code == 403


def test_rotation_keeps_old_key_for_grace_period(guarded):
    name, old = guarded.account()
    with guarded.app.app_context():
        new = guarded.guard.rotate_key(old, grace=60)
    assert new != old
    assert guarded.predict(new).status_code == 200
    assert guarded.predict(old).status_code == 200
    guarded.clock.now += 61
    r = guarded.predict(old)
    assert r.status_code == 401 and problem_of(r)["type"].endswith("expired-api-key")
    assert guarded.predict(new).status_code == 200


def test_429_with_retry_after_and_quota_reset(guarded):
    _, key = guarded.account(limits="3/2second;50/day")
    for remaining in (2, 1, 0):
        r = guarded.predict(key)
        assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == str(remaining)
    r = guarded.predict(key)
    assert r.status_code == 429
    body = problem_of(r)
    assert body["type"].endswith("rate-limit-exceeded") and body["limit"] == "3 per 2 second"
    assert 1 <= int(r.headers["Retry-After"]) <= 2
    assert r.headers["X-RateLimit-Remaining"] == "0"
    time.sleep(int(r.headers["Retry-After"]) + 0.1)
    assert guarded.predict(key).status_code == 200


def test_daily_quota_is_not_eaten_by_burst_refusals(guarded):
    _, key = guarded.account(limits="2/minute;4/day")
    statuses = [guarded.predict(key).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    r = guarded.predict(key)
    assert r.headers["RateLimit"].startswith('"2/1minute";r=0')
    assert '"4/1day";q=4;w=86400' in r.headers["RateLimit-Policy"]


def test_batch_costs_one_unit_per_instance(guarded):
    name, key = guarded.account(limits="10/minute")
    r = guarded.predict(key, {"instances": [[0] * 3] * 4})
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "6"
    r = guarded.predict(key, {"instances": [[0] * 3] * 7})
    assert r.status_code == 429 and problem_of(r)["cost"] == 7
    r = guarded.predict(key, {"instances": [[0] * 3] * 6})
    assert r.status_code == 200 and r.headers["X-RateLimit-Remaining"] == "0"
    rows = guarded.rows(name)
    assert [row["n_instances"] for row in rows] == [4, 7, 6]
    assert [row["status"] for row in rows] == [200, 429, 200]


def test_tier_limits_apply_and_override_wins(make_guarded):
    g = make_guarded(MODELGUARD_TIERS={"tiny": "2/minute", "big": "100/minute"}, MODELGUARD_DEFAULT_TIER="tiny")
    name, key = g.account()
    assert [g.predict(key).status_code for _ in range(3)] == [200, 200, 429]
    with g.app.app_context():
        g.guard.update_account(name, tier="big")
    assert g.predict(key).headers["X-RateLimit-Limit"] == "100"
    with g.app.app_context():
        g.guard.update_account(name, limits="7/minute")
    assert g.predict(key).headers["X-RateLimit-Limit"] == "7"
    with g.app.app_context():
        with pytest.raises(InvalidValue):
            g.guard.update_account(name, tier="nope")
        with pytest.raises(InvalidValue):
            g.guard.update_account(name, limits="lots")


def test_unprotected_routes_are_untouched(guarded):
    r = guarded.client.get("/open")
    assert r.status_code == 200 and "RateLimit" not in r.headers


def test_query_events_are_logged_without_raw_inputs(guarded):
    name, key = guarded.account()
    guarded.predict(key, {"features": [1, 2, 3]})
    guarded.predict(key, {"features": [1.0, 2.0, 3.0]})
    guarded.predict(key, {"features": [3, 2, 1]})
    guarded.predict(None)  # 401: no account, not logged
    rows = guarded.rows(name)
    assert len(rows) == 3
    assert rows[0]["fingerprint"] == rows[1]["fingerprint"] != rows[2]["fingerprint"]
    assert len(rows[0]["fingerprint"]) == 32
    assert rows[0]["labels"] == [1] and rows[0]["top_confidences"] == [0.7]
    assert rows[0]["route"] == "predict" and rows[0]["status"] == 200
    assert rows[0]["ts"] == guarded.clock.now and rows[0]["latency_ms"] > 0
    assert all(row["input"] is None for row in rows)


def test_store_inputs_setting_keeps_raw_inputs(make_guarded):
    g = make_guarded(MODELGUARD_STORE_INPUTS=True)
    name, key = g.account()
    g.predict(key, {"features": [4, 5]})
    assert g.rows(name)[0]["input"] == {"features": [4, 5]}


def test_view_errors_are_logged_and_keep_headers(make_guarded):
    from flask_modelguard import BadRequest

    guard = ModelGuard(clock=FakeClock())
    app = model_app(guard, MODELGUARD_DATABASE_URL=make_guarded().app.config["MODELGUARD_DATABASE_URL"])

    @app.post("/strict")
    @protect(name="strict-route", cost=3)
    def strict():
        raise BadRequest("no good")

    with app.app_context():
        guard.create_account("s", limits="10/minute")
        key = guard.issue_key("s")
    r = app.test_client().post("/strict", json={}, headers={"X-API-Key": key})
    assert r.status_code == 400 and problem_of(r)["detail"] == "no good"
    assert r.headers["X-RateLimit-Remaining"] == "7"
    guard.flush(app)
    state = ModelGuard.state(app)
    rows = state.repository.events(state.repository.get_account("s")["id"])
    assert [(row["route"], row["status"], row["n_instances"]) for row in rows] == [("strict-route", 400, 3)]
    guard.close(app)


def test_two_apps_in_one_process_are_independent(make_guarded):
    a = make_guarded(MODELGUARD_TIERS={"t": "1/minute"}, MODELGUARD_DEFAULT_TIER="t")
    b = make_guarded(MODELGUARD_DATABASE_URL="sqlite://", MODELGUARD_TIERS={"t": "5/minute"}, MODELGUARD_DEFAULT_TIER="t")
    _, key_a = a.account("same")
    _, key_b = b.account("same")
    assert a.predict(key_b).status_code == 401  # b's key is unknown to a
    assert a.predict(key_a).headers["X-RateLimit-Limit"] == "1"
    assert b.predict(key_b).headers["X-RateLimit-Limit"] == "5"
    assert ModelGuard.state(a.app) is not ModelGuard.state(b.app)


def test_constructor_arguments_override_config(tmp_path):
    guard = ModelGuard(storage_uri="memory://", default_tier="pro", database_url=f"sqlite:///{tmp_path}/x.db")
    app = model_app(guard, MODELGUARD_DEFAULT_TIER="free", MODELGUARD_DATABASE_URL="sqlite:///nowhere/y.db")
    with app.app_context():
        assert guard.create_account("x")["tier"] == "pro"
    assert (tmp_path / "x.db").exists()
    guard.close(app)


def test_unknown_option_and_bad_config_fail_early():
    with pytest.raises(TypeError, match="storge_uri"):
        ModelGuard(storge_uri="memory://")
    with pytest.raises(InvalidValue, match="FAIL_MODE"):
        model_app(ModelGuard(), MODELGUARD_FAIL_MODE="maybe", MODELGUARD_DATABASE_URL="sqlite://")
    with pytest.raises(InvalidValue, match="Invalid limit"):
        model_app(ModelGuard(), MODELGUARD_TIERS={"free": "often"}, MODELGUARD_DATABASE_URL="sqlite://")


def test_protect_without_guard_is_a_clear_error():
    app = Flask(__name__)

    @app.post("/p")
    @protect
    def p():
        return {}

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="not initialised"):
        app.test_client().post("/p", json={})


def test_disabled_guard_serves_without_checks(make_guarded):
    g = make_guarded(MODELGUARD_ENABLED=False)
    r = g.predict(None)
    assert r.status_code == 200 and "RateLimit" not in r.headers


def test_database_down_is_503_not_500(make_guarded, tmp_path):
    g = make_guarded()
    _, key = g.account()
    state = ModelGuard.state(g.app)
    state.auth.invalidate()
    state.repository.engine.dispose()
    from sqlalchemy import create_engine

    state.repository.engine = create_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")
    r = g.predict(key)
    assert r.status_code == 503 and problem_of(r)["type"].endswith("database-unavailable")


def test_refusals_of_known_accounts_are_logged(guarded):
    name, key = guarded.account()
    with guarded.app.app_context():
        guarded.guard.update_account(name, status="blocked")
    assert guarded.predict(key).status_code == 403
    rows = guarded.rows(name)
    assert [(r["status"], r["n_instances"]) for r in rows] == [(403, 0)]


def test_x_api_key_is_used_when_authorization_is_not_bearer(guarded):
    _, key = guarded.account()
    r = guarded.predict(None, Authorization="Basic dXNlcjpwYXNz", **{"X-API-Key": key})
    assert r.status_code == 200


def test_http_errors_from_the_view_become_problems_with_headers(make_guarded):
    from flask import abort

    g = make_guarded()

    @g.app.post("/gone")
    @g.guard.protect
    def gone():
        abort(404)

    name, key = g.account(limits="9/minute")
    r = g.client.post("/gone", json={}, headers={"X-API-Key": key})
    assert r.status_code == 404 and problem_of(r)["title"] == "Not Found"
    assert r.headers["X-RateLimit-Remaining"] == "8"
    assert [row["status"] for row in g.rows(name)] == [404]


def test_unsupported_media_type_from_the_view_is_a_problem(guarded):
    _, key = guarded.account()
    r = guarded.client.post("/predict", data="features=1", headers={"X-API-Key": key})
    assert r.status_code == 415 and problem_of(r)["status"] == 415


def test_cost_function_errors_are_400(make_guarded):
    g = make_guarded()

    @g.app.post("/images")
    @protect(cost=lambda body: len(body["images"]))
    def images():
        return {"ok": True}

    name, key = g.account()
    r = g.client.post("/images", json={"other": 1}, headers={"X-API-Key": key})
    assert r.status_code == 400 and "cost" in problem_of(r)["detail"]
    assert [row["status"] for row in g.rows(name)] == [400]


def test_batch_larger_than_the_limit_is_413_not_429(guarded):
    _, key = guarded.account(limits="5/second;100/day")
    r = guarded.predict(key, {"instances": [[0]] * 6})
    body = problem_of(r)
    assert r.status_code == 413 and body["max_cost"] == 5 and "Retry-After" not in r.headers
    assert guarded.predict(key, {"instances": [[0]] * 5}).status_code == 200  # nothing was consumed


def test_account_on_a_removed_tier_gets_the_default_tier(make_guarded):
    g = make_guarded(MODELGUARD_TIERS={"old": "100/minute", "basic": "3/minute"}, MODELGUARD_DEFAULT_TIER="basic")
    name, key = g.account(tier="old")
    url = g.app.config["MODELGUARD_DATABASE_URL"]
    later = make_guarded(MODELGUARD_DATABASE_URL=url, MODELGUARD_TIERS={"basic": "3/minute"}, MODELGUARD_DEFAULT_TIER="basic")
    assert later.predict(key).headers["X-RateLimit-Limit"] == "3"


@pytest.mark.parametrize("strategy", ["sliding-window-counter", "moving-window"])
def test_other_strategies_through_the_extension(make_guarded, strategy):
    g = make_guarded(MODELGUARD_STRATEGY=strategy)
    _, key = g.account(limits="3/hour;2/day")
    statuses = [g.predict(key).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    r = g.predict(key)
    assert r.headers["X-RateLimit-Limit"] == "2" and r.headers["X-RateLimit-Remaining"] == "0"
    assert r.headers["RateLimit"].startswith('"2/1day";r=0')


def test_non_finite_and_huge_numbers_are_logged_on_every_database(make_guarded):
    g = make_guarded(MODELGUARD_STORE_INPUTS=True)
    name, key = g.account()
    for data in ('{"features": [NaN, 1]}', '{"features": [Infinity]}', '{"features": [%s]}' % ("9" * 400)):
        r = g.client.post("/predict", data=data, content_type="application/json", headers={"X-API-Key": key})
        assert r.status_code == 200
    rows = g.rows(name)
    assert len(rows) == 3 and rows[0]["input"] == {"features": [None, 1]}
    assert all(row["fingerprint"] for row in rows)
    assert g.guard.stats(g.app)["dropped"] == 0


def test_a_method_a_protected_route_does_not_take_is_a_problem_with_allow(guarded):
    r = guarded.client.get("/predict")
    body = problem_of(r)
    assert r.status_code == 405 and body["status"] == 405 and r.headers["Allow"] == "OPTIONS, POST"
    assert guarded.client.put("/open").status_code == 405  # unprotected routes keep the app's own page
    assert guarded.client.put("/open").mimetype != "application/problem+json"


def test_admin_api_405_has_allow(guarded):
    r = guarded.client.delete("/modelguard/api/health")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
    assert problem_of(r)["status"] == 405
