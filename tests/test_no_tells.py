"""No tells (issue #12): what a flagged account receives has the form of
what anyone receives on the same route, for every transform and answer
shape: same keys, same nesting and list lengths, same number types, the
route's rounding, no error where the other gets none; and the poisoned
vectors hold the model's own values (same entropy, same top confidence)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_modelguard.protection import OutputProtector, RouteOptions
from flask_modelguard.transforms import parse_all

ROUTE_TRANSFORMS = [[], ["round(2)"], ["round(3)", "top_k(3)"], ["top_k(2, mode='drop')"], ["label_only"],
                    ["reverse_sigmoid(0.3)", "round(4)"], ["gaussian(0.02)", "round(2)"], ["high_confidence"]]
SUSPICIOUS = [["misinformation"], ["poison"], ["misinformation(adaptive=True)"], ["poison(0.5)"],
              ["misinformation(plausibility=1.0)"]]
#: Answer shapes a route may return (the auto adapter's), from an (n, k) matrix.
NAMES = ["cat", "dog", "eel", "fox", "gnu", "hen", "ibis", "jay", "kea", "lynx"]
SHAPES = {
    "single": lambda P: {"label": int(P[0].argmax()), "probabilities": P[0].tolist()},
    "predictions": lambda P: {"predictions": [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in P]},
    "results-class-scores": lambda P: {"results": [{"class": NAMES[int(p.argmax())],
                                                    "scores": dict(zip(NAMES, p.tolist()))} for p in P]},
    "bare-vector": lambda P: P[0].tolist(),
    "list-of-vectors": lambda P: [p.tolist() for p in P],
}


def _form(value: Any) -> Any:
    """The shape of a JSON answer: keys, lengths and types, not values."""
    if isinstance(value, dict):
        if value and all(isinstance(v, float) for v in value.values()):
            return {"<class>": len(value)}  # scores by class name: which classes is data, not form
        return {k: _form(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_form(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return type(value).__name__
    return "int" if isinstance(value, int) else "float"


def _floats(value: Any) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in _floats(v)]
    if isinstance(value, list):
        return [x for v in value for x in _floats(v)]
    return [value] if isinstance(value, float) else []


def _vectors(value: Any) -> list[list[float]]:
    """The probability vectors of an answer (dict of scores counts as one)."""
    if isinstance(value, list) and value and all(isinstance(x, float) for x in value):
        return [value]
    if isinstance(value, dict):
        if value and all(isinstance(x, float) for x in value.values()):
            return [list(value.values())]
        return [v for k, x in sorted(value.items()) if k not in ("label", "class") for v in _vectors(x)]
    if isinstance(value, list):
        return [v for x in value for v in _vectors(x)]
    return []


@st.composite
def matrices(draw: Any) -> np.ndarray:
    n, k = draw(st.integers(1, 4)), draw(st.integers(3, 10))
    raw = np.asarray(draw(st.lists(st.floats(0.01, 10.0), min_size=n * k, max_size=n * k))).reshape(n, k)
    raw = raw ** draw(st.sampled_from([1.0, 3.0]))  # flat and peaked answers
    return raw / raw.sum(axis=1, keepdims=True)


@settings(max_examples=400, deadline=None)
@given(P=matrices(), route=st.sampled_from(ROUTE_TRANSFORMS), suspicious=st.sampled_from(SUSPICIOUS),
       shape=st.sampled_from(sorted(SHAPES)), seed=st.integers(0, 10**6), score=st.floats(0.5, 1.0))
def test_a_flagged_answer_has_the_form_of_any_answer(P, route, suspicious, shape, seed, score):
    protector = OutputProtector(b"k" * 32, output=route, suspicious_output=suspicious, watermark=0.0)
    options = RouteOptions()
    policy = protector.policy(options, "free")
    body = {"instances": [[seed, i] for i in range(len(P))]}
    payload = SHAPES[shape](P)
    clean, _, _, _ = protector.protect(payload, body, 1, False, 0.0, policy, options, "r")
    flagged, _, _, _ = protector.protect(payload, body, 2, True, score, policy, options, "r")
    assert _form(flagged) == _form(clean), (shape, route, suspicious)
    rounding = [t.decimals for t in parse_all(route) if t.name == "round"]
    if rounding:  # the route's precision, for both
        for x in _floats(clean) + _floats(flagged):
            assert x == round(x, rounding[-1])
    noisy = any(t.name in ("gaussian", "laplace") for t in parse_all(route))
    if not noisy and "label_only" not in route:
        # Re-dealt, not drawn: each vector holds the same values as the honest one.
        for a, b in zip(_vectors(clean), _vectors(flagged)):
            assert sorted(a) == sorted(b)
    assert protector.unrecognised == 0


def _entropy(v: list[float]) -> float:
    return -sum(x * math.log(x) for x in v if x > 0)


def test_poisoned_answers_match_honest_ones_in_entropy_and_top_confidence():
    """Over 2,000 answers of a peaked model: the entropy and top-1 confidence
    of answers to a flagged account (misinformation, poisoning) are those of
    answers to anyone, to the last digit (values are re-dealt); only which
    class gets the top value differs."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (2000, 10))
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    for suspicious in (["misinformation"], ["poison"]):
        protector = OutputProtector(b"k" * 32, output=["round(4)"], suspicious_output=suspicious, watermark=0.0)
        options = RouteOptions()
        policy = protector.policy(options, "free")
        body = {"instances": [[i] for i in range(len(P))]}
        payload = {"predictions": [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in P]}
        clean = protector.protect(payload, body, 1, False, 0.0, policy, options, "r")[0]["predictions"]
        flagged = protector.protect(payload, body, 2, True, 1.0, policy, options, "r")[0]["predictions"]
        honest = [(_entropy(c["probabilities"]), max(c["probabilities"])) for c in clean]
        served = [(_entropy(f["probabilities"]), max(f["probabilities"])) for f in flagged]
        assert np.allclose(honest, served, atol=1e-12)
        changed = np.mean([c["label"] != f["label"] for c, f in zip(clean, flagged)])
        assert changed > 0.95, (suspicious, changed)


def _runner_up_rule(answers: list[dict[str, Any]]) -> dict[int, int]:
    """Each served label's commonest runner-up class."""
    seconds: dict[int, list[int]] = {}
    for a in answers:
        seconds.setdefault(a["label"], []).append(int(np.argsort(a["probabilities"])[-2]))
    return {label: max(set(v), key=v.count) for label, v in seconds.items()}


def _follows(rule: dict[int, int], answers: list[dict[str, Any]]) -> float:
    return float(np.mean([rule.get(a["label"]) == int(np.argsort(a["probabilities"])[-2]) for a in answers]))


def test_the_probability_mark_looks_the_same_on_marked_misinformed_and_honest_answers():
    """The mark gives a served label's keyed classes a share of the mass, so an
    answer's runner-up follows from its label: a rule a thief can learn from
    its own answers. Watermark answers and a flagged account's misinformation
    follow the same rule (the mark is keyed by the served label, after every
    step that changes it), so the rule does not pick them out."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (3000, 10))
    logits[np.arange(3000), rng.integers(0, 10, 3000)] += 8.0  # a confident model
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    protector = OutputProtector(b"k" * 32, output=["round(4)"], watermark=0.05, probability_mark=0.15)
    options = RouteOptions()
    policy = protector.policy(options, "free")
    body = {"instances": [[i] for i in range(len(P))]}
    payload = {"predictions": [{"label": int(p.argmax()), "probabilities": p.tolist()} for p in P]}
    clean, marks, _, fingerprints = protector.protect(payload, body, 1, False, 0.0, policy, options, "r")
    flagged = protector.protect(payload, body, 1, True, 1.0, policy, options, "r")[0]["predictions"]
    marked = {m[0] for m in marks}
    answers = clean["predictions"]
    honest = [a for a, fp in zip(answers, fingerprints) if fp not in marked]
    watermarked = [a for a, fp in zip(answers, fingerprints) if fp in marked]
    assert len(watermarked) > 100 and np.mean([a["label"] != p.argmax() for a, p in zip(flagged, P)]) > 0.95
    rule = _runner_up_rule(honest)
    assert _follows(rule, honest) > 0.95
    assert _follows(rule, watermarked) > 0.95
    assert _follows(rule, flagged) > 0.95
