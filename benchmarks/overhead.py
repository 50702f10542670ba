"""What the guard costs on the request path, measured in one run.

Times the example ``POST /predict`` through Flask's test client in several
apps: bare (no guard); guarded (ModelGuard with the example's defaults: key
auth, three limits, rate-limit headers, 0.25% watermark answers, the
probability mark, event enqueue and the worker writing to SQLite in the same
process); guarded-1 (the same with one limit); guarded without output
protection; guarded without the probability mark; guarded with two output transforms;
Flask-Limiter alone (memory storage, one limit). The
apps receive identical requests (the key header too) and are timed in interleaved rounds so drift on a shared machine hits all
three alike; the figures to read are the ratios, not the absolute times.
Besides the median it prints the mean (the worker's work on the serving
process's GIL shows there, not in the median) and CPU per request: of the
request thread, and of the whole process (all apps share it, so "others"
also holds the other apps' background threads; benchmarks/throughput.py
measures each server's processes apart).

    python benchmarks/overhead.py [--requests 2000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_limiter import Limiter  # noqa: E402
from flask_limiter.util import get_remote_address  # noqa: E402

from example_app import create_app, guard  # noqa: E402
from example_app.model import split  # noqa: E402

#: Limits too high to refuse anything, shaped like the default tiers (three windows).
THREE_LIMITS = "1000000/second;100000000/hour;1000000000/day"
ONE_LIMIT = "1000000/second"


def build(tmp: str) -> dict[str, tuple]:
    config = {"MODEL_CACHE_DIR": tmp, "SECRET_KEY": "bench"}
    bare = create_app(config, guarded=False)
    limited = create_app(config, guarded=False)
    Limiter(get_remote_address, app=limited, default_limits=["1000000/second"], storage_uri="memory://")
    guarded = create_app({**config, "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/mg.db"})
    with guarded.app_context():
        guard.create_account("bench", limits=THREE_LIMITS)
        key = guard.issue_key("bench")
    guarded_one = create_app({**config, "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/mg1.db"})
    with guarded_one.app_context():
        guard.create_account("bench", limits=ONE_LIMIT)
        key_one = guard.issue_key("bench")
    variants = {
        "no-output": {"MODELGUARD_WATERMARK": 0.0, "MODELGUARD_PROBABILITY_MARK": 0.0},
        "no-mark": {"MODELGUARD_PROBABILITY_MARK": 0.0},
        "+transforms": {"MODELGUARD_OUTPUT": ["round(2)", "gaussian(0.02)"]},
    }
    extra = {}
    for name, settings in variants.items():
        app = create_app({**config, **settings, "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/{name}.db"})
        with app.app_context():
            guard.create_account("bench", limits=THREE_LIMITS)
            extra[f"guarded{name}"] = (app.test_client(), {"Authorization": f"Bearer {guard.issue_key('bench')}"})
    # Every app gets the same request, key header included: the test client's
    # cost of building a header is the client's, not the guard's.
    headers = {"Authorization": f"Bearer {key}"}
    return {
        "bare": (bare.test_client(), headers),
        "guarded": (guarded.test_client(), headers),
        "guarded-1": (guarded_one.test_client(), {"Authorization": f"Bearer {key_one}"}),
        **extra,
        "flask-limiter": (limited.test_client(), headers),
    }


def time_requests(client, headers, bodies) -> tuple[float, float, float, float]:
    """Median and mean seconds per request over ``bodies``, and CPU seconds per
    request: of this (the request) thread, and of the whole process (the
    guard's worker thread runs in it too)."""
    samples = []
    perf = time.perf_counter
    thread0, process0 = time.thread_time(), time.process_time()
    for body in bodies:
        t0 = perf()
        response = client.post("/predict", json=body, headers=headers)
        samples.append(perf() - t0)
        assert response.status_code == 200, response.get_data(as_text=True)
    n = len(bodies)
    return (statistics.median(samples), statistics.fmean(samples), (time.thread_time() - thread0) / n,
            (time.process_time() - process0) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    _, X_test, _, _ = split()
    bodies = [{"features": X_test[i % len(X_test)].tolist()} for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        apps = build(tmp)
        for client, headers in apps.values():  # warm-up: caches, lazy worker start
            time_requests(client, headers, bodies[:200])
        rounds: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in apps}
        for _ in range(args.rounds):
            for name, (client, headers) in apps.items():
                rounds[name].append(time_requests(client, headers, bodies))
        for name in [n for n in apps if n.startswith("guarded")]:
            app = apps[name][0].application
            guard.flush(app)
            stats = guard.stats(app)
            assert stats["dropped"] == 0, stats
    m = {name: statistics.median(r[0] for r in v) for name, v in rounds.items()}
    mean = {name: statistics.median(r[1] for r in v) for name, v in rounds.items()}
    cpu = {name: statistics.median(r[2] for r in v) for name, v in rounds.items()}
    cpu_all = {name: statistics.median(r[3] for r in v) for name, v in rounds.items()}
    bare, limiter = m["bare"], m["flask-limiter"]
    print(f"requests per round: {args.requests}, rounds: {args.rounds} (medians over the rounds of each round's "
          "median and mean; CPU per request: the request thread, and the whole process with the worker)")
    print(f"  {'app':<20} {'median µs':>9} {'× bare':>7} {'mean µs':>8} {'× bare':>7} {'CPU µs (thread':>15} "
          f"{'+ others':>9} {'= all)':>7} {'× bare':>7}")
    for name, value in m.items():
        others = cpu_all[name] - cpu[name]
        print(f"  {name:<20} {value * 1e6:9.1f} {value / bare:7.3f} {mean[name] * 1e6:8.1f} "
              f"{mean[name] / mean['bare']:7.3f} {cpu[name] * 1e6:15.1f} {others * 1e6:9.1f} "
              f"{cpu_all[name] * 1e6:7.1f} {cpu_all[name] / cpu_all['bare']:7.3f}")
    print("guarded: the example's defaults (three limits like the default tiers, 0.25% watermark answers, the"
          " probability mark at 0.2); guarded-1: one limit, like Flask-Limiter here; guardedno-output: no"
          " watermark, no mark, no transforms; guardedno-mark: the defaults without the probability mark;"
          " guarded+transforms: round(2) and gaussian(0.02) on every answer")
    for name in [n for n in m if n.startswith("guarded")]:
        guarded = m[name]
        print(
            f"{name:<10} / bare: {guarded / bare:.3f} (target ≤ 1.15);"
            f" (guarded − bare) / (limiter − bare): {(guarded - bare) / (limiter - bare):.3f} (target < 0.5)"
        )
    print(f"Flask-Limiter / bare: {limiter / bare:.3f}")


if __name__ == "__main__":
    main()
