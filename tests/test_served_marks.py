"""The probability mark over real HTTP (issue #17, point 2): the example served
as ``make run`` serves it (``python -m example_app``, a fresh instance folder,
its defaults, which mark every answer), with one setting in the environment,
``EXAMPLE_CALIBRATE=0``: the detectors' calibration is skipped, because
nothing here is about detection and the mark is the same for every account.

A copycat sends 1,000 natural digits (held-out digits with pixel noise) and
distils an MLP on the probability vectors it was served; an honest user
sends 300. The clone is asked about every digit of the data set, and the
example's model too (unmarked, the owner's own answers), and two noisy
copies of each (more probes, a tighter test), and the guard tests
every account: the copycat's is claimed (p < 2^-64 after multiplying by the
number of accounts) and no other; an independently trained model is claimed
for none, nor is a clone of the labels alone. Every served label is the
model's, except the watermark answers the guard recorded.
"""

from __future__ import annotations

import json
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flask_modelguard.simulate.surrogate import train_clone

from .served import ServedExample

LIMITS = "100000/second"
BATCH = 100


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = ServedExample(tmp_path_factory.mktemp("marks") / "instance", env={"EXAMPLE_CALIBRATE": "0"})
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _ask(url: str, key: str, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The served labels and probability vectors, ``BATCH`` inputs a request."""
    labels, probs = [], []
    for start in range(0, len(inputs), BATCH):
        body = json.dumps({"instances": inputs[start:start + BATCH].tolist()}).encode()
        req = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": "application/json", "X-API-Key": key})
        with urllib.request.urlopen(req, timeout=60) as response:
            for p in json.loads(response.read())["predictions"]:
                labels.append(p["label"])
                probs.append(p["probabilities"])
    return np.asarray(labels), np.asarray(probs)


def _natural(n: int, seed: int) -> np.ndarray:
    from example_app.model import split

    X_test = split()[1]
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(X_test[rng.integers(0, len(X_test), n)] + rng.normal(0.0, 1.0, (n, 64))), 0, 16)


def clone_fidelity(clone: Any, model: Any) -> float:
    from example_app.model import split

    X_test = split()[1]
    return float((clone.predict(X_test) == model.predict_proba(X_test).argmax(axis=1)).mean())


def test_a_copycats_probability_clone_is_proven_and_attributed_over_http(
        served: ServedExample, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    from example_app import guard
    from example_app.model import split

    keys = {name: served.create_account(name, limits=LIMITS) for name in ("copycat", "honest", "other-1", "other-2")}
    model = served.reader.extensions["digits_model"]
    X_thief = _natural(1000, seed=1)
    labels, served_probs = _ask(served.url, keys["copycat"], X_thief)
    honest_labels, _ = _ask(served.url, keys["honest"], _natural(300, seed=2))
    for name in ("other-1", "other-2"):
        _ask(served.url, keys[name], _natural(50, seed=hash(name) % 1000))

    # Every label is the model's but the recorded watermark answers: the mark costs no top-1 answer.
    own = model.predict_proba(X_thief).argmax(axis=1)
    changed, marked, deadline = int((labels != own).sum()), 0, time.monotonic() + 30.0
    while time.monotonic() < deadline:  # the server's worker writes the watermark records every 0.5 s
        with served.reader.app_context():
            marked = len(guard.watermark_records("copycat", None))
        if changed <= marked:
            break
        time.sleep(0.25)
    assert changed <= marked
    assert np.abs(served_probs - model.predict_proba(X_thief)).sum(axis=1).mean() > 0.1  # the mark is there

    warnings.simplefilter("ignore")
    clone = train_clone(X_thief, labels, served_probs, answers="probabilities", hidden=128, max_iter=500,
                        low=0, high=16)
    digits = load_digits().data  # the probes: every digit, and two noisy copies of each (any inputs will do)
    noise = np.random.default_rng(9).normal(0.0, 1.0, (2, *digits.shape))
    probes = np.vstack([digits, *np.clip(np.rint(digits + noise), 0, 16)])
    owner = model.predict_proba(probes)
    suspect = np.zeros_like(owner)
    suspect[:, clone.classes_] = clone.predict_proba(probes)
    with served.reader.app_context():
        ranked = guard.verify_probability_mark(owner, suspect)
    assert ranked[0].account == "copycat" and ranked[0].claimed, [r.summary() for r in ranked]
    assert not any(r.claimed for r in ranked[1:]), [r.summary() for r in ranked]

    X_train, _, y_train, _ = split()
    independent = MLPClassifier((48,), max_iter=400, random_state=3).fit(X_train / 16.0, y_train)
    label_clone = train_clone(X_thief, labels, hidden=128, max_iter=500, low=0, high=16)
    label_suspect = np.zeros_like(owner)
    label_suspect[:, label_clone.classes_] = label_clone.predict_proba(probes)
    with served.reader.app_context():
        controls = [guard.verify_probability_mark(owner, other)[0]
                    for other in (independent.predict_proba(probes / 16.0), label_suspect)]
    assert not any(r.claimed for r in controls), [r.summary() for r in controls]
    with capsys.disabled():
        print(f"\n== probability mark over HTTP: copycat clone (fidelity {clone_fidelity(clone, model):.3f}, "
              f"{len(X_thief)} answers) 2^{ranked[0].log2_p:.1f} claimed; next account 2^{ranked[1].log2_p:.1f}; "
              f"independent model 2^{controls[0].log2_p:.1f}, label clone 2^{controls[1].log2_p:.1f}; "
              f"served vectors moved {np.abs(served_probs - model.predict_proba(X_thief)).sum(axis=1).mean():.3f} (L1)")

    # The operator's command, from files, as a third party would send them.
    (tmp_path / "owner.json").write_text(json.dumps(owner.tolist()))
    (tmp_path / "suspect.json").write_text(json.dumps(suspect.tolist()))
    out = served.flask("modelguard", "verify-mark", str(tmp_path / "owner.json"), str(tmp_path / "suspect.json"))
    first = out.splitlines()[0]
    assert first.startswith("account 'copycat'") and "CLAIMED" in first, out
    assert len(honest_labels) == 300
