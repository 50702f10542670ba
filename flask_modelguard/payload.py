"""JSON payloads: where the probabilities are in an answer, how to write
transformed ones back, and what a request's inputs are. Framework-free.

:class:`AutoAdapter` (the default) understands

- ``{"label": 3, "probabilities": [...]}`` and ``{"probabilities": [...]}``
  (the label may also be under ``class`` or ``prediction``)
- ``{"predictions": [{"label": ..., "probabilities": [...]}, ...]}`` (or
  ``results`` or ``outputs`` for ``predictions``)
- ``{"scores": {"cat": 0.9, "dog": 0.1}}`` (class names), alone or per prediction
- a top-level list of probability vectors, or of the objects above
- a top-level probability vector.

:class:`PathAdapter` reads one dotted path (``"result.probs"``) holding a vector
or a list of vectors. Any object with a ``read(payload)`` method returning a
:class:`Reading` (or None) is an adapter too. A payload an adapter does not
recognise is returned untouched.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeGuard, cast

import numpy as np

from .transforms import Answer


@dataclass
class Reading:
    """What an adapter found: the answer, and how to write a transformed one back."""

    answer: Answer
    #: Class names by index, when the payload names classes (``scores``).
    classes: list[Any] | None
    write: Callable[[Answer], Any]
    #: Whether ``write`` also writes the served labels (a path adapter cannot:
    #: labels elsewhere in the payload stay as the model gave them).
    writes_labels: bool = True

    def label_value(self, index: int) -> Any:
        return self.classes[index] if self.classes is not None else int(index)


class PayloadAdapter(Protocol):
    def read(self, payload: Any) -> Reading | None: ...


#: Keys of a prediction's label, and of the list of predictions, in the shapes recognised.
LABEL_KEYS = ("label", "class", "prediction")
LIST_KEYS = ("predictions", "results", "outputs")


def _label_key(item: Mapping[str, Any]) -> str | None:
    return next((k for k in LABEL_KEYS if k in item), None)


def _list_key(payload: Any) -> str | None:
    if not isinstance(payload, Mapping):
        return None
    return next((k for k in LIST_KEYS if isinstance(payload.get(k), list)), None)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_vector(x: Any) -> TypeGuard[list[float]]:
    """A non-empty list of numbers (checked in C by ``array``)."""
    if type(x) is not list or not x:
        return False
    try:
        array("d", x)
    except (TypeError, OverflowError):
        return False
    return True


def _is_scores(x: Any) -> TypeGuard[Mapping[Any, float]]:
    return isinstance(x, Mapping) and len(x) > 0 and all(_is_number(v) for v in x.values())


def _sent(answer: Answer, i: int) -> np.ndarray:
    """Indices of the entries of row i that are sent."""
    if answer.keep is None:
        return np.arange(answer.probs.shape[1])
    return np.flatnonzero(answer.keep[i])


def _write_item(
    item: Mapping[str, Any] | None, answer: Answer, i: int, classes: list[Any] | None, key: str,
    original: int | None = None,
) -> Any:
    """Row ``i`` of ``answer`` in the shape of ``item`` (a dict, or None for a
    bare vector). ``original`` is the label the model gave: while the served
    label is the same, the item's own ``label`` value is kept as it was."""
    label = int(answer.labels[i])
    label_value = classes[label] if classes is not None else label
    label_key = _label_key(item) if isinstance(item, Mapping) else None
    if original is not None and label == original and label_key is not None:
        label_value = item[label_key]  # type: ignore[index]
    row = answer.probs[i]
    if item is None:  # a bare vector
        if answer.label_only:
            return {"label": label_value}  # not a bare number: a list of them would read as a vector
        if answer.keep is not None:
            idx = _sent(answer, i)
            return {"probabilities": row[idx].tolist(), "classes": idx.tolist()}
        return row.tolist()
    if answer.label_only:
        return {label_key or "label": label_value}  # nothing else: other keys may carry scores
    out = dict(item)
    if label_key is not None:
        out[label_key] = label_value
    idx = _sent(answer, i)
    if key == "scores":
        assert classes is not None
        out["scores"] = {classes[j]: float(row[j]) for j in idx}
    elif answer.keep is not None:
        out[key] = row[idx].tolist()
        out["classes"] = idx.tolist()
    else:
        out[key] = row.tolist()
    return out


def _item_vector(item: Any) -> tuple[list[float], list[Any] | None, str] | None:
    """(vector, class names, key) of one prediction object or bare vector."""
    if _is_vector(item):
        return item, None, ""
    if isinstance(item, Mapping):
        probs = item.get("probabilities")
        if _is_vector(probs):
            return probs, None, "probabilities"
        scores = item.get("scores")
        if _is_scores(scores):
            names = list(scores)
            return [scores[n] for n in names], names, "scores"
    return None


class AutoAdapter:
    """Recognises the common shapes listed in the module docstring."""

    def read(self, payload: Any) -> Reading | None:
        list_key = _list_key(payload)
        wrap: Callable[[list[Any]], Any]
        if list_key is not None:
            items, wrap = payload[list_key], lambda rows: {**payload, list_key: rows}
        elif isinstance(payload, list) and payload and not _is_number(payload[0]):
            items, wrap = payload, lambda rows: rows
        else:
            items, wrap = [payload], lambda rows: rows[0]
        found = [_item_vector(item) for item in items]
        if not found or any(f is None for f in found):
            return None
        vectors = [f[0] for f in found]  # type: ignore[index]
        names, key = found[0][1], found[0][2]  # type: ignore[index]
        if (
            any(len(v) != len(vectors[0]) for v in vectors)
            or any(f[1] != names or f[2] != key for f in found)  # type: ignore[index]
        ):
            return None  # mixed shapes: better untouched than half-protected
        probs = np.asarray(vectors, dtype=np.float64)
        labels = probs.argmax(axis=1)
        shaped = [item if isinstance(item, Mapping) else None for item in items]

        def write(answer: Answer) -> Any:
            return wrap([_write_item(shaped[i], answer, i, names, key, int(labels[i])) for i in range(len(items))])

        return Reading(Answer(probs, labels), names, write)


class PathAdapter:
    """The probabilities at a dotted path: a vector (one instance) or a list of vectors."""

    def __init__(self, path: str) -> None:
        self.keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def read(self, payload: Any) -> Reading | None:
        try:
            value = payload
            for key in self.keys:
                value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
        single = _is_vector(value)
        vectors = [value] if single else value
        if not isinstance(vectors, list) or not vectors or not all(_is_vector(v) for v in vectors):
            return None
        if any(len(v) != len(vectors[0]) for v in vectors):
            return None
        probs = np.asarray(vectors, dtype=np.float64)

        def write(answer: Answer) -> Any:
            rows = [_write_item(None, answer, i, None, "") for i in range(len(vectors))]
            return _set_path(payload, self.keys, rows[0] if single else rows)

        return Reading(Answer(probs, probs.argmax(axis=1)), None, write, writes_labels=False)


def _set_path(payload: Any, keys: list[Any], value: Any) -> Any:
    """A copy of ``payload`` with ``value`` at ``keys`` (containers on the path copied)."""
    if not keys:
        return value
    head, rest = keys[0], keys[1:]
    copy = list(payload) if isinstance(payload, list) else dict(payload)
    copy[head] = _set_path(payload[head], rest, value)
    return copy


class CallableAdapter:
    """An adapter from two functions: ``read(payload) -> probabilities (n, k) or
    None`` and ``write(payload, answer) -> new payload``."""

    def __init__(self, read: Callable[[Any], Any], write: Callable[[Any, Answer], Any]) -> None:
        self._read, self._write = read, write

    def read(self, payload: Any) -> Reading | None:
        probs = self._read(payload)
        if probs is None:
            return None
        answer = Answer.of(probs)
        return Reading(answer, None, lambda new: self._write(payload, new))


def make_adapter(spec: Any) -> PayloadAdapter:
    """An adapter from a setting: None (auto), a dotted path, a (read, write)
    pair of callables, or an adapter object."""
    if spec is None:
        return AutoAdapter()
    if isinstance(spec, str):
        return PathAdapter(spec)
    if isinstance(spec, tuple) and len(spec) == 2 and all(callable(f) for f in spec):
        return CallableAdapter(*spec)
    if hasattr(spec, "read"):
        return cast(PayloadAdapter, spec)
    raise TypeError(f"Not a payload adapter: {spec!r}")


def describe(payload: Any, depth: int = 5) -> str:
    """The shape of a decoded JSON value, for a log line: keys and types, the
    first item of each list (``{"results": [{"class": str, "scores": {str: float}}]}``)."""
    if depth == 0:
        return "..."
    if isinstance(payload, Mapping):
        if payload and all(_is_number(v) for v in payload.values()):
            return "{str: float}"
        items = [f'"{k}": {describe(v, depth - 1)}' for k, v in list(payload.items())[:6]]
        return "{" + ", ".join(items) + (", ..." if len(payload) > 6 else "") + "}"
    if isinstance(payload, list):
        return "[]" if not payload else f"[{describe(payload[0], depth - 1)}{', ...' if len(payload) > 1 else ''}]"
    if isinstance(payload, bool) or payload is None:
        return "bool" if isinstance(payload, bool) else "null"
    return "float" if _is_number(payload) else type(payload).__name__


class Prediction(NamedTuple):
    """One served prediction, as the query log records it."""

    label: Any  # class index or name
    confidence: float | None


def _prediction(item: Any) -> Prediction | None:
    found = _item_vector(item)
    label_key = _label_key(item) if isinstance(item, Mapping) else None
    label = item[label_key] if label_key is not None else None
    if found is not None:
        vector, names, _ = found
        classes = item.get("classes") if isinstance(item, Mapping) else None
        if isinstance(classes, list) and len(classes) == len(vector):  # a top-k "drop" answer
            names = classes
        best = max(range(len(vector)), key=vector.__getitem__)
        served = label if label is not None else (names[best] if names else best)
        return Prediction(served, float(vector[best]))
    if isinstance(label, (int, str)) and not isinstance(label, bool):
        return Prediction(label, None)
    return None


def read_predictions(payload: Any) -> list[Prediction]:
    """Every prediction found in a decoded JSON answer (labels-only ones too), in order."""
    list_key = _list_key(payload)
    if list_key is not None:
        items = payload[list_key]
    elif isinstance(payload, list) and payload and not _is_number(payload[0]):
        items = payload
    else:
        items = [payload]
    return [p for p in map(_prediction, items) if p is not None]


def predictions(payload: Any, adapter: PayloadAdapter | None = None) -> list[Prediction]:
    """The predictions of an answer as the route reads it: through its own
    adapter when it has one (labels the adapter names, top probabilities),
    else (or when the adapter does not recognise it) :func:`read_predictions`."""
    if adapter is not None and not isinstance(adapter, AutoAdapter):
        try:
            reading = adapter.read(payload)
        except Exception:
            reading = None
        if reading is not None and reading.answer.probs.size:
            top = reading.answer.probs.max(axis=1)
            return [Prediction(reading.label_value(int(label)), float(c)) for label, c in zip(reading.answer.labels, top)]
    return read_predictions(payload)


#: Keys that hold a request's model inputs (at most one may be present).
INPUT_KEYS = ("instances", "inputs", "features")


def instances(body: Any) -> list[Any]:
    """The model inputs of a request body: ``instances`` or ``inputs`` when a
    list, ``[features]``, else ``[body]``. A body with more than one of these
    keys is ambiguous (a view might answer on either) and counts as one input,
    the whole body, so fingerprints cover whatever the view reads."""
    if isinstance(body, Mapping):
        present = [name for name in INPUT_KEYS if name in body]
        if len(present) == 1:
            value = body[present[0]]
            if present[0] == "features":
                return [value]
            if isinstance(value, list):
                return value
    return [body]
