"""Detection end to end on the example app: simulated benign users and thieves
send real requests through the guard; the worker's detectors flag the thieves
(then served misinformation) and no benign account."""

from __future__ import annotations

import numpy as np
import pytest

from example_app import create_app, guard
from example_app.model import split


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
def traffic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detection")
    app = create_app({"MODEL_CACHE_DIR": str(tmp), "SECRET_KEY": "detection-test",
                      "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/d.db", "MODELGUARD_WATERMARK": 0.0})
    X_train, X_test, _, _ = split()
    model = app.extensions["digits_model"]
    rng = np.random.default_rng(11)
    names = [f"benign{i}" for i in range(8)] + ["uniform", "gaussian", "jbda", "shifted"]
    with app.app_context():
        guard.fit_reference(X_train.tolist(), model.predict_proba(X_train).argmax(axis=1))
        for name in names:
            guard.create_account(name, limits="100000/minute")
        keys = {name: guard.issue_key(name) for name in names}
    client = app.test_client()
    for i in range(8):  # natural held-out digits, each user a different sample
        _send(client, keys[f"benign{i}"], X_test[rng.permutation(len(X_test))[:150]])
    thieves = {
        "uniform": rng.uniform(0, 16, (250, 64)),
        "gaussian": np.clip(rng.normal(8, 4, (250, 64)), 0, 16),
        "jbda": _jbda(rng, X_test[rng.permutation(len(X_test))[:15]], 250),
        # Knockoff-style natural data from another distribution: digits shifted one pixel right
        "shifted": np.roll(X_test[rng.permutation(len(X_test))[:250]].reshape(-1, 8, 8), 1, axis=2).reshape(-1, 64),
    }
    served = {name: _send(client, keys[name], X, app=app) for name, X in thieves.items()}
    with app.app_context():
        guard.flush()
        accounts = {a["name"]: a for a in guard.list_accounts()}
        history = {name: guard.score_history(name) for name in names}
    yield app, accounts, history, served, thieves, model
    guard.close(app)


def test_no_benign_account_is_flagged(traffic):
    _, accounts, history, *_ = traffic
    for i in range(8):
        name = f"benign{i}"
        assert not accounts[name]["flagged"], history[name][-1]
        assert history[name] and not any(h["reasons"] for h in history[name])


@pytest.mark.parametrize("thief", ["uniform", "gaussian", "jbda", "shifted"])
def test_each_thief_is_flagged_within_about_100_queries(traffic, thief):
    _, accounts, history, *_ = traffic
    assert accounts[thief]["flagged"]
    first = next(h for h in history[thief] if h["reasons"])
    # PRADA, which catches the Jacobian thief, needs more than 100 distances by design
    assert first["queries"] <= 150, first
    assert any(r.startswith(("ADD", "PRADA")) for r in first["reasons"])


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
        state._write_events([{**base, **row}])
        assert not {a["name"]: a for a in guard.list_accounts()}["jbda"]["flagged"]
        assert "flagged" not in caplog.text
