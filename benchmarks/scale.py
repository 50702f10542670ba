"""What a request and an event cost with 1,000 and with 100,000 active accounts.

For each number of accounts (``--accounts``), a fresh example app on SQLite:

- **requests**: that many accounts and keys, each key used once (so it is in
  the key cache, as in a server that has been up for a while), then
  ``--requests`` requests with keys drawn at random, through Flask's test
  client, the guard's worker in its thread (detection off here: its cost is
  the next part). Reports the CPU per request of the request thread and the
  database reads the key cache could not spare (the measure phase lasts longer
  than the cache's 30 s TTL at 100,000 accounts: the change feed keeps it fresh).
- **events**: every account with a stored state of 30 queries (as after a
  day of traffic), ``--events`` events for random accounts fed to the worker's
  stages as its thread would (prepare: detection; write: the query log),
  after one event per account (so the detectors hold them when
  ``MODELGUARD_MAX_ACCOUNTS`` is large enough). An evaluation and a merge
  are measured apart and added at their long-run share (a window of 30,000
  events holds too few of either at 100,000 accounts to count them in it).
  Reports CPU per event and its parts.

    python benchmarks/scale.py [--accounts 1000,100000] [--max-accounts 10000]

Read the ratio of the two rows: absolute figures vary a lot on shared machines.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from example_app import create_app, guard  # noqa: E402
from example_app.model import split  # noqa: E402
from flask_modelguard import models as m  # noqa: E402
from flask_modelguard.events import QueryEvent  # noqa: E402
from flask_modelguard.keys import generate_key  # noqa: E402
from flask_modelguard.state import AccountState  # noqa: E402

LIMITS = "1000000/second;100000000/hour;1000000000/day"


def _app(tmp: str, n: int, detection: bool, max_accounts: int | None) -> Any:
    config: dict[str, Any] = {"MODEL_CACHE_DIR": tmp, "SECRET_KEY": "scale", "MODELGUARD_DETECTION": detection,
                              "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/scale-{n}-{detection}.db"}
    if max_accounts:
        config["MODELGUARD_MAX_ACCOUNTS"] = max_accounts
    return create_app(config)


def _accounts(app: Any, n: int) -> list[str]:
    """``n`` accounts with a key each, inserted in bulk; their keys."""
    state = guard.state(app)
    now = state.repository.now()
    keys = [generate_key() for _ in range(n)]
    with state.repository.engine.begin() as conn:
        conn.execute(m.accounts.insert(), [
            {"name": f"a{i}", "tier": "pro", "status": "active", "limits": LIMITS, "flagged": False, "score": 0.0,
             "allowlisted": False, "reviewed_queries": 0, "created_at": now, "updated_at": now} for i in range(n)])
        ids = [r.id for r in conn.execute(m.accounts.select().order_by(m.accounts.c.id))]
        conn.execute(m.api_keys.insert(), [
            {"account_id": a, "prefix": k.prefix, "secret_hash": k.secret_hash, "created_at": now}
            for a, k in zip(ids, keys)])
    return [k.token for k in keys]


def requests(tmp: str, n: int, count: int) -> dict[str, float]:
    app = _app(tmp, n, detection=False, max_accounts=None)
    keys = _accounts(app, n)
    state = guard.state(app)
    reads = [0]
    lookup = state.repository.lookup
    state.repository.lookup = lambda prefix: reads.__setitem__(0, reads[0] + 1) or lookup(prefix)  # type: ignore[method-assign]
    client = app.test_client()
    body = {"features": split()[1][0].tolist()}
    began = time.monotonic()
    for key in keys:  # each key once: in the cache, as after a while in service
        client.post("/predict", json=body, headers={"X-API-Key": key})
    warm, reads[0] = reads[0], 0
    rng = random.Random(0)
    cpu = time.thread_time()
    for _ in range(count):
        client.post("/predict", json=body, headers={"X-API-Key": keys[rng.randrange(n)]})
    cpu = time.thread_time() - cpu
    out = {"cpu_us": cpu / count * 1e6, "reads": reads[0] / count, "warm": warm, "seconds": time.monotonic() - began}
    guard.close(app)
    return out


def _seed_states(app: Any, n: int, template: AccountState) -> None:
    """Every account with the same stored state (30 queries)."""
    state = guard.state(app)
    stored = template.to_dict()
    ids = list(range(1, n + 1))
    for start in range(0, n, 1000):
        state.repository.merge_states({a: (lambda _: stored) for a in ids[start:start + 1000]})


def _events(n: int, count: int, X: np.ndarray, model: Any, rng: np.random.Generator, t0: float,
            rate: float) -> list[QueryEvent]:
    picks = X[rng.integers(0, len(X), size=count)]
    probabilities = model.predict_proba(picks)
    return [QueryEvent(int(a), 1, "predict", t0 + i / rate, 200, 1.0, 1, {"features": x.tolist()},
                       {"label": int(p.argmax()), "probabilities": p.tolist()})
            for i, (a, x, p) in enumerate(zip(rng.integers(1, n + 1, size=count), picks, probabilities))]


def events(tmp: str, n: int, count: int, rate: float, max_accounts: int | None) -> dict[str, float]:
    """Per event: prepare and write measured over ``count`` events (evaluations
    held back), then one evaluation and one merge measured apart and added at
    the share they take in the long run (an evaluation every
    ``detection_every`` queries of an account; merges as the schedule takes
    them at ``rate`` events a second, see :func:`_merges_per_event`)."""
    app = _app(tmp, n, detection=True, max_accounts=max_accounts)
    state = guard.state(app)
    state.worker.stop()  # the stages are driven here
    model = app.extensions["digits_model"]
    X_train, X_test, _, _ = split()
    with app.app_context():
        guard.fit_reference(X_train.tolist(), model.predict_proba(X_train).argmax(axis=1))
    _accounts(app, n)
    rng = np.random.default_rng(0)
    template = AccountState(state.monitor.dim, space=state.monitor.space)
    for event in _events(1, 30, X_test, model, rng, 1.7e9, rate):
        template.update(state.pipeline._observation(event, event.to_row(state.fingerprint_key)))  # type: ignore[arg-type]
    _seed_states(app, n, template)
    monitor = state.monitor
    every, monitor.min_queries = monitor.min_queries, 10**9  # evaluations are measured apart
    t0 = 1.8e9
    warm = [QueryEvent(a, 1, "predict", t0, 200, 1.0, 1, e.request_json, e.response_json)
            for a, e in zip(range(1, n + 1), _events(1, n, X_test, model, rng, t0, rate))]
    rss = _rss()  # (after the events are built: what the accounts hold, not the test's data)
    _feed(state, warm)
    per_account = (_rss() - rss) / len(monitor.accounts)
    measured = _events(n, count, X_test, model, rng, t0 + 1, rate)
    loads = _count(state.monitor, "loader")  # (the monitor holds the bound loader, not the store)
    parts = _feed(state, measured)
    monitor.min_queries = every
    resident = list(monitor.accounts)
    sample = [resident[i] for i in rng.integers(0, len(resident), size=200)]
    t = time.thread_time()
    for account_id in sample:
        monitor.evaluate(account_id, measured[-1].ts)
    evaluation = (time.thread_time() - t) / len(sample)
    t = time.thread_time()
    merged = state.states.persist()
    merge = (time.thread_time() - t) / max(1, merged)
    share = _merges_per_event(n, rate)
    out = {k: v / count * 1e6 for k, v in parts.items()}
    out.update(evaluation_ms=evaluation * 1e3, merge_ms=merge * 1e3, merges=share, loads=loads[0] / count,
               resident=len(monitor.accounts), every=state.settings.detection_every, kib=per_account / 1024)
    out["cpu_us"] = out["prepare"] + out["write"] + evaluation * 1e6 / out["every"] + merge * 1e6 * share
    guard.close(app)
    return out


def _rss() -> int:
    """This process's resident memory, bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _merges_per_event(accounts: int, rate: float) -> float:
    """Merges per event in the long run, ``rate`` events a second spread evenly:
    an account's delta is taken at MERGE_QUERIES queries or MERGE_AGE seconds."""
    from flask_modelguard.persistence import MERGE_AGE, MERGE_QUERIES

    per_account = rate / accounts  # events a second
    return min(1.0, max(1 / MERGE_QUERIES, 1 / (per_account * MERGE_AGE)))


def _count(obj: Any, name: str) -> list[int]:
    counter = [0]
    real = getattr(obj, name)

    def counted(*args: Any) -> Any:
        counter[0] += 1
        return real(*args)

    setattr(obj, name, counted)
    return counter


def _feed(state: Any, items: list[QueryEvent]) -> dict[str, float]:
    """Prepare and write as the worker does, 500 events a batch; CPU seconds of each."""
    prepare = write = 0.0
    for start in range(0, len(items), 500):
        t = time.thread_time()
        rows = [state.pipeline.prepare(e) for e in items[start:start + 500]]
        prepare += time.thread_time() - t
        t = time.thread_time()
        state._write(rows)
        write += time.thread_time() - t
    return {"prepare": prepare, "write": write}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", default="1000,100000")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--events", type=int, default=30000)
    parser.add_argument("--rate", type=float, default=1000.0, help="events a second the worker takes")
    parser.add_argument("--max-accounts", type=int, default=None,
                        help="MODELGUARD_MAX_ACCOUNTS (default: the guard's default)")
    parser.add_argument("--skip", default="", help="'requests' or 'events'")
    args = parser.parse_args()
    sizes = [int(a) for a in args.accounts.split(",")]
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for n in sizes:
            if args.skip != "requests":
                r = requests(tmp, n, args.requests)
                print(f"{n:>7} accounts, requests: {r['cpu_us']:6.0f} µs CPU/request (request thread), "
                      f"{r['reads']:.4f} key reads/request ({r['warm']} while warming), {r['seconds']:.0f} s", flush=True)
            if args.skip != "events":
                e = events(tmp, n, args.events, args.rate, args.max_accounts)
                print(f"{n:>7} accounts, events: {e['cpu_us']:6.0f} µs CPU/event = prepare {e['prepare']:.0f} "
                      f"(with {e['loads']:.3f} state reads) + write {e['write']:.0f} + 1/{e['every']} of an "
                      f"evaluation ({e['evaluation_ms']:.2f} ms) + {e['merges']:.3f} of a merge "
                      f"({e['merge_ms']:.2f} ms); {e['resident']} accounts in memory, {e['kib']:.1f} KiB each", flush=True)


if __name__ == "__main__":
    main()
