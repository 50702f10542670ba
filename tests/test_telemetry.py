"""Prometheus metrics: counters per outcome with real requests, the endpoint,
per-app registries, the token, the worker's metrics, multiprocess mode."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap

from prometheus_client.parser import text_string_to_metric_families

from flask_modelguard import ModelGuard, telemetry

PATH = "/modelguard/metrics"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def value(g, name, **labels):
    return ModelGuard.state(g.app).telemetry.registry.get_sample_value(name, labels) or 0.0


def outcomes(g):
    return {o: value(g, "modelguard_requests_total", outcome=o) for o in telemetry.OUTCOMES}


def test_every_outcome_is_counted_once_per_request(make_guarded):
    g = make_guarded()

    @g.app.post("/boom")
    @g.guard.protect
    def boom():
        raise RuntimeError("the model fell over")

    _, key = g.account(limits="2/minute")
    _, revoked = g.account()
    blocked_name, blocked = g.account()
    flagged_name, flagged = g.account()
    _, spare = g.account(limits="1000/second")
    with g.app.app_context():
        g.guard.revoke_key(revoked)
        g.guard.update_account(blocked_name, status="blocked")
        g.guard.update_account(flagged_name, flagged=True)
    statuses = [
        g.predict(None).status_code,  # no key
        g.predict("mg_live_nonsense").status_code,  # unknown key
        g.predict(revoked).status_code,
        g.predict(blocked).status_code,
        g.predict(key).status_code,
        g.predict(key).status_code,
        g.predict(key).status_code,  # over 2/minute
        g.predict(key, {"instances": [[1]] * 5}).status_code,  # costs more than the limit: 413
        g.predict(flagged).status_code,
        g.client.post("/boom", headers={"Authorization": f"Bearer {spare}"}).status_code,
    ]
    assert statuses == [401, 401, 403, 403, 200, 200, 429, 413, 200, 500]
    assert outcomes(g) == {"allowed": 3, "unauthorized": 2, "forbidden": 2, "rate_limited": 1, "bad_request": 1,
                           "error": 1, "poisoned": 1, "watermarked": 0}
    assert value(g, "modelguard_guard_latency_seconds_count") == len(statuses)
    assert 0 < value(g, "modelguard_guard_latency_seconds_sum") < 1
    g.client.get("/open")  # unprotected routes are not counted
    assert value(g, "modelguard_guard_latency_seconds_count") == len(statuses)


def test_watermarked_answers_are_counted(make_guarded):
    g = make_guarded(MODELGUARD_WATERMARK=1.0)
    _, key = g.account(limits="1000/second")
    served = [g.predict(key, {"features": [i, 1]}).status_code for i in range(5)]
    assert served == [200] * 5
    assert outcomes(g) | {"allowed": 5, "watermarked": 5} == outcomes(g)


def test_endpoint_serves_the_text_format_without_an_api_key(make_guarded):
    g = make_guarded()
    _, key = g.account()
    g.predict(key)
    response = g.client.get(PATH)
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"modelguard_requests", "modelguard_guard_latency_seconds", "modelguard_queue_depth",
            "modelguard_events_dropped", "modelguard_accounts_flagged", "modelguard_detector_seconds"} <= set(families)
    labels = {tuple(s.labels.items()) for f in families.values() for s in f.samples}
    assert not any(name in ("account", "account_id", "key") for ls in labels for name, _ in ls)


def test_apps_have_their_own_registries(make_guarded):
    a, b = make_guarded(), make_guarded()
    _, key = a.account()
    a.predict(key)
    b.predict(None)
    assert ModelGuard.state(a.app).telemetry.registry is not ModelGuard.state(b.app).telemetry.registry
    assert (value(a, "modelguard_requests_total", outcome="allowed"), value(b, "modelguard_requests_total",
            outcome="allowed")) == (1, 0)
    assert value(b, "modelguard_requests_total", outcome="unauthorized") == 1


def test_a_token_protects_the_endpoint(make_guarded):
    g = make_guarded(MODELGUARD_METRICS_TOKEN="s3cret")
    assert g.client.get(PATH).status_code == 401
    assert g.client.get(PATH, headers={"Authorization": "Bearer wrong"}).status_code == 401
    refused = g.client.get(PATH, headers={"Authorization": "Basic s3cret"})
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert g.client.get(PATH, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_no_path_no_route_and_disabled_no_metrics(make_guarded):
    g = make_guarded(MODELGUARD_METRICS_PATH=None)
    assert telemetry.ENDPOINT not in g.app.view_functions
    assert g.client.get(PATH).status_code == 404
    g.predict(None)
    assert value(g, "modelguard_requests_total", outcome="unauthorized") == 1  # still collected
    off = make_guarded(MODELGUARD_METRICS_ENABLED=False)
    assert ModelGuard.state(off.app).telemetry is None and telemetry.ENDPOINT not in off.app.view_functions
    assert off.predict(None).status_code == 401


def test_without_prometheus_client_the_guard_runs_and_warns_once(make_guarded, monkeypatch, caplog):
    monkeypatch.setattr(telemetry, "prometheus_client", None)
    monkeypatch.setattr(telemetry, "_warned", False)
    caplog.set_level(logging.WARNING, logger="flask_modelguard")
    apps = [make_guarded(), make_guarded()]
    assert [ModelGuard.state(g.app).telemetry for g in apps] == [None, None]
    assert caplog.text.count("prometheus_client is not installed") == 1
    _, key = apps[0].account()
    assert apps[0].predict(key).status_code == 200


def test_worker_metrics_canary_flags_and_detector_time(make_guarded):
    g = make_guarded(MODELGUARD_DETECTION=True)
    _, key = g.account(limits="1000/second")
    with g.app.app_context():
        g.guard.add_canaries([[9, 9, 9]])
    for i in range(3):
        g.predict(key, {"features": [i, 1, 2]})
    g.predict(key, {"features": [9, 9, 9]})
    g.guard.flush(g.app)
    assert value(g, "modelguard_accounts_flagged_total", action="canary") == 1
    assert value(g, "modelguard_accounts_flagged_total", action="degrade") == 0
    assert value(g, "modelguard_detector_seconds_count", stage="update") == 4
    assert value(g, "modelguard_requests_total", outcome="poisoned") == 1  # the canary's own answer
    assert value(g, "modelguard_queue_depth") == 0
    ModelGuard.state(g.app).worker.dropped += 3  # read at scrape time
    assert value(g, "modelguard_events_dropped_total") == 3


MULTIPROCESS = textwrap.dedent("""
    import json, os, sys
    from prometheus_client import multiprocess
    from prometheus_client.parser import text_string_to_metric_families
    from flask_modelguard import ModelGuard
    from tests.conftest import model_app

    tmp = sys.argv[1]
    guard = ModelGuard()
    app = model_app(guard, MODELGUARD_DATABASE_URL=f"sqlite:///{tmp}/a.db")
    other = model_app(ModelGuard(), MODELGUARD_DATABASE_URL=f"sqlite:///{tmp}/b.db")
    with app.app_context():
        guard.create_account("a", limits="1000/second")
        headers = {"Authorization": "Bearer " + guard.issue_key("a")}
    client = app.test_client()
    client.post("/predict", json={"features": [1, 2]}, headers=headers)
    other.test_client().post("/predict", json={"features": [1]})  # 401, the same process's metrics
    guard.flush(app)
    pid = os.fork()
    if pid == 0:  # a second worker process
        client.post("/predict", json={"features": [3, 4]}, headers=headers)
        client.post("/predict", json={"features": [3, 4]})
        guard.flush(app)
        os._exit(0)
    os.waitpid(pid, 0)
    multiprocess.mark_process_dead(pid)  # gunicorn's child_exit hook
    out = {}
    for name, target in (("a", app), ("b", other)):
        text = target.test_client().get("/modelguard/metrics").get_data(as_text=True)
        out[name] = {s.name + json.dumps(s.labels, sort_keys=True): s.value
                     for f in text_string_to_metric_families(text) for s in f.samples}
    out["multiprocess"] = ModelGuard.state(app).telemetry.multiprocess
    print(json.dumps(out))
""")


def test_multiprocess_mode_sums_processes(tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom)}
    done = subprocess.run([sys.executable, "-c", MULTIPROCESS, str(tmp_path)], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["multiprocess"] is True
    samples = out["a"]
    assert samples['modelguard_requests_total{"outcome": "allowed"}'] == 2  # parent + child
    assert samples['modelguard_requests_total{"outcome": "unauthorized"}'] == 2  # other app + child
    assert samples["modelguard_guard_latency_seconds_count{}"] == 4
    assert samples["modelguard_queue_depth{}"] == 0
    assert samples["modelguard_events_dropped_total{}"] == 0
    assert out["b"] == samples  # one view of every process's files
    assert any(p.name.startswith("counter_") for p in prom.iterdir())
