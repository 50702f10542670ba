"""What each output transform costs benign users and leaves to a thief.

For each scenario the example server runs behind ModelGuard with that output
policy; a thief account sends 5,000 Knockoff-style queries (held-out digits with
pixel noise) and trains scikit-learn clones on the answers: an MLPClassifier on
the served labels, and an MLPRegressor on the served probability vectors when
there are any. A benign account asks the evaluation digits. Reported:

- benign top-1 loss: accuracy of the served labels on the evaluation digits,
  below that of the bare model;
- clone fidelity: agreement of each clone with the victim on the evaluation
  digits (which the thief never sent).

Benign loss is measured on all 1,797 digits (a benign user asks real digits),
so one changed answer moves it by 0.06%.

"flagged" scenarios apply the policy to a flagged thief (the suspicious-account
policy); benign users are then unaffected by construction (tested).

    python benchmarks/theft.py [--queries 5000] [--seed 0] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier, MLPRegressor  # noqa: E402

from example_app import create_app, guard  # noqa: E402
from example_app.model import split  # noqa: E402

#: name → (MODELGUARD_OUTPUT for everyone, suspicious policy, thief flagged?)
SCENARIOS: dict[str, tuple[list[str], list[str], bool]] = {
    "none": ([], [], False),
    "watermark 0.5% (default)": ([], [], False),
    "round(2)": (["round(2)"], [], False),
    "round(1)": (["round(1)"], [], False),
    "top_k(1)": (["top_k(1)"], [], False),
    "top_k(3, drop)": (["top_k(3, mode='drop')"], [], False),
    "label_only": (["label_only"], [], False),
    "high_confidence(0.5)": (["high_confidence(0.5)"], [], False),
    "gaussian(0.1)": (["gaussian(0.1)"], [], False),
    "laplace(0.1)": (["laplace(0.1)"], [], False),
    "reverse_sigmoid(1, 0.1)": (["reverse_sigmoid(beta=1.0, gamma=0.1)"], [], False),
    "flagged: poison(1.0)": ([], ["poison(1.0)"], True),
    "flagged: poison(0.5)": ([], ["poison(0.5)"], True),
    "flagged: misinformation": ([], ["misinformation"], True),
    "flagged: misinformation(0.6)": ([], ["misinformation(0.6)"], True),
}


def query(client, key, X, batch=100):
    labels, probs = [], []
    for start in range(0, len(X), batch):
        r = client.post("/predict", json={"instances": X[start : start + batch].tolist()}, headers={"X-API-Key": key})
        assert r.status_code == 200, r.get_data(as_text=True)
        for p in r.get_json()["predictions"]:
            labels.append(p["label"])
            vector = p.get("probabilities")
            if vector is not None and "classes" in p:  # top-k drop: scatter back
                full = np.zeros(10)
                full[p["classes"]] = vector
                vector = full.tolist()
            probs.append(vector)
    return np.array(labels), (np.array(probs, dtype=float) if all(v is not None for v in probs) else None)


def run(name, output, suspicious, flagged, queries, seed, tmp, data):
    X_pool, X_eval, victim_eval, X_all, y_all, bare_acc = data
    watermark = 0.005 if name == "watermark 0.5% (default)" else 0.0
    app = create_app({
        "MODEL_CACHE_DIR": tmp, "SECRET_KEY": "theft-bench",
        "MODELGUARD_DATABASE_URL": f"sqlite:///{tmp}/{abs(hash(name))}.db",
        "MODELGUARD_OUTPUT": output, "MODELGUARD_SUSPICIOUS_OUTPUT": suspicious or ["misinformation"],
        "MODELGUARD_WATERMARK": watermark,
        "MODELGUARD_DETECTION": False,  # the policies alone; flagged scenarios flag by hand
    })
    with app.app_context():
        for account in ("thief", "benign"):
            guard.create_account(account, limits="1000000/second")
        if flagged:
            guard.update_account("thief", flagged=True)
        keys = {a: guard.issue_key(a) for a in ("thief", "benign")}
    client = app.test_client()
    benign_labels, _ = query(client, keys["benign"], X_all)
    rng = np.random.default_rng(seed)
    X_thief = np.clip(X_pool[rng.integers(0, len(X_pool), queries)] + rng.normal(0, 1.5, (queries, 64)), 0, 16)
    labels, probs = query(client, keys["thief"], X_thief)
    guard.close(app)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clone = MLPClassifier(hidden_layer_sizes=(128,), max_iter=300, random_state=seed).fit(X_thief / 16, labels)
        fidelity = float((clone.predict(X_eval / 16) == victim_eval).mean())
        soft = None
        if probs is not None:
            reg = MLPRegressor(hidden_layer_sizes=(128,), max_iter=300, random_state=seed).fit(X_thief / 16, probs)
            soft = float((reg.predict(X_eval / 16).argmax(axis=1) == victim_eval).mean())
    return {
        "scenario": name,
        "benign_top1_loss": round(bare_acc - float((benign_labels == y_all).mean()), 5),
        "clone_fidelity_labels": round(fidelity, 3),
        "clone_fidelity_probabilities": None if soft is None else round(soft, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    _, X_test, _, _ = split()
    X_all, y_all = load_digits(return_X_y=True)
    half = len(X_test) // 2  # the thief draws from one half; fidelity is measured on the other
    X_pool, X_eval = X_test[:half], X_test[half:]
    with tempfile.TemporaryDirectory() as tmp:
        victim = create_app({"MODEL_CACHE_DIR": tmp, "SECRET_KEY": "x"}, guarded=False).extensions["digits_model"]
        victim_eval = victim.predict_proba(X_eval).argmax(axis=1)
        bare_acc = float((victim.predict_proba(X_all).argmax(axis=1) == y_all).mean())
        data = (X_pool, X_eval, victim_eval, X_all, y_all, bare_acc)
        rows = []
        print(f"victim accuracy on all {len(X_all)} digits: {bare_acc:.4f}; thief queries: {args.queries};"
              f" fidelity on {len(X_eval)} held-out digits")
        print("| scenario | benign top-1 loss | clone fidelity (labels) | clone fidelity (probabilities) |")
        print("| --- | ---: | ---: | ---: |")
        for name, (output, suspicious, flagged) in SCENARIOS.items():
            if args.only and name not in args.only:
                continue
            t0 = time.perf_counter()
            row = run(name, output, suspicious, flagged, args.queries, args.seed, tmp, data)
            rows.append(row)
            soft = "—" if row["clone_fidelity_probabilities"] is None else f"{row['clone_fidelity_probabilities']:.3f}"
            loss = "n/a (flagged thief only)" if flagged else f"{row['benign_top1_loss'] * 100:.2f}%"
            print(f"| {name} | {loss} | {row['clone_fidelity_labels']:.3f} | {soft} |  ({time.perf_counter() - t0:.0f}s)",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
