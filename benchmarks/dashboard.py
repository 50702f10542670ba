"""What the dashboard's SQL costs over a large query log, on SQLite and PostgreSQL.

For each backend (``--backends``; SQLite: a file in a temporary directory,
PostgreSQL: a throwaway database on ``--postgres``, created here and dropped at
the end, skipped with the reason when unreachable), fills the guard's tables
with Core ``insert()`` batches:

- ``--accounts`` accounts, one key each, 2 % flagged, scores skewed low;
- ``--events`` query events with ``ts`` spread uniformly over the 7 days before
  a fixed ``NOW``, from accounts drawn skewed (the busiest, id 1, sends about
  5 % of them, most accounts a few dozen), status 200 for 95 %, then 429, 403,
  400; log-normal latency (median 12 ms); a fingerprint, 1 to 3 labels;
- an alert per 1,000 events and an evaluation (``scores``) per 100 events
  ({"malicious": x}; reasons [], some of the flagged accounts' not),

runs ANALYZE, prints the fill time, then times ``--repeat`` runs of each of the
dashboard's reads (wall clock, in the process: query, transfer and decoding):
``traffic()`` over everyone for the hour, day and week ranges and over the
busiest account for a week; ``page_accounts(search="12", sort="rank",
limit=25)``; ``page_accounts(flagged=True, sort="rank", limit=10,
with_reasons=True)``; ``recent_events()`` of the busiest account. It checks
traffic()'s totals (requests and alerts) against a plain ``count(*)`` over the
same ``ts`` range. Prints a Markdown table: median (max) milliseconds.

    PYTHONPATH=. .venv/bin/python benchmarks/dashboard.py [--events 1000000] [--accounts 10000]
        [--backends sqlite,postgresql] [--repeat 5]

Read the ratios between rows and backends: absolute figures vary on shared machines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
from sqlalchemy import Engine, Table, create_engine, func, insert, select, text

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_modelguard import models as m  # noqa: E402
from flask_modelguard.admin.traffic import TimeRange, recent_events, resolve_range, traffic  # noqa: E402
from flask_modelguard.repository import Repository  # noqa: E402

#: The events' clock ends here (2027-01-15 08:00 UTC): every run fills the same data.
NOW = 1_800_000_000.0
WEEK = 7 * 86400.0
BATCH = 20_000
STATUSES, STATUS_SHARES = (200, 429, 403, 400), (0.95, 0.03, 0.01, 0.01)
ACTIONS = ("observe", "degrade", "throttle", "block", "canary")
TIERS = ("free", "pro", "enterprise")
POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432"
Rows = list[dict[str, Any]]


def _account_ids(rng: np.random.Generator, n: int, accounts: int) -> list[int]:
    """Skewed: P(id <= k) = (k / accounts) ** (1/3), so id 1 is the busiest."""
    ids: list[int] = (1 + (accounts * rng.random(n) ** 3).astype(np.int64)).tolist()
    return ids


def _accounts(rng: np.random.Generator, n: int) -> tuple[Rows, Rows]:
    """The account rows and a key each."""
    created = dt.datetime.fromtimestamp(NOW - 30 * 86400, dt.timezone.utc)
    flagged = (rng.random(n) < 0.02).tolist()
    scores = (rng.random(n) ** 3 * 0.6).tolist()
    accounts = [{"id": i + 1, "name": f"account-{i + 1:06d}", "tier": TIERS[i % 3], "status": "active",
                 "limits": None, "flagged": flagged[i], "score": 0.6 + scores[i] / 1.5 if flagged[i] else scores[i],
                 "allowlisted": False, "reviewed_queries": 0, "created_at": created, "updated_at": created}
                for i in range(n)]
    keys = [{"account_id": i + 1, "prefix": f"k{i + 1:015d}", "secret_hash": "0" * 64, "created_at": created}
            for i in range(n)]
    return accounts, keys


def _events(rng: np.random.Generator, n: int, accounts: int) -> Rows:
    """``n`` query events of the last week."""
    ids = _account_ids(rng, n, accounts)
    ts = (NOW - WEEK * rng.random(n)).tolist()  # in (NOW - WEEK, NOW]
    status = rng.choice(np.array(STATUSES), n, p=STATUS_SHARES).tolist()
    latency = rng.lognormal(np.log(12.0), 0.6, n).round(3).tolist()
    sizes = rng.integers(1, 4, n).tolist()
    labels = rng.integers(0, 10, (n, 3)).tolist()
    prints = rng.integers(0, 2**63, (n, 2)).tolist()
    return [{"account_id": ids[i], "key_id": ids[i], "route": "/predict", "ts": ts[i], "status": status[i],
             "latency_ms": latency[i], "n_instances": sizes[i], "fingerprint": f"{prints[i][0]:016x}{prints[i][1]:016x}",
             "labels": labels[i][:sizes[i]], "top_confidences": None, "input": None, "canary": False}
            for i in range(n)]


def _alerts(rng: np.random.Generator, n: int, accounts: int) -> Rows:
    ids, ts = _account_ids(rng, n, accounts), (NOW - WEEK * rng.random(n)).tolist()
    actions, acknowledged = rng.integers(0, len(ACTIONS), n).tolist(), (rng.random(n) < 0.5).tolist()
    at = dt.datetime.fromtimestamp(NOW, dt.timezone.utc)
    return [{"account_id": ids[i], "ts": ts[i], "action": ACTIONS[actions[i]], "reason": "add: ratio 3.1 over 2.0",
             "acknowledged_at": at if acknowledged[i] else None, "acknowledged_by": "bench" if acknowledged[i] else None}
            for i in range(n)]


def _scores(rng: np.random.Generator, n: int, accounts: int, flagged: set[int]) -> Rows:
    ids, ts = _account_ids(rng, n, accounts), (NOW - WEEK * rng.random(n)).tolist()
    malicious, found = rng.random(n).round(4).tolist(), (rng.random(n) < 0.5).tolist()
    return [{"account_id": ids[i], "ts": ts[i], "queries": 100 * (i + 1), "scores": {"malicious": malicious[i]},
             "reasons": ["add: ratio 3.1 over 2.0"] if ids[i] in flagged and found[i] else []}
            for i in range(n)]


def _insert(engine: Engine, table: Table, make: Callable[[int], Rows], total: int) -> None:
    """``total`` rows of ``make(n)``, ``BATCH`` a transaction (executemany)."""
    for start in range(0, total, BATCH):
        rows = make(min(BATCH, total - start))
        with engine.begin() as conn:
            conn.execute(insert(table), rows)


def fill(engine: Engine, events: int, accounts: int) -> dict[str, float]:
    """The tables created and filled, then ANALYZE; seconds per part."""
    rng = np.random.default_rng(0)
    m.metadata.create_all(engine)
    took: dict[str, float] = {}
    started = time.perf_counter()
    account_rows, key_rows = _accounts(rng, accounts)
    with engine.begin() as conn:
        conn.execute(insert(m.accounts), account_rows)
        conn.execute(insert(m.api_keys), key_rows)
    flagged = {r["id"] for r in account_rows if r["flagged"]}
    took["accounts"], started = time.perf_counter() - started, time.perf_counter()
    _insert(engine, m.query_events, lambda n: _events(rng, n, accounts), events)
    took["events"], started = time.perf_counter() - started, time.perf_counter()
    _insert(engine, m.alerts, lambda n: _alerts(rng, n, accounts), events // 1000)
    _insert(engine, m.scores, lambda n: _scores(rng, n, accounts, flagged), events // 100)
    took["alerts, scores"], started = time.perf_counter() - started, time.perf_counter()
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    took["analyze"] = time.perf_counter() - started
    took["total"] = sum(took.values())
    return took


def _count(engine: Engine, table: Table, rng: TimeRange, account_id: int | None = None) -> int:
    where = [table.c.ts >= rng.since, table.c.ts <= rng.until]
    if account_id is not None:
        where.append(table.c.account_id == account_id)
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


def check(engine: Engine, rng: TimeRange, account_id: int | None = None) -> None:
    """traffic()'s totals are those of a plain count(*) over the same range."""
    found = traffic(engine, rng, account_id)
    events, alerts = _count(engine, m.query_events, rng, account_id), _count(engine, m.alerts, rng, account_id)
    assert found.requests == events, (rng.name, account_id, found.requests, events)
    assert sum(sum(v) for v in found.alerts.values()) == alerts, (rng.name, account_id, found.alerts, alerts)


def _busiest(engine: Engine) -> tuple[int, int]:
    """The account with the most events, and their number."""
    e = m.query_events
    query = select(e.c.account_id, func.count().label("n")).group_by(e.c.account_id).order_by(func.count().desc())
    with engine.connect() as conn:
        row = conn.execute(query.limit(1)).one()
    return int(row.account_id), int(row.n)


def _timed(call: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Median and max milliseconds of ``repeat`` calls."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        runs.append(1e3 * (time.perf_counter() - started))
    return statistics.median(runs), max(runs)


def measure(engine: Engine, repeat: int) -> tuple[dict[str, tuple[float, float]], tuple[int, int]]:
    """Each read's median and max ms, after checking traffic()'s totals; and the busiest account."""
    repo = Repository(engine, clock=lambda: NOW)
    ranges = {name: resolve_range(name, NOW) for name in ("hour", "day", "week")}
    account_id, account_events = _busiest(engine)
    for rng in ranges.values():
        check(engine, rng)
    check(engine, ranges["week"], account_id)
    calls: dict[str, Callable[[], object]] = {
        **{f"traffic(), everyone, {name}": partial(traffic, engine, rng) for name, rng in ranges.items()},
        "traffic(), busiest account, week": lambda: traffic(engine, ranges["week"], account_id),
        'page_accounts(search="12", sort="rank", limit=25)':
            lambda: repo.page_accounts(search="12", sort="rank", limit=25),
        'page_accounts(flagged=True, sort="rank", limit=10, with_reasons=True)':
            lambda: repo.page_accounts(flagged=True, sort="rank", limit=10, with_reasons=True),
        "recent_events(), busiest account": lambda: recent_events(engine, account_id),
    }
    return {name: _timed(call, repeat) for name, call in calls.items()}, (account_id, account_events)


def _postgres_problem(server: str) -> str | None:
    """Why PostgreSQL cannot be used (None: it can)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    admin = create_engine(f"{server}/postgres")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect: its reason is printed
        return f"PostgreSQL at {server} is unreachable: {str(exc).splitlines()[0]}"
    finally:
        admin.dispose()
    return None


@contextmanager
def sqlite_engine() -> Iterator[Engine]:
    """A SQLite file in a temporary directory, deleted at the end."""
    with tempfile.TemporaryDirectory(prefix="modelguard-dashboard-") as tmp:
        engine = create_engine(f"sqlite:///{tmp}/dashboard.db")
        Repository(engine)  # its WAL and busy timeout, as the guard opens it
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def postgresql_engine(server: str) -> Iterator[Engine]:
    """A throwaway database on ``server``, dropped at the end."""
    name = f"bench_dashboard_{uuid.uuid4().hex[:10]}"
    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(f"{server}/{name}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _version(engine: Engine) -> str:
    if engine.dialect.name == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    with engine.connect() as conn:
        return f"PostgreSQL {str(conn.execute(text('SHOW server_version')).scalar_one()).split()[0]}"


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """Fill and measure one backend."""
    opened = sqlite_engine() if backend == "sqlite" else postgresql_engine(args.postgres)
    with opened as engine:
        print(f"{backend}: filling {args.accounts:,} accounts and {args.events:,} events ...", flush=True)
        took = fill(engine, args.events, args.accounts)
        parts = ", ".join(f"{part} {seconds:.1f} s" for part, seconds in took.items())
        print(f"{backend}: filled in {took['total']:.1f} s ({parts}; "
              f"{args.events / took['events']:,.0f} events/s)", flush=True)
        times, busiest = measure(engine, args.repeat)
        print(f"{backend}: measured", flush=True)
        return {"version": _version(engine), "fill": took, "times": times, "busiest": busiest}


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    """The Markdown table: a row per read, a column per backend."""
    backends = list(results)
    print(f"\n## Dashboard SQL: {args.events:,} events, {args.accounts:,} accounts "
          f"({dt.datetime.now(dt.timezone.utc):%Y-%m-%d}, median (max) ms of {args.repeat} runs)\n")
    print("| measure | " + " | ".join(results[b]["version"] for b in backends) + " |")
    print("|---|" + "---:|" * len(backends))
    for name in results[backends[0]]["times"]:
        cells = [f"{results[b]['times'][name][0]:.1f} ({results[b]['times'][name][1]:.1f})" for b in backends]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| fill, total (s) | " + " | ".join(f"{results[b]['fill']['total']:.1f}" for b in backends) + " |")
    account_id, events = results[backends[0]]["busiest"]
    print(f"\nBusiest account: id {account_id}, {events:,} events. traffic() totals checked against count(*).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--postgres", default=POSTGRES, help="server URL, without a database")
    args = parser.parse_args()
    results: dict[str, dict[str, Any]] = {}
    for backend in (b.strip() for b in args.backends.split(",") if b.strip()):
        if backend not in ("sqlite", "postgresql"):
            parser.error(f"unknown backend {backend!r}: sqlite or postgresql")
        problem = _postgres_problem(args.postgres) if backend == "postgresql" else None
        if problem:
            print(f"postgresql: skipped: {problem}")
            continue
        results[backend] = run(backend, args)
    if results:
        report(results, args)


if __name__ == "__main__":
    main()
