"""The protector's short path for a single answer that only the probability mark
changes gives exactly what the general path gives, and is taken only then."""

from __future__ import annotations

import numpy as np
import pytest

from flask_modelguard.protection import OutputProtector, RouteOptions
from flask_modelguard.transforms.marking import ProbabilityMark

KEY = b"fast-path-secret-0123456789abcdef"


def _protectors(**options):
    fast, general = (OutputProtector(KEY, **options) for _ in range(2))
    general.fast_path = False
    return fast, general


def _payloads(rng: np.random.Generator, n: int) -> list[dict]:
    out = []
    for i in range(n):
        k = int(rng.choice([10, 10, 10, 12, 40, 5]))  # 5 classes: below the mark's minimum
        p = rng.dirichlet(np.ones(k) * rng.uniform(0.05, 2.0))
        kind = i % 7
        if kind == 0:
            probs = [int(v) for v in np.eye(k)[int(p.argmax())]]  # integers: written back as floats
        elif kind == 1:
            probs = (p * 1.1).tolist()  # not a distribution: left alone
        elif kind == 2:
            top = int(p.argmax())
            probs = np.full(k, 0.0)
            probs[top], probs[(top + 1) % k] = 0.5, 0.5 - 1e-17  # a tie: the top class must stay
            probs = probs.tolist()
        else:
            probs = p.tolist()
        label_key = ["label", "class", "prediction", None][i % 4]
        payload = {"probabilities": probs, "model": "v3"}
        if label_key is not None:
            payload = {label_key: int(np.argmax(probs)), **payload}
        out.append(payload)
    return out


@pytest.mark.parametrize("flagged", [False, True])
def test_the_short_path_answers_as_the_general_path(flagged):
    rng = np.random.default_rng(4)
    fast, general = _protectors(watermark=0.05, probability_mark=0.2)
    options = RouteOptions()
    for i, payload in enumerate(_payloads(rng, 1500)):
        body = {"features": rng.integers(0, 17, 64).tolist()}
        account = int(rng.integers(1, 40))
        results = [p.protect(payload, body, account, flagged, 0.0, p.policy(options, "free"), options, "predict")
                   for p in (fast, general)]
        assert results[0] == results[1], (i, payload)
        assert type(results[0][0]) is type(results[1][0])
    assert fast.errors == general.errors == 0


def test_the_short_path_is_taken_for_the_common_shape_only(monkeypatch):
    taken = []
    from flask_modelguard import protection

    real = protection._marked_answer
    monkeypatch.setattr(protection, "_marked_answer", lambda *a: taken.append(a[0]) or real(*a))
    fast = OutputProtector(KEY, watermark=0.0, probability_mark=0.2)
    options = RouteOptions()
    probs = np.random.default_rng(0).dirichlet(np.ones(10)).tolist()
    one = {"label": int(np.argmax(probs)), "probabilities": probs}
    out, marks, canary, fingerprints = fast.protect(one, {"features": [1, 2]}, 3, False, 0.0,
                                                    fast.policy(options, "free"), options)
    assert taken == [one] and out != one and out["label"] == one["label"] and marks == [] and len(fingerprints) == 1
    batch = {"predictions": [one, one]}
    fast.protect(batch, {"instances": [[1, 2], [3, 4]]}, 3, False, 0.0, fast.policy(options, "free"), options)
    assert len(taken) == 1  # two inputs: the general path
    rounded = RouteOptions(output=["round(2)"])
    fast.protect(one, {"features": [1, 2]}, 3, False, 0.0, fast.policy(rounded, "free"), rounded)
    assert len(taken) == 1  # another transform runs too: the general path
    assert isinstance(fast.policy(options, "free").pipeline(False)[0], ProbabilityMark)
