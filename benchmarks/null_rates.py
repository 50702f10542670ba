"""How many bits is one reproduced mark worth? Issue 17, point 3.

A watermark label drawn by the key uniformly among the other classes is worth
``log2(classes - 1)`` bits a match (3.17 on digits) with no assumption about
the suspect: a model that does not know the key agrees with the draw at most
that often. A mark on a class the model itself ranks among the least likely
is worth more *if* independent models almost never give that class: an
empirical claim, measured here on models trained independently of the key.

For the example's digits victim and ``--models`` independently trained models
(MLPs of 16–256 units, logistic regressions, random forests, k-nearest
neighbours; other seeds; random halves or more of the training digits), on
two kinds of inputs (held-out digits with pixel noise, as a Knockoff thief or
a copycat sends, and uniform noise), it prints, for each of the victim's ranks
2–10, how often an independent model answers the class of that rank, pooled
over models and inputs, with its Clopper–Pearson upper bound at confidence
1 − 2⁻²⁰; and the bits per match each mark design can claim through that
bound: uniform among the others (the key's bound, no measurement needed), the
least likely class, and a keyed choice among the 3 least likely. The per-input
bound (the same models, each input alone) is printed too: with 100 models it
cannot say more than a few bits.

Then a thief's clone: ``--queries`` noisy digits, 10 % of them marked, half
with a uniform wrong label and half with the least likely class; the clone
(the evaluation's determined MLP) is asked about the marked inputs, and the
share of each kind it reproduces is printed: what a match rate is worth
depends on both.

    PYTHONPATH=. python benchmarks/null_rates.py [--models 100] [--inputs 1000] [--queries 3000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time
import warnings

import numpy as np
from scipy.stats import beta

CONFIDENCE_LOG2 = -20.0


def upper_bound(hits: int, trials: int) -> float:
    """Clopper–Pearson upper bound of a rate at confidence 1 − 2^CONFIDENCE_LOG2."""
    if hits >= trials:
        return 1.0
    return float(beta.ppf(1.0 - 2.0**CONFIDENCE_LOG2, hits + 1, trials - hits))


def independent_models(X: np.ndarray, y: np.ndarray, n: int, seed: int) -> list[tuple[str, object]]:
    """``n`` models of several kinds, seeds and training subsets, none of which sees the key."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(seed)
    kinds = [("mlp16", lambda s: MLPClassifier((16,), max_iter=300, random_state=s)),
             ("mlp64", lambda s: MLPClassifier((64,), max_iter=300, random_state=s)),
             ("mlp256", lambda s: MLPClassifier((256,), max_iter=300, random_state=s)),
             ("logreg", lambda s: LogisticRegression(max_iter=500, random_state=s)),
             ("forest", lambda s: RandomForestClassifier(50, random_state=s)),
             ("knn", lambda s: KNeighborsClassifier(int(rng.integers(1, 8))))]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(n):
            name, make = kinds[i % len(kinds)]
            rows = rng.random(len(y)) < rng.uniform(0.5, 1.0)
            out.append((name, make(seed + i).fit(X[rows] / 16, y[rows])))
    return out


def rank_rates(victim_p: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ranks 1..k) pooled hits of an independent model on the victim's class of
    each rank, and per-input hits; ``predictions`` is (models, inputs)."""
    order = np.argsort(-victim_p, axis=1)  # order[i, r]: the victim's class of rank r+1
    ranks = np.argmax(order[None, :, :] == predictions[:, :, None], axis=2)  # (models, inputs)
    k = victim_p.shape[1]
    pooled = np.array([(ranks == r).sum() for r in range(k)])
    per_input = np.stack([(ranks == r).sum(axis=0) for r in range(k)])  # (k, inputs)
    return pooled, per_input


def report(name: str, victim_p: np.ndarray, models: list[tuple[str, object]], X: np.ndarray) -> None:
    predictions = np.stack([m.predict(X / 16) for _, m in models])  # type: ignore[attr-defined]
    pooled, per_input = rank_rates(victim_p, predictions)
    trials = predictions.size
    k = victim_p.shape[1]
    print(f"\n== {name}: {len(models)} independent models x {X.shape[0]} inputs = {trials:,} answers ==")
    print(f"{'victim rank':>12} {'answers':>9} {'rate':>10} {'bound':>10} {'bits/match':>10} "
          f"{'per-input bound (worst)':>24}")
    for r in range(k):
        bound = upper_bound(int(pooled[r]), trials)
        worst = max(upper_bound(int(h), len(models)) for h in per_input[r])
        print(f"{r + 1:>12} {int(pooled[r]):>9,} {pooled[r] / trials:>10.2e} {bound:>10.2e} "
              f"{-math.log2(bound):>10.2f} {worst:>24.3f}")
    bottom3 = upper_bound(int(pooled[-3:].sum()), trials) / 3
    print(f"bits a match: uniform among the {k - 1} others {math.log2(k - 1):.2f} (the key's bound, no "
          f"measurement); the least likely class {-math.log2(upper_bound(int(pooled[-1]), trials)):.2f}; "
          f"keyed among the 3 least likely {-math.log2(bottom3):.2f} (measured, bound at 2^{CONFIDENCE_LOG2:.0f})")
    by_kind: dict[str, list[int]] = {}
    for (kind, _), row in zip(models, predictions):
        order = np.argsort(-victim_p, axis=1)
        by_kind.setdefault(kind, []).append(int((row == order[:, -1]).sum()))
    print("least likely class answered, by model kind (sum over its models):",
          ", ".join(f"{kind} {sum(v)}/{len(v) * len(X)}" for kind, v in by_kind.items()))


def clone_reproduction(victim: object, X_test: np.ndarray, queries: int, seed: int) -> None:
    """A thief's clone of 10% marked answers: how many uniform and least-likely marks it reproduces."""
    from flask_modelguard.evaluate.scenario import DEFAULT_SURROGATE
    from flask_modelguard.simulate.surrogate import train_clone

    rng = np.random.default_rng(seed + 7)
    X = np.clip(X_test[rng.integers(0, len(X_test), queries)] + rng.normal(0, 1.5, (queries, 64)), 0, 16).round(2)
    p = victim.predict_proba(X / 16)  # type: ignore[attr-defined]
    y = p.argmax(axis=1)
    marked = rng.random(queries) < 0.1
    least = marked & (rng.random(queries) < 0.5)
    uniform = marked & ~least
    served = y.copy()
    served[uniform] = (y[uniform] + rng.integers(1, 10, uniform.sum())) % 10
    served[least] = p[least].argmin(axis=1)
    options = {k: v for k, v in DEFAULT_SURROGATE.items() if k != "answers"}
    clone = train_clone(X, served, answers="labels", seed=seed, low=0.0, high=16.0, **options)
    got = np.asarray(clone.predict(X))
    print(f"\n== a clone of {queries} noisy digits, {marked.sum()} marked ==")
    for name, rows in (("uniform wrong label", uniform), ("least likely class", least)):
        print(f"{name}: reproduced {int((got[rows] == served[rows]).sum())}/{int(rows.sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--inputs", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from example_app.model import split, train

    started = time.perf_counter()
    X_train, X_test, y_train, _ = split()
    victim = train()
    models = independent_models(X_train, victim.predict(X_train / 16), args.models, args.seed)
    rng = np.random.default_rng(args.seed)
    natural = np.clip(X_test[rng.integers(0, len(X_test), args.inputs)] + rng.normal(0, 1.5, (args.inputs, 64)),
                      0, 16).round(2)
    noise = rng.integers(0, 17, (args.inputs, 64)).astype(float)
    for name, X in (("noisy held-out digits", natural), ("uniform noise", noise)):
        report(name, victim.predict_proba(X / 16), models, X)
    clone_reproduction(victim, X_test, args.queries, args.seed)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
