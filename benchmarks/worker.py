"""What the worker costs per event, and how many events a process can take.

Feeds events, as the example app's request path makes them, straight to the
worker's two stages (prepare: fingerprint, prediction read, detection; write:
the SQLite batch insert) and times each, with detection off and on (PRADA on
the inputs, ADD on the example model's hidden layer, evaluations every 10
queries). Also reports the memory of one account's state.

    python benchmarks/worker.py [--events 5000] [--accounts 50] [--calibrate]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from example_app import create_app, guard  # noqa: E402
from example_app.model import split  # noqa: E402
from flask_modelguard.events import QueryEvent, fingerprint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--calibrate", action="store_true",
                        help="calibrate the detectors first, as `make run` does (the forest and the ensemble score)")
    args = parser.parse_args()
    X_train, X_test, _, _ = split()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for detection in (False, True):
            app = create_app({"MODEL_CACHE_DIR": tmp, "SECRET_KEY": "w", "MODELGUARD_DETECTION": detection,
                              "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/w{detection}.db"})
            model = app.extensions["digits_model"]
            state = guard.state(app)
            if detection:
                with app.app_context():
                    guard.fit_reference(X_train.tolist(), model.predict_proba(X_train).argmax(axis=1))
                    if args.calibrate:
                        guard.calibrate(app)
            events = []
            for i in range(args.events):
                x = X_test[rng.integers(0, len(X_test))]
                p = model.predict_proba(x[None])[0]
                inputs = [int(v) for v in x]  # the request path hands the worker each input's fingerprint
                events.append(QueryEvent(1 + i % args.accounts, 1, "predict", 1.8e9 + i, 200, 1.0, 1,
                                         {"features": inputs}, {"label": int(p.argmax()), "probabilities": p.tolist()},
                                         fingerprints=[fingerprint(inputs, state.fingerprint_key)]))
            t0 = time.perf_counter()
            rows = [state.pipeline.prepare(e) for e in events]
            t1 = time.perf_counter()
            for start in range(0, len(rows), 500):
                state._write(rows[start : start + 500])  # the worker's write: rows, catches, early merges
            t2 = time.perf_counter()
            prepare, write = (t1 - t0) / len(events), (t2 - t1) / len(events)
            print(f"detection {'on ' if detection else 'off'}: prepare {prepare * 1e6:6.1f} µs/event, "
                  f"write {write * 1e6:5.1f} µs/event -> {1 / (prepare + write):7.0f} events/s per process")
            if detection:
                monitor = state.monitor
                one = next(reversed(monitor.accounts.values()))  # the most recent (account 1 may be evicted)
                print(f"  {monitor.stats()['accounts']} accounts, {args.events // args.accounts} events each: "
                      f"about {one.memory_bytes() / 1024:.1f} KiB per account in memory before the merge "
                      f"(state {one.base.memory_bytes() / 1024:.1f}, unmerged delta "
                      f"{one.delta.memory_bytes() / 1024 if one.delta else 0:.1f}, PRADA {one.prada.memory_bytes() / 1024:.1f})")
                t3 = time.perf_counter()
                merged = state.persist_states()
                t4 = time.perf_counter()
                print(f"  merging the deltas into storage: {(t4 - t3) / merged * 1e3:.2f} ms per account "
                      f"({merged} accounts)")
            guard.close(app)


if __name__ == "__main__":
    main()
