"""Detection end to end on the example app: simulated benign users and thieves
send real requests through the guard; the worker's detectors flag the thieves
(then served misinformation) and no benign account."""

from __future__ import annotations

import numpy as np
import pytest

from example_app import create_app, guard
from example_app.model import split
from flask_modelguard.stats import unpack

#: Benign users of the ``traffic`` fixture (besides the repeater); the last one sends after the thieves.
BENIGN = 9


def _send(client, key, X, batch=10, app=None):
    """Send X in batches; with ``app``, let the worker catch up after each one
    (a real thief's queries are spread over time; the test client's are not)."""
    labels = []
    for start in range(0, len(X), batch):
        r = client.post("/predict", json={"instances": X[start : start + batch].tolist()}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.get_json()
        labels += [p["label"] for p in r.get_json()["predictions"]]
        if app is not None:
            guard.flush(app)
    return labels


def _jbda(rng, seeds, n, step=1.6):
    """Jacobian-augmentation-like growth (Papernot et al.): every round adds a
    signed step from every point so far."""
    points, out = list(seeds), list(seeds)
    while len(out) < n:
        grown = [np.clip(x + step * rng.choice([-1, 1], size=64), 0, 16) for x in points]
        out += grown
        points += grown
    return np.asarray(out[:n])


@pytest.fixture(scope="module")
def traffic(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("detection")
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "detection-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/d.db", "MODELGUARD_WATERMARK": 0.0})
    X_train, X_test, _, _ = split()
    model = app.extensions["digits_model"]
    rng = np.random.default_rng(11)
    names = [f"benign{i}" for i in range(BENIGN)] + ["repeater", "uniform", "gaussian", "jbda", "shifted"]
    with app.app_context():
        guard.fit_reference(X_train.tolist(), model.predict_proba(X_train).argmax(axis=1))
        for name in names:
            guard.create_account(name, limits="100000/minute")
        keys = {name: guard.issue_key(name) for name in names}
    client = app.test_client()
    for i in range(BENIGN - 1):  # natural held-out digits, each user a different sample
        _send(client, keys[f"benign{i}"], X_test[rng.permutation(len(X_test))[:150]])
    # a benign client that retries: the same five digits, thirty times each
    _send(client, keys["repeater"], np.tile(X_test[rng.permutation(len(X_test))[:5]], (30, 1)))
    thieves = {
        "uniform": rng.uniform(0, 16, (250, 64)),
        "gaussian": np.clip(rng.normal(8, 4, (250, 64)), 0, 16),
        "jbda": _jbda(rng, X_test[rng.permutation(len(X_test))[:15]], 250),
        # Knockoff-style natural data from another distribution: digits shifted one pixel right
        "shifted": np.roll(X_test[rng.permutation(len(X_test))[:250]].reshape(-1, 8, 8), 1, axis=2).reshape(-1, 64),
    }
    served = {name: _send(client, keys[name], X, app=app) for name, X in thieves.items()}
    # one more benign user, after the thieves and from draws of its own (the traffic
    # above stays as it was): with the repeater, ten benign accounts, the fewest the
    # anomaly models are fitted on
    late = np.random.default_rng(12)
    _send(client, keys[f"benign{BENIGN - 1}"], X_test[late.permutation(len(X_test))[:150]])
    with app.app_context():
        guard.flush()
        accounts = {a["name"]: a for a in guard.list_accounts()}
        history = {name: guard.score_history(name) for name in names}
    yield app, accounts, history, served, thieves, model
    guard.close(app)


def test_no_benign_account_is_flagged(traffic):
    _, accounts, history, *_ = traffic
    for name in [f"benign{i}" for i in range(BENIGN)] + ["repeater"]:
        assert not accounts[name]["flagged"], history[name][-1]
        assert history[name] and not any(h["reasons"] for h in history[name])


@pytest.mark.parametrize("thief", ["uniform", "gaussian", "jbda", "shifted"])
def test_each_thief_is_flagged_within_about_100_queries(traffic, thief):
    _, accounts, history, *_ = traffic
    assert accounts[thief]["flagged"]
    first = next(h for h in history[thief] if h["reasons"])
    # the Jacobian-like thief's 15 seeds are natural: its sign steps follow them
    assert first["queries"] <= (50 if thief == "jbda" else 150), first
    assert any(r.startswith(("ADD", "PRADA", "sign steps")) for r in first["reasons"])


def test_malicious_score_reaches_the_account(traffic):
    _, accounts, history, *_ = traffic
    for name in ("uniform", "gaussian", "shifted"):
        assert accounts[name]["score"] >= 0.5
        assert accounts[name]["score"] == pytest.approx(history[name][-1]["scores"]["malicious"])
    assert max(accounts[f"benign{i}"]["score"] for i in range(BENIGN)) < 0.5


def test_flagged_thieves_are_served_misinformation(traffic):
    _, _, history, served, thieves, model = traffic
    for thief, X in thieves.items():
        flagged_at = next(h for h in history[thief] if h["reasons"])["queries"]
        truth = model.predict_proba(X).argmax(axis=1)
        later = slice(flagged_at, None)  # the batch after the one that got it flagged
        agreement = (np.asarray(served[thief])[later] == truth[later]).mean()
        assert agreement < 0.2, (thief, agreement)


def test_one_alert_per_flag_and_allow_list_wins(traffic, caplog):
    app, accounts, history, *_ = traffic
    alerts = [h for h in history["jbda"] if h["reasons"]]
    assert len(alerts) >= 2  # evaluated again after the flag: history keeps growing
    with app.app_context():
        guard.update_account("jbda", allowlisted=True)
        account = {a["name"]: a for a in guard.list_accounts()}["jbda"]
        assert not account["flagged"] and account["allowlisted"]
        state = guard.state(app)
        caplog.set_level("WARNING", logger="flask_modelguard")
        row = {"account_id": account["id"], "canary": False, "watermarks": [],
               "evaluation": {"account_id": account["id"], "ts": 1.0, "queries": 999,
                              "scores": {}, "reasons": ["PRADA W=0.1 < 0.9"]}}
        base = {c: None for c in ("key_id", "route", "ts", "status", "latency_ms", "n_instances",
                                  "fingerprint", "labels", "top_confidences", "input")}
        base.update(key_id=1, route="r", ts=1.0, status=200, latency_ms=1.0, n_instances=1)
        state.pipeline.write([{**base, **row}])
        assert not {a["name"]: a for a in guard.list_accounts()}["jbda"]["flagged"]
        assert "flagged" not in caplog.text


def test_states_from_several_processes_merge_into_one(make_guarded_pair):
    """Two apps (two processes' worth) on one database, an account's requests
    split between them round-robin: the stored state equals the state of one
    process that saw every request, and each process then judges the account
    on all of it."""
    from flask_modelguard import ModelGuard
    from flask_modelguard.state import AccountState, Observation, behaviour

    a, b = make_guarded_pair
    name, key = a.account(limits="100000/minute")
    rng = np.random.default_rng(3)
    bodies = [{"features": rng.uniform(0, 16, 8).round(2).tolist()} for _ in range(60)]
    for i, body in enumerate(bodies):
        assert (a if i % 2 == 0 else b).predict(key, body).status_code == 200
    for g in (a, b):
        g.guard.flush(g.app)
    state_a = ModelGuard.state(a.app)
    account_id = state_a.repository.get_account(name)["id"]
    stored = AccountState.from_dict(state_a.repository.load_state(account_id))
    single = AccountState(64)
    for body in bodies:
        x = state_a.featurizer(body["features"])
        single.update(Observation(0.0, [__import__("flask_modelguard.events", fromlist=["fingerprint"]).fingerprint(body["features"], state_a.fingerprint_key)],
                                  x[None], ["1"], [0.7]))
    assert stored.queries == single.queries == 60
    assert stored.labels.counts == single.labels.counts
    assert stored.unique.estimate() == single.unique.estimate() == 60
    np.testing.assert_allclose(stored.moments.cov(), single.flush().moments.cov(), rtol=1e-9, atol=1e-12)
    # a process learns the others' queries when it next merges its own
    assert a.predict(key, {"features": [1.0] * 8}).status_code == 200
    a.guard.flush(a.app)
    assert behaviour(state_a.monitor.state(account_id))["log_queries"] == pytest.approx(np.log1p(61))


def test_a_changed_feature_space_starts_the_statistics_over(make_guarded, caplog):
    """A process whose features mean something else (same dimension, another
    MODELGUARD_FEATURE_SPACE, as after a retrained embedding) neither loads
    nor merges into the states of the old space, and says so once."""
    from flask_modelguard import ModelGuard
    from flask_modelguard.state import AccountState

    old = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600)
    name, key = old.account(limits="100000/minute")
    for i in range(5):
        assert old.predict(key, {"features": [float(i)] * 8}).status_code == 200
    old.guard.flush(old.app)
    account_id = ModelGuard.state(old.app).repository.get_account(name)["id"]
    stored = ModelGuard.state(old.app).repository.load_state(account_id)
    assert stored["queries"] == 5 and stored["space"] == "flask_modelguard.features.flatten/64"
    new = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600, MODELGUARD_FEATURE_SPACE="embedding-v2",
                       MODELGUARD_DATABASE_URL=old.app.config["MODELGUARD_DATABASE_URL"])
    state = ModelGuard.state(new.app)
    with caplog.at_level("WARNING", logger="flask_modelguard"):
        for i in range(3):
            assert new.predict(key, {"features": [float(i)] * 8}).status_code == 200
        new.guard.flush(new.app)
    assert state.monitor.state(account_id).queries == 3  # the old space's 5 were not loaded
    again = AccountState.from_dict(state.repository.load_state(account_id))
    assert again.queries == 3 and again.space == "embedding-v2"  # replaced, not merged
    assert caplog.text.count("is of feature space 'flask_modelguard.features.flatten/64', not 'embedding-v2'") == 1
    with pytest.raises(ValueError, match="feature spaces"):
        AccountState(64, space="a").merge(AccountState(64, space="b"))
    # ADD's reference of another space is not used either (refit it)
    from flask_modelguard.detectors.add import Reference
    from flask_modelguard.stats import Moments

    classes = {"1": Moments(16).update(np.random.default_rng(0).normal(size=(30, 16)))}
    for space, used in (("flask_modelguard.features.flatten/64", False), ("embedding-v2", True), ("", True)):
        state.repository.save_reference(Reference(classes, [(20, 5.0)], space).to_dict())
        state.training.load_reference()
        assert (state.monitor.reference is not None) is used, space


def test_evicted_accounts_and_failed_merges_lose_no_query(make_guarded):
    """With room for one account in memory, two accounts alternate (each
    request evicts the other, whose delta waits for the merge; the next
    request loads it back and starts a second delta); the first merge fails.
    After the next merge, the stored states count every query, in one
    transaction for all accounts."""
    from flask_modelguard import ModelGuard

    g = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600, MODELGUARD_MAX_ACCOUNTS=1)
    state = ModelGuard.state(g.app)
    (a, key_a), (b, key_b) = g.account(limits="100000/minute"), g.account(limits="100000/minute")
    for i in range(6):
        for key in (key_a, key_b):
            assert g.predict(key, {"features": [float(i)] * 8}).status_code == 200
    g.guard.flush(g.app)  # the events, and a first merge
    merges, real = [], state.repository.merge_states

    def failing(batch):
        merges.append(sorted(batch))
        raise RuntimeError("database away")

    state.repository.merge_states = failing
    for i in range(6, 9):
        for key in (key_a, key_b):
            assert g.predict(key, {"features": [float(i)] * 8}).status_code == 200
    state.worker.flush()
    with pytest.raises(RuntimeError):
        state.persist_states()
    assert len(merges) == 1 and len(merges[0]) == 2  # both accounts, one transaction
    state.repository.merge_states = real
    assert state.persist_states() == 2
    for name in (a, b):
        stored = state.repository.load_state(state.repository.get_account(name)["id"])
        assert stored["queries"] == 9, name


@pytest.fixture
def make_guarded_pair(make_guarded):
    a = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600)
    b = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600,
                     MODELGUARD_DATABASE_URL=a.app.config["MODELGUARD_DATABASE_URL"])
    return a, b


def test_cli_fit_reference(tmp_path, model_cache):
    from example_app.model import split as digits

    X_train, _, y_train, _ = digits()
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "cli",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/r.db"})
    (tmp_path / "ref.json").write_text(__import__("json").dumps({"inputs": X_train.tolist(), "labels": y_train.tolist()}))
    np.savez(tmp_path / "ref.npz", X=X_train, y=y_train)
    runner = app.test_cli_runner()
    for name in ("ref.json", "ref.npz"):
        result = runner.invoke(args=["modelguard", "fit-reference", str(tmp_path / name)])
        assert result.exit_code == 0 and "10 classes" in result.output, result.output
    (tmp_path / "bad.json").write_text('{"inputs": [[1]], "labels": []}')
    assert runner.invoke(args=["modelguard", "fit-reference", str(tmp_path / "bad.json")]).exit_code == 1
    assert guard.state(app).monitor.reference is not None
    guard.close(app)


def test_anomaly_models_fitted_on_benign_states_single_out_the_thieves(traffic):
    app, accounts, history, *_ = traffic
    state = guard.state(app)
    with app.app_context():
        guard.flush()  # merge the account states into the database
    benign = [{k: v for k, v in history[f"benign{i}"][-1]["scores"].items()} for i in range(BENIGN)]
    # five accounts are too few to calibrate a false-positive rate: refused
    assert state.training.refit_anomaly_models(["isolation_forest"], vectors=benign[:5]) == 0
    # from the stored states of the active, unflagged accounts: the ten benign ones
    # (and the Jacobian thief once test_one_alert_per_flag_and_allow_list_wins allow-listed it)
    assert state.training.refit_anomaly_models(["isolation_forest"]) >= BENIGN + 1
    fitted = state.training.refit_anomaly_models(["isolation_forest", "lof"], vectors=benign * 2)
    assert fitted == 2 * BENIGN and [m.kind for m in state.monitor.anomaly] == ["isolation_forest", "lof"]
    thief_scores = [state.monitor.anomaly[0].score(history[t][-1]["scores"]) for t in ("uniform", "gaussian", "shifted")]
    benign_scores = [state.monitor.anomaly[0].score(v) for v in benign]
    assert min(thief_scores) > max(benign_scores)
    state.monitor.anomaly = []


@pytest.mark.parametrize("action, expect", [
    ("observe", {"flagged": False, "status": "active", "tier": "pro"}),
    ("degrade", {"flagged": True, "status": "active", "tier": "pro"}),
    ("throttle", {"flagged": True, "status": "active", "tier": "free"}),
    ("block", {"flagged": True, "status": "blocked", "tier": "pro"}),
])
def test_graduated_actions(make_guarded, action, expect):
    from flask_modelguard import ModelGuard

    g = make_guarded(MODELGUARD_ACTION=action)
    name, key = g.account(tier="pro")
    state = ModelGuard.state(g.app)
    account_id = state.repository.get_account(name)["id"]
    row = {"account_id": account_id, "key_id": 1, "route": "predict", "ts": 1.0, "status": 200,
           "latency_ms": 1.0, "n_instances": 1, "fingerprint": None, "labels": [1], "top_confidences": [0.9],
           "input": None, "canary": False, "watermarks": [],
           "evaluation": {"account_id": account_id, "ts": 1.0, "queries": 100, "scores": {"add": 9.0},
                          "reasons": ["ADD 9.0 > 1.0 at 100 queries"]}}
    state.pipeline.write([row])
    account = state.repository.get_account(name)
    assert {k: account[k] for k in expect} == expect
    assert len(state.repository.score_history(name)) == 1  # recorded in every mode
    status = g.predict(key).status_code
    assert status == (403 if action == "block" else 200)


def test_an_operators_unflag_stands_until_new_evidence(make_guarded):
    from flask_modelguard import ModelGuard

    g = make_guarded()
    name, _ = g.account()
    state = ModelGuard.state(g.app)
    account_id = state.repository.get_account(name)["id"]
    state.repository.merge_state(account_id, lambda stored: {**__import__("flask_modelguard").state.AccountState(64).to_dict(), "queries": 200})

    def verdict(queries):
        return {"account_id": account_id, "key_id": 1, "route": "predict", "ts": 1.0, "status": 200,
                "latency_ms": 1.0, "n_instances": 1, "fingerprint": None, "labels": [1], "top_confidences": [0.9],
                "input": None, "canary": False, "watermarks": [],
                "evaluation": {"account_id": account_id, "ts": 1.0, "queries": queries, "scores": {},
                               "reasons": ["ADD 9.0 > 1.0"]}}

    state.pipeline.write([verdict(200)])
    assert state.repository.get_account(name)["flagged"]
    with g.app.app_context():
        g.guard.update_account(name, flagged=False)  # reviewed at 200 queries
    state.pipeline.write([verdict(250)])
    assert not state.repository.get_account(name)["flagged"]
    state.pipeline.write([verdict(300)])
    assert state.repository.get_account(name)["flagged"]


def test_account_flagged_signal(make_guarded):
    from flask_modelguard import ModelGuard
    from flask_modelguard.signals import account_flagged

    g = make_guarded()
    name, key = g.account()
    received = []

    def receiver(app, **kwargs):
        received.append((app, kwargs))

    def broken(app, **kwargs):
        raise RuntimeError("pager down")

    account_flagged.connect(broken, sender=g.app, weak=False)
    account_flagged.connect(receiver, sender=g.app, weak=False)
    try:
        with g.app.app_context():
            g.guard.add_canaries([[7, 7]])
        g.predict(key, {"features": [7, 7]})
        g.guard.flush(g.app)
    finally:
        account_flagged.disconnect(receiver, sender=g.app)
        account_flagged.disconnect(broken, sender=g.app)
    account_id = ModelGuard.state(g.app).repository.get_account(name)["id"]
    assert received == [(g.app, {"account_id": account_id, "reason": "sent a canary input", "action": "canary"})]


@pytest.mark.parametrize("huge", [1e308, 1e200, -1e300])
def test_huge_numbers_cannot_switch_detection_off(tmp_path, model_cache, huge):
    """One request of huge finite numbers (the example answers it: they are
    finite) must not poison the account's statistics: the stored state stays
    finite, and the Jacobian-like thief that follows is flagged as it would be."""
    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "hostile-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/h.db", "MODELGUARD_WATERMARK": 0.0})
    X_train, X_test, _, _ = split()
    model = app.extensions["digits_model"]
    rng = np.random.default_rng(5)
    with app.app_context():
        guard.fit_reference(X_train.tolist(), model.predict_proba(X_train).argmax(axis=1))
        guard.create_account("thief", limits="100000/minute")
        key = guard.issue_key("thief")
    client = app.test_client()
    r = client.post("/predict", json={"features": [huge] * 64}, headers={"X-API-Key": key})
    assert r.status_code == 200
    _send(client, key, _jbda(rng, X_test[rng.permutation(len(X_test))[:15]], 250), app=app)
    with app.app_context():
        guard.flush()
        account = {a["name"]: a for a in guard.list_accounts()}["thief"]
        history = guard.score_history("thief")
        state = guard.state(app)
        stored = state.repository.load_state(account["id"])
    assert account["flagged"], history[-1]
    assert next(h for h in history if h["reasons"])["queries"] <= 150
    assert all(np.isfinite(v) for h in history for v in (h["scores"] or {}).values() if v is not None)
    assert np.isfinite(unpack(stored["moments"]["mean"])).all()
    guard.close(app)


def test_input_range_clips_features_and_a_failed_evaluation_is_suspicious(make_guarded, monkeypatch):
    """MODELGUARD_INPUT_RANGE clips what the statistics see (counted); when
    the detectors fail on an account, its evaluation is a verdict of its own
    (flagged, the error counted in its scores), never a silent 0."""
    from flask_modelguard import ModelGuard
    from flask_modelguard.monitor import Monitor

    g = make_guarded(MODELGUARD_DETECTION=True, MODELGUARD_FLUSH_INTERVAL=3600, MODELGUARD_INPUT_RANGE=[0, 10],
                     MODELGUARD_DETECTION_MIN_QUERIES=5)
    state = ModelGuard.state(g.app)
    name, key = g.account(limits="100000/minute")
    for i in range(4):
        assert g.predict(key, {"features": [1e300 * (-1) ** i] * 8}).status_code == 200
    g.guard.flush(g.app)
    assert g.guard.stats(g.app)["inputs_clipped"] == 4
    account_id = state.repository.get_account(name)["id"]
    moments = state.monitor.state(account_id).moments
    assert moments.mean.min() >= 0 and moments.mean.max() <= 10

    def broken(self, account_id, ts):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(Monitor, "evaluate", broken)
    assert g.predict(key, {"features": [3.0] * 8}).status_code == 200
    g.guard.flush(g.app)
    with g.app.app_context():
        history = g.guard.score_history(name)
        flagged = {a["name"]: a for a in g.guard.list_accounts()}[name]["flagged"]
    assert flagged, history
    assert history[-1]["reasons"] == ["detection failed (LinAlgError): treated as suspicious"]
    assert history[-1]["scores"]["detection_errors"] == 1
    assert g.guard.stats(g.app)["evaluations_failed"] == 1


def test_a_route_with_its_own_adapter_feeds_detection(tmp_path, model_cache):
    """A route whose answers only a custom adapter reads: what the adapter
    reads goes into the query log, and a uniform-noise thief on that route
    is flagged as on the example's own route."""
    from flask import request

    app = create_app({"MODEL_CACHE_DIR": model_cache, "SECRET_KEY": "adapter-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp_path}/a.db", "MODELGUARD_WATERMARK": 0.0})
    model = app.extensions["digits_model"]

    def read(payload):
        return payload["out"]["p"]

    def write(payload, answer):
        return {"out": {"p": answer.probs.tolist(), "k": answer.labels.tolist()}}

    @app.post("/odd")
    @guard.protect(adapter=(read, write))
    def odd():
        X = np.clip(np.asarray(request.get_json()["instances"], dtype=float), 0, 16)
        return {"out": {"p": model.predict_proba(X).tolist()}}

    with app.app_context():
        guard.create_account("odd-thief", limits="100000/minute")
        key = guard.issue_key("odd-thief")
    client = app.test_client()
    rng = np.random.default_rng(3)
    for _ in range(15):
        r = client.post("/odd", json={"instances": rng.integers(0, 17, (10, 64)).tolist()}, headers={"X-API-Key": key})
        assert r.status_code == 200 and len(r.get_json()["out"]["p"]) == 10
        guard.flush(app)
    with app.app_context():
        account = {a["name"]: a for a in guard.list_accounts()}["odd-thief"]
        history = guard.score_history("odd-thief")
        state = guard.state(app)
        rows = list(state.repository.events(account["id"]))
    assert all(row["labels"] and len(row["labels"]) == 10 for row in rows)  # the adapter's reading, logged
    assert account["flagged"] and next(h for h in history if h["reasons"])["queries"] <= 50, history[-1:]
    guard.close(app)
