"""Hostile requests against the example app, protected by the guard: bodies
of any JSON shape, numbers at and beyond the float limits, raw bytes, odd
headers. Nothing is a 500; every error is problem+json; the worker judges
every event it is given without an error, and the statistics stay finite."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from example_app import create_app, guard

#: Numbers a hostile client sends: the float limits, subnormals, huge integers.
EDGE_NUMBERS = st.sampled_from([0, -0.0, 1e308, -1e308, 5e-324, 2**63, -(2**63), 10**400, -(10**400), 16, 17, -1])
NUMBERS = st.one_of(EDGE_NUMBERS, st.integers(), st.floats(allow_nan=False, allow_infinity=False))
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=8), st.dictionaries(st.text(max_size=10), inner, max_size=5)),
    max_leaves=40,
)
#: Bodies shaped like the example's, with hostile values inside.
SHAPED = st.one_of(
    st.builds(lambda xs: {"features": xs}, st.lists(NUMBERS, min_size=60, max_size=68)),
    st.builds(lambda rows: {"instances": rows}, st.lists(st.lists(NUMBERS, min_size=64, max_size=64), max_size=5)),
    st.builds(lambda v: {"features": v}, JSON),
    st.builds(lambda v: {"instances": v}, JSON),
    JSON,
)


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("fuzz")
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "fuzz-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/fuzz.db", "MODELGUARD_FLUSH_INTERVAL": 3600})
    with app.app_context():
        guard.create_account("fuzzer", limits="10000000/minute")
        app.config["FUZZ_KEY"] = guard.issue_key("fuzzer")
    yield app
    guard.close(app)


def _check(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:300]
    if response.status_code >= 400:
        assert response.mimetype == "application/problem+json", (response.status_code, response.get_data()[:300])
        assert response.get_json()["status"] == response.status_code


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=SHAPED)
def test_any_json_body_is_answered_or_refused_never_a_500(app, body):
    data = json.dumps(body, allow_nan=False)
    _check(app.test_client().post("/predict", data=data, content_type="application/json",
                                  headers={"X-API-Key": app.config["FUZZ_KEY"]}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200), content_type=st.sampled_from(
    ["application/json", "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_raw_bytes_under_any_content_type_are_never_a_500(app, raw, content_type):
    _check(app.test_client().post("/predict", data=raw, content_type=content_type,
                                  headers={"X-API-Key": app.config["FUZZ_KEY"]}))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(auth=st.text(max_size=80), method=st.sampled_from(["POST", "PUT", "GET", "DELETE"]))
def test_any_credential_header_and_method_is_never_a_500(app, auth, method):
    try:
        response = app.test_client().open("/predict", method=method, json={"features": [0] * 64},
                                          headers={"Authorization": auth})
    except ValueError:  # the test client itself refuses header values with newlines
        return
    assert response.status_code < 500


def test_nan_and_infinity_literals_are_refused_and_the_worker_stays_healthy(app):
    """Python's json accepts NaN/Infinity; the example refuses them. After
    hostile bodies (and whatever the other tests sent) the worker has judged
    each event without an error, with finite statistics."""
    client = app.test_client()
    for body in ({"features": [1e308] * 64}, {"instances": [[-1e308] * 64, [5e-324] * 64] * 10},
                 {"features": [2**63] * 64}, {"features": [1e308, -1e308] * 32}):
        _check(client.post("/predict", json=body, headers={"X-API-Key": app.config["FUZZ_KEY"]}))
    for literal in ("NaN", "Infinity", "-Infinity"):
        r = client.post("/predict", data='{"features": [' + ",".join([literal] * 64) + "]}",
                        content_type="application/json", headers={"X-API-Key": app.config["FUZZ_KEY"]})
        _check(r)
        assert r.status_code == 400
    guard.flush(app)
    stats = guard.stats(app)
    assert stats["detection_errors"] == 0 and stats["evaluations_failed"] == 0, stats
    state = guard.state(app)
    with app.app_context():
        account_id = state.repository.get_account("fuzzer")["id"]
    view = state.monitor.state(account_id)
    if view is not None:
        assert np.isfinite(view.moments.mean).all() and all(math.isfinite(v) for v in view.moments.m2)
