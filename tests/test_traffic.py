"""The dashboard's traffic over time (admin/traffic.py): ranges and their
buckets, and the SQL aggregation on SQLite and PostgreSQL (buckets floored on
both: PostgreSQL's integer cast alone would round)."""

from __future__ import annotations

import pytest

from flask_modelguard.admin import traffic
from flask_modelguard.exc import InvalidValue

NOW = 1_800_000_000.0  # the tests' FakeClock (2027-01-15 08:00 UTC)


def test_ranges_and_their_buckets():
    hour = traffic.resolve_range("hour", NOW)
    assert (hour.bucket, hour.buckets, hour.until) == (60, 60, NOW) and hour.since == NOW - 3600
    assert traffic.resolve_range(None, NOW).bucket == 1800  # a day by default: 48 half hours
    week = traffic.resolve_range("week", NOW)
    assert week.bucket == 3 * 3600 and week.buckets <= traffic.MAX_BUCKETS and week.since % week.bucket == 0
    custom = traffic.resolve_range("custom", NOW, "2027-01-01", "2027-01-03T00:00+00:00")
    assert (custom.since, custom.until - custom.since, custom.bucket) == (1798761600.0, 2 * 86400, 3600)
    assert traffic.resolve_range("custom", NOW, "2027-01-15T07:30").until == NOW  # "to" empty: now
    for name, since, until in (("year", None, None), ("custom", "soon", None), ("custom", "2027-01-03", "2027-01-01"),
                               ("custom", "2020-01-01", "2027-01-01"), ("custom", "0001-01-01", "0001-01-08"),
                               ("custom", "9999-12-30", "9999-12-31T23:59"), ("custom", "nan", None)):
        with pytest.raises(InvalidValue):
            traffic.resolve_range(name, NOW, since, until)


def test_refusal_reasons_by_status():
    assert traffic.refusal_reason(200) is None and traffic.refusal_reason(304) is None
    assert traffic.refusal_reason(429) == "limit or quota"
    assert traffic.refusal_reason(403) == "blocked, suspended or key revoked"
    assert traffic.refusal_reason(502) == "view error" and traffic.refusal_reason(418) == "other"
    assert set(traffic.REFUSALS.values()) <= set(traffic.REFUSAL_ORDER)


def test_traffic_buckets_requests_refusals_latency_and_alerts(make_guarded):
    g = make_guarded()
    _, key = g.account("steady", limits="4/hour")  # (the limiter counts in real time, not the test's clock)
    _, other = g.account("other", limits="100/minute")
    # minute 0: 4 requests; minute 1, in its last half second: 2 over the limit; minute 2: none
    start = NOW - 3 * 60
    for n, at in enumerate([start + 1, start + 2, start + 3, start + 4, start + 119.6, start + 119.7]):
        g.clock.now = at
        g.predict(key, {"features": [float(n), 1.0]})
    g.clock.now = start + 130
    with g.app.app_context():
        g.guard.add_canaries([[9.0, 9.0]])
    g.predict(other, {"features": [9.0, 9.0]})  # a canary: one alert
    g.clock.now = NOW
    g.guard.flush(g.app)
    state = g.guard.state(g.app)
    engine = state.repository.engine
    rng = traffic.TimeRange(start, NOW, 60, "custom")
    found = traffic.traffic(engine, rng)
    assert found.answered == [4, 0, 1]
    assert found.refused == {"limit or quota": [0, 2, 0]}  # 119.6 s is in minute 1, not rounded into minute 2
    assert found.requests == 7 and found.refusals == {"limit or quota": 2}
    assert all(m is not None and m >= 0 for m in found.latency_mean) and found.latency_max[0] >= found.latency_mean[0]
    assert sum(found.alerts.get("canary", [])) == 1 and found.alerts["canary"][2] == 1
    alone = traffic.traffic(engine, rng, state.repository.get_account("steady")["id"])
    assert alone.answered == [4, 0, 0] and alone.alerts == {}
    empty = traffic.traffic(engine, traffic.TimeRange(NOW - 7200, NOW - 3600, 600))
    assert empty.requests == 0 and empty.latency_mean == [None] * 6
    recent = traffic.recent_events(engine, state.repository.get_account("steady")["id"], limit=3)
    assert [e["status"] for e in recent] == [429, 429, 200] and "input" not in recent[0]
