"""The owner's known-good data for ADD's reference: where it comes from
(``MODELGUARD_REFERENCE``, ``flask modelguard fit-reference FILE``, the admin
API) and a digest that says whether a stored reference was fitted on it.
Framework-free.

A source is a path to ``.npz`` (arrays ``X`` and ``y``; ``inputs`` and
``labels`` also accepted) or ``.json`` (``{"inputs": [...], "labels": [...]}``),
or a function of no arguments returning ``(inputs, labels)``: model inputs as
requests carry them (the ``features`` lists) and the model's labels for them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .exc import InvalidValue

#: Fewest inputs a reference is fitted on (ADD also holds 30 % back to calibrate).
MIN_INPUTS = 20

Source = str | os.PathLike[str] | Callable[[], tuple[Any, Any]]


def read_source(source: Source) -> tuple[list[Any], list[Any]]:
    """``(inputs, labels)`` of a reference source, checked: as many labels as
    inputs, at least :data:`MIN_INPUTS`. Raises :class:`InvalidValue`."""
    if callable(source):
        found = source()
        if not isinstance(found, (tuple, list)) or len(found) != 2:
            raise InvalidValue("MODELGUARD_REFERENCE's function must return (inputs, labels)")
        inputs, labels = _as_list(found[0]), _as_list(found[1])
    else:
        inputs, labels = _read_file(os.fspath(source))
    if len(inputs) != len(labels) or len(inputs) < MIN_INPUTS:
        raise InvalidValue(f"A reference needs as many labels as inputs, and at least {MIN_INPUTS} of each "
                           f"({len(inputs)} inputs, {len(labels)} labels)")
    return inputs, labels


def _read_file(path: str) -> tuple[list[Any], list[Any]]:
    if not os.path.isfile(path):
        raise InvalidValue(f"Reference file not found: {path}")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            x_name = "X" if "X" in data else "inputs"
            y_name = "y" if "y" in data else "labels"
            if x_name not in data or y_name not in data:
                raise InvalidValue(f"{path} must hold arrays X and y (or inputs and labels)")
            return data[x_name].tolist(), data[y_name].tolist()
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        raise InvalidValue(f"{path} is not a readable JSON file ({exc.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) \
            or not isinstance(data.get("labels"), list):
        raise InvalidValue(f'{path} must hold {{"inputs": [...], "labels": [...]}}')
    return data["inputs"], data["labels"]


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def digest(inputs: Sequence[Any], labels: Sequence[Any], space: str) -> str:
    """A short digest of reference data in a feature space: a stored reference
    with the same digest was fitted on the same data, and need not be refitted."""
    h = hashlib.blake2b(digest_size=12, person=b"mg-reference")
    h.update(space.encode())
    h.update(json.dumps([_as_list(x) if isinstance(x, np.ndarray) else x for x in inputs],
                        separators=(",", ":"), default=float).encode())
    h.update(json.dumps([str(label) for label in labels]).encode())
    return h.hexdigest()
