"""Traffic over time for the dashboard: the query log, the alerts and the
evaluations aggregated in SQL into time buckets (one GROUP BY each, over the
``ts`` indexes), so an overview costs the same few queries whatever the
number of events. Framework-free (SQLAlchemy)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, Integer, cast, func, select

from .. import models as m
from ..exc import InvalidValue

#: The named ranges, in seconds.
RANGES: Mapping[str, float] = {"hour": 3600.0, "day": 86400.0, "week": 7 * 86400.0}
#: Bucket widths to choose from (seconds): the smallest that gives at most MAX_BUCKETS.
BUCKET_SIZES = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
MAX_BUCKETS = 72
#: The longest custom range (a year), and the times a range may span (1970 to 9999).
MAX_RANGE = 366 * 86400.0
EARLIEST, LATEST = 0.0, 253370764800.0  # 9999-01-01T00:00Z
#: Why a known account's request was refused, by its HTTP status (the query
#: log keeps the status, so a revoked key and a blocked account share 403).
REFUSALS: Mapping[int, str] = {
    400: "invalid or too large", 413: "invalid or too large", 415: "invalid or too large",
    422: "invalid or too large", 401: "key expired", 403: "blocked, suspended or key revoked",
    429: "limit or quota", 503: "storage unavailable",
}
REFUSAL_ORDER = ("limit or quota", "blocked, suspended or key revoked", "key expired", "invalid or too large",
                 "storage unavailable", "view error", "other")


def refusal_reason(status: int) -> str | None:
    """Why a request with this status was refused (None: it was answered)."""
    if 200 <= status < 400:
        return None
    if status in REFUSALS:
        return REFUSALS[status]
    return "view error" if status >= 500 else "other"


@dataclass(frozen=True)
class TimeRange:
    """``[since, until]`` in epoch seconds, cut into buckets of ``bucket`` seconds
    (the last one holds ``until`` too: a range ending now shows this second)."""

    since: float
    until: float
    bucket: int
    name: str = "custom"

    @property
    def buckets(self) -> int:
        return max(1, math.ceil((self.until - self.since) / self.bucket))

    def starts(self) -> list[float]:
        return [self.since + n * self.bucket for n in range(self.buckets)]


def _parse_time(text: str, what: str) -> float:
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidValue(f"{what} must be a date or time such as 2026-12-01 or 2026-12-01T08:00.") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


def resolve_range(name: str | None, now: float, since: str | None = None, until: str | None = None) -> TimeRange:
    """The range ``name`` ("hour", "day", "week"; default "day") ending now,
    or "custom" from ``since`` to ``until`` (ISO dates or times, UTC unless
    they say otherwise; ``until`` empty: now)."""
    name = name or "day"
    if name == "custom":
        start = _parse_time(since or "", "from")
        end = _parse_time(until, "to") if until else now
        if not 0 < end - start <= MAX_RANGE:
            raise InvalidValue("The range must end after it starts and last at most a year.")
        if not (EARLIEST <= start and end <= LATEST):
            raise InvalidValue("The range must lie between 1970 and 9999.")
    elif name in RANGES:
        start, end = now - RANGES[name], now
    else:
        raise InvalidValue(f"range must be one of {', '.join([*RANGES, 'custom'])}.")
    bucket = next((b for b in BUCKET_SIZES if (end - start) / b <= MAX_BUCKETS), BUCKET_SIZES[-1])
    if name != "custom":
        start = math.floor(start / bucket) * bucket  # buckets on round times (a custom range starts where asked)
    return TimeRange(float(start), float(end), bucket, name)


@dataclass
class Traffic:
    """Per-bucket series over one :class:`TimeRange`."""

    range: TimeRange
    answered: list[int]
    refused: dict[str, list[int]]
    latency_mean: list[float | None]
    latency_max: list[float | None]
    alerts: dict[str, list[int]] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(self.answered) + sum(sum(v) for v in self.refused.values())

    @property
    def refusals(self) -> dict[str, int]:
        return {reason: sum(v) for reason, v in self.refused.items()}


def _bucket_of(engine: Engine, ts: Any, rng: TimeRange) -> Any:
    """The bucket number of ``ts`` in SQL (ts >= since, so truncation is floor;
    PostgreSQL's integer cast rounds, so it floors first)."""
    offset = (ts - rng.since) / rng.bucket
    return cast(func.floor(offset) if engine.dialect.name != "sqlite" else offset, Integer)


def traffic(engine: Engine, rng: TimeRange, account_id: int | None = None) -> Traffic:
    """Requests answered and refused (by reason), mean and highest latency, and
    alerts by action, per bucket of ``rng`` (one account's, or everyone's)."""
    e, n = m.query_events, rng.buckets
    bucket = _bucket_of(engine, e.c.ts, rng).label("b")
    where = [e.c.ts >= rng.since, e.c.ts <= rng.until] + ([e.c.account_id == account_id] if account_id else [])
    query = (select(bucket, e.c.status, func.count(), func.sum(e.c.latency_ms), func.max(e.c.latency_ms))
             .where(*where).group_by(bucket, e.c.status))
    a = m.alerts
    alert_bucket = _bucket_of(engine, a.c.ts, rng).label("b")
    alert_where = [a.c.ts >= rng.since, a.c.ts <= rng.until] + ([a.c.account_id == account_id] if account_id else [])
    alert_query = select(alert_bucket, a.c.action, func.count()).where(*alert_where).group_by(alert_bucket, a.c.action)
    answered, refused = [0] * n, {reason: [0] * n for reason in REFUSAL_ORDER}
    total_ms, count = [0.0] * n, [0] * n
    top: list[float | None] = [None] * n
    alerts: dict[str, list[int]] = {}
    with engine.connect() as conn:
        for b, status, requests, ms, most in conn.execute(query):
            b = min(b, n - 1)  # ts == until: the last bucket
            reason = refusal_reason(int(status))
            if reason is None:
                answered[b] += requests
            else:
                refused[reason][b] += requests
            total_ms[b] += float(ms or 0.0)
            count[b] += requests
            top[b] = max(float(most), top[b] or 0.0)
        for b, action, found in conn.execute(alert_query):
            alerts.setdefault(str(action), [0] * n)[min(b, n - 1)] += found
    mean = [total_ms[b] / count[b] if count[b] else None for b in range(n)]
    return Traffic(rng, answered, {k: v for k, v in refused.items() if any(v)}, mean, top, alerts)


def score_series(engine: Engine, account_id: int, rng: TimeRange) -> list[tuple[float, float, list[str]]]:
    """An account's evaluations in ``rng``: (ts, malicious score, reasons), oldest first."""
    s = m.scores
    query = (select(s.c.ts, s.c.scores, s.c.reasons)
             .where(s.c.account_id == account_id, s.c.ts >= rng.since, s.c.ts <= rng.until)
             .order_by(s.c.ts, s.c.id))
    out = []
    with engine.connect() as conn:
        for ts, scores, reasons in conn.execute(query):
            score = (scores or {}).get("malicious")
            if isinstance(score, (int, float)) and math.isfinite(score):
                out.append((float(ts), float(score), list(reasons or [])))
    return out


def recent_events(engine: Engine, account_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """An account's latest query events, newest first, without their inputs."""
    e = m.query_events
    columns = [e.c.id, e.c.ts, e.c.route, e.c.status, e.c.latency_ms, e.c.n_instances, e.c.fingerprint,
               e.c.labels, e.c.canary]
    query = select(*columns).where(e.c.account_id == account_id).order_by(e.c.ts.desc(), e.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
