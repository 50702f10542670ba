"""What the probability mark proves, and what it costs honest users. Issue 17, point 2.

For the example's digits victim with the mark (``MODELGUARD_PROBABILITY_MARK``)
at each ``--strength``:

- **Clones.** A thief of ``--answers`` queries (natural digits: held-out digits
  with pixel noise, a copycat's; or uniform noise) is answered with the mark
  of its account; its clone (an MLP regressing the vectors, or a logistic
  regression on them as soft labels) is asked about the probes (every digit
  and two noisy copies), and ``probmark.test`` gives the bound on the p-value
  for its account, and the best of ``--others`` other accounts. ``--keys``
  accounts (secrets) per case: the bound depends on the key's draw.
- **Nulls.** ``--models`` models trained independently of the key
  (benchmarks/null_rates.py's mix of kinds, seeds and training subsets), each
  tested against ``--keys`` accounts: the claims (there must be none) and
  the share of tests under 2^-t, against 2^-t (an exact null).
- **Honest users.** On held-out digits with their true labels: accuracy (the
  mark keeps every label), log loss, Brier score, expected calibration error
  (15 bins) and the mean top probability, for each strength.

    PYTHONPATH=. python benchmarks/probability_mark.py [--strength 0.1 0.15] [--answers 1000 5000] [--keys 3]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from flask_modelguard import probmark


def probes_of(digits: np.ndarray, copies: int = 2, seed: int = 9) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, 1.0, (copies, *digits.shape))
    return np.vstack([digits, *np.clip(np.rint(digits + noise), 0, 16)])


def thief_inputs(kind: str, X_test: np.ndarray, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "natural":
        return np.clip(np.rint(X_test[rng.integers(0, len(X_test), n)] + rng.normal(0.0, 1.0, (n, 64))), 0, 16)
    return rng.uniform(0.0, 16.0, (n, 64))


def clone_case(victim: object, X_test: np.ndarray, probes: np.ndarray, kind: str, answers: int, clone_kind: str,
               strength: float, seed: int, others: int) -> tuple[float, float, float]:
    """(log2 p for the thief's account, best of ``others`` other accounts, clone fidelity)."""
    from flask_modelguard.simulate.surrogate import train_clone

    secret = f"benchmark-secret-{seed}".encode().ljust(32, b".")
    key = probmark.account_key(secret, 1)
    X = thief_inputs(kind, X_test, answers, seed)
    served = probmark.lift(victim.predict_proba(X / 16.0), key, strength)  # type: ignore[attr-defined]
    clone = train_clone(X, served.argmax(axis=1), served, kind=clone_kind, answers="probabilities", hidden=128,
                        max_iter=500, low=0, high=16, seed=seed)
    owner = victim.predict_proba(probes / 16.0)  # type: ignore[attr-defined]
    suspect = np.zeros_like(owner)
    suspect[:, clone.classes_] = clone.predict_proba(probes)
    mine = probmark.test(key, owner, suspect).log2_p
    best_other = min(probmark.test(probmark.account_key(secret, a), owner, suspect).log2_p
                     for a in range(2, 2 + others))
    fidelity = float((clone.predict(X_test) == victim.predict_proba(X_test / 16.0).argmax(axis=1)).mean())  # type: ignore[attr-defined]
    return mine, best_other, fidelity


def calibration(p: np.ndarray, y: np.ndarray) -> dict[str, float]:
    top = p.max(axis=1)
    right = p.argmax(axis=1) == y
    bins = np.minimum((top * 15).astype(int), 14)
    ece = sum(abs(right[bins == b].mean() - top[bins == b].mean()) * (bins == b).mean()
              for b in range(15) if (bins == b).any())
    onehot = np.eye(p.shape[1])[y]
    return {"accuracy": float(right.mean()), "log loss": float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean()),
            "Brier": float(((p - onehot) ** 2).sum(axis=1).mean()), "ECE": float(ece), "top p": float(top.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strength", type=float, nargs="+", default=[0.1, 0.15])
    parser.add_argument("--answers", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--keys", type=int, default=3)
    parser.add_argument("--others", type=int, default=20)
    parser.add_argument("--models", type=int, default=100)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from null_rates import independent_models
    from sklearn.datasets import load_digits

    from example_app.model import split, train

    started = time.monotonic()
    X_train, X_test, y_train, y_test = split()
    victim = train()
    probes = probes_of(load_digits().data)
    print(f"probes: {len(probes)} (every digit and two noisy copies); {args.keys} accounts (secrets) a case\n")
    print(f"{'strength':>8} {'thief':>8} {'answers':>7} {'clone':>6} {'fidelity':>8}  log2 p (each account)"
          f"{'':14} best of {args.others} other accounts")
    for strength in args.strength:
        for kind, answers, clone_kind in [("natural", a, c) for a in args.answers for c in ("mlp", "logreg")] + \
                [("noise", a, "mlp") for a in args.answers]:
            rows = [clone_case(victim, X_test, probes, kind, answers, clone_kind, strength, seed, args.others)
                    for seed in range(args.keys)]
            mine = " ".join(f"{r[0]:7.1f}" for r in rows)
            print(f"{strength:>8} {kind:>8} {answers:>7} {clone_kind:>6} {np.mean([r[2] for r in rows]):>8.3f}  "
                  f"{mine:<34} {min(r[1] for r in rows):.1f}")
    models = independent_models(X_train, y_train, args.models, seed=1)
    owner = victim.predict_proba(probes / 16.0)
    bounds = np.array([probmark.test(probmark.account_key(b"null-secret".ljust(32, b"."), f"{i}-{a}"), owner,
                                     m.predict_proba(probes / 16.0)).log2_p  # type: ignore[attr-defined]
                       for i, (_, m) in enumerate(models) for a in range(args.keys)])
    shares = ", ".join(f"2^-{t}: {(bounds <= -t).mean():.3f}" for t in (1, 2, 4, 8))
    print(f"\n{len(models)} independent models x {args.keys} accounts = {len(bounds)} tests: "
          f"{int((bounds < -64).sum())} claimed; lowest 2^{bounds.min():.1f}; share under {shares}")
    print(f"\nhonest users, {len(X_test)} held-out digits with their true labels:")
    for strength in [0.0, *args.strength]:
        p = probmark.lift(victim.predict_proba(X_test / 16.0), probmark.account_key(b"honest".ljust(32, b"."), 1),
                          strength)
        print(f"  strength {strength:<5} " + ", ".join(f"{k} {v:.4f}" for k, v in calibration(p, y_test).items()))
    one = victim.predict_proba(X_test[:1] / 16.0)
    key = probmark.account_key(b"x" * 32, 1)
    t0 = time.perf_counter()
    for _ in range(2000):
        probmark.lift(one, key, 0.15)
    print(f"\nlift: {(time.perf_counter() - t0) / 2000 * 1e6:.1f} µs an answer (one at a time); "
          f"{time.monotonic() - started:.0f} s in all")


if __name__ == "__main__":
    main()
