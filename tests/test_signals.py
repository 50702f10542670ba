"""The blinker signals: account_blocked (detectors and operators) and
quota_exceeded (request thread), receivers isolated from each other."""

from __future__ import annotations

from flask_modelguard.signals import account_blocked, quota_exceeded


def _row(account_id, queries):
    base = {c: None for c in ("key_id", "route", "ts", "status", "latency_ms", "n_instances", "fingerprint",
                              "labels", "top_confidences", "input")}
    base.update(key_id=1, route="r", ts=1.0, status=200, latency_ms=1.0, n_instances=1, canary=False,
                watermarks=[], account_id=account_id)
    base["evaluation"] = {"account_id": account_id, "ts": 1.0, "queries": queries, "scores": {},
                          "reasons": ["ADD 50.0 > 26.3 at 30 distinct queries"]}
    return base


def test_quota_exceeded_is_sent_on_429_and_a_failing_receiver_is_harmless(make_guarded, caplog):
    g = make_guarded()
    name, key = g.account(limits="2/minute")
    got = []

    def broken(app, **kw):
        raise RuntimeError("receiver bug")

    def record(app, **kw):
        got.append(kw)

    quota_exceeded.connect(broken, sender=g.app)
    quota_exceeded.connect(record, sender=g.app)
    try:
        statuses = [g.predict(key).status_code for _ in range(3)]
    finally:
        quota_exceeded.disconnect(broken, sender=g.app)
        quota_exceeded.disconnect(record, sender=g.app)
    assert statuses == [200, 200, 429]
    assert len(got) == 1 and got[0]["limit"] == "2 per 1 minute" and got[0]["cost"] == 1
    assert "quota-exceeded receiver failed" in caplog.text


def test_account_blocked_by_the_detectors_and_by_an_operator(make_guarded):
    g = make_guarded(MODELGUARD_ACTION="block")
    thief, _ = g.account()
    other, key = g.account()
    got = []

    def record(app, **kw):
        got.append(kw)

    account_blocked.connect(record, sender=g.app)
    try:
        state = g.guard.state(g.app)
        thief_id = state.repository.get_account(thief)["id"]
        state.pipeline.write([_row(thief_id, 30)])
        assert state.repository.get_account(thief)["status"] == "blocked"
        with g.app.app_context():
            g.guard.update_account(other, status="blocked")
            g.guard.update_account(other, status="blocked")  # already blocked: no second signal
            g.guard.update_account(other, status="active")
    finally:
        account_blocked.disconnect(record, sender=g.app)
    assert [(s["account"], s["by"]) for s in got] == [(thief, "detectors"), (other, "operator")]
    assert got[0]["reason"].startswith("ADD")
    assert g.predict(key).status_code == 200
