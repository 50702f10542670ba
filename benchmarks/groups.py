"""What one search for colluding accounts costs, by number of candidates.

Synthetic accounts in the digits example's shape (10 classes, the 16-d class
features: 320-entry deviation vectors): honest accounts of 15 to 200 inputs
drawn from the reference's own Gaussians, and one sybil of 20 parts of 15
inputs shifted 2.5σ on one feature. For each number of candidates
(``--candidates``) it reports the CPU time of a state's JSON round trip
(what the worker pays to read the candidates from the database, per
account), of :meth:`GroupSearch.find`, and what it found.

    python benchmarks/groups.py [--candidates 500,2000,5000]

Read the ratios between rows: absolute figures vary on shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flask_modelguard.detectors.add import Reference  # noqa: E402
from flask_modelguard.detectors.groups import GroupSearch  # noqa: E402
from flask_modelguard.state import AccountState, Observation  # noqa: E402

DIM, CLASSES = 16, 10
CENTRES = np.random.default_rng(99).normal(0.0, 3.0, (CLASSES, DIM))


def _draw(rng: np.random.Generator, n: int, shift: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    labels = rng.integers(0, CLASSES, n)
    X = CENTRES[labels] + rng.normal(0.0, 1.0, (n, DIM))
    return (X if shift is None else X + shift), labels.tolist()


def _state(rng: np.random.Generator, n: int, shift: np.ndarray | None = None) -> AccountState:
    X, labels = _draw(rng, n, shift)
    state = AccountState(DIM)
    for i in range(0, n, 5):
        part = slice(i, i + 5)
        state.update(Observation(float(i), [f"{rng.integers(2**62):016x}" for _ in labels[part]], X[part],
                                 labels[part], [0.9] * len(labels[part])))
    return state.flush()


def measure(candidates: int, reference: Reference, rng: np.random.Generator) -> dict[str, object]:
    shift = np.zeros(DIM)
    shift[0] = 2.5
    states = {f"benign-{i}": _state(rng, int(rng.integers(15, 200))) for i in range(candidates - 20)}
    states.update({f"sybil#{k}": _state(rng, 15, shift) for k in range(20)})
    stored = {a: json.dumps(s.to_dict()) for a, s in states.items()}
    started = time.process_time()
    loaded = {a: AccountState.from_dict(json.loads(text)) for a, text in stored.items()}
    read = time.process_time() - started
    started = time.process_time()
    groups = GroupSearch().find(loaded, reference)
    search = time.process_time() - started
    members = [str(m) for g in groups for m in g.members]
    return {"candidates": candidates, "read_ms_per_account": 1e3 * read / candidates, "search_s": search,
            "groups": len(groups), "sybil_parts_grouped": sum(m.startswith("sybil#") for m in members),
            "benign_grouped": sum(not m.startswith("sybil#") for m in members)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--candidates", default="500,2000,5000")
    args = parser.parse_args()
    X, labels = _draw(np.random.default_rng(0), 6000)
    reference = Reference.fit(X, labels, seed=0)
    print(f"{'candidates':>10}  {'read ms/account':>15}  {'search s':>8}  groups  sybil parts  benign")
    for n in (int(v) for v in args.candidates.split(",")):
        row = measure(n, reference, np.random.default_rng(n))
        print(f"{row['candidates']:>10}  {row['read_ms_per_account']:>15.2f}  {row['search_s']:>8.2f}  "
              f"{row['groups']:>6}  {row['sybil_parts_grouped']:>11}  {row['benign_grouped']:>6}")


if __name__ == "__main__":
    main()
