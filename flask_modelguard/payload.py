"""Reading predictions out of JSON responses. Framework-free.

This is the minimal reader the query log needs (label and top confidence per
instance); it understands the common shapes:

- ``{"label": 3, "probabilities": [...]}`` and ``{"probabilities": [...]}``
- ``{"predictions": [{"label": ..., "probabilities": [...]}, ...]}``
- ``{"scores": {"cat": 0.9, "dog": 0.1}}``
- a top-level list of probability vectors or of the objects above.

Anything else yields no predictions; it never raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple


class Prediction(NamedTuple):
    label: Any  # class index or name; None when the response has only scores
    confidence: float | None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _from_vector(probs: Any) -> tuple[int, float] | None:
    if isinstance(probs, list) and probs and all(_is_number(p) for p in probs):
        best = max(range(len(probs)), key=probs.__getitem__)
        return best, float(probs[best])
    return None


def _one(obj: Any) -> Prediction | None:
    if isinstance(obj, list):
        top = _from_vector(obj)
        return Prediction(*top) if top else None
    if not isinstance(obj, Mapping):
        return None
    label = obj.get("label")
    scores = obj.get("scores")
    if isinstance(scores, Mapping) and scores and all(_is_number(v) for v in scores.values()):
        name = max(scores, key=scores.__getitem__)
        return Prediction(name if label is None else label, float(scores[name]))
    top = _from_vector(obj.get("probabilities"))
    if top is not None:
        return Prediction(top[0] if label is None else label, top[1])
    if label is not None and isinstance(label, (int, str)) and not isinstance(label, bool):
        return Prediction(label, None)
    return None


def read_predictions(payload: Any) -> list[Prediction]:
    """Every prediction found in a decoded JSON response, in order."""
    if isinstance(payload, Mapping) and isinstance(payload.get("predictions"), list):
        items = payload["predictions"]
    elif isinstance(payload, list) and payload and not _is_number(payload[0]):
        items = payload
    else:
        items = [payload]
    found = [_one(item) for item in items]
    return [p for p in found if p is not None]


def count_instances(body: Any) -> int:
    """How many model inputs a request body holds: the length of ``instances``
    (or ``inputs``) when it is a list, else 1."""
    if isinstance(body, Mapping):
        for name in ("instances", "inputs"):
            value = body.get(name)
            if isinstance(value, list):
                return len(value)
    return 1
