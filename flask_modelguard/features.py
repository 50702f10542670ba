"""Query features: the vector a detector sees for one model input. Framework-free.

The default maps an input to its numbers, flattened (for the example app, the
64 pixels). An application can pass its own function, e.g. the model's
penultimate layer, which ADD expects. A fixed random projection caps the
dimension (default 64) so state and cost stay bounded; it is the same in every
process (a fixed seed), so states built on different hosts can be merged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

import numpy as np

log = logging.getLogger("flask_modelguard")

FeatureFunction = Callable[[Any], np.ndarray]

#: The largest magnitude a feature keeps: larger numbers (and infinities) are
#: clipped to it, so a hostile input cannot overflow an account's moments
#: (squares of 1e12 are 1e24, far from float64's 1.8e308). NaN becomes 0.
LIMIT = 1e12


def flatten(value: Any) -> np.ndarray:
    """The numbers of a decoded JSON input, depth-first, as float64 (others skipped)."""
    out: list[float] = []

    def walk(v: Any) -> None:
        if isinstance(v, bool):
            out.append(float(v))
        elif isinstance(v, int):  # beyond float range: an infinity, clipped later
            out.append(float(v) if -(2**1023) < v < 2**1023 else math.copysign(math.inf, v))
        elif isinstance(v, float):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            for item in v:
                walk(item)
        elif isinstance(v, Mapping):
            for key in sorted(v, key=str):
                walk(v[key])

    if isinstance(value, list):
        try:  # the common case, a flat list of numbers, converted in C
            flat = np.asarray(value, dtype=np.float64)
            if flat.ndim == 1:
                return flat
        except (TypeError, ValueError, OverflowError):
            pass
    walk(value)
    return np.asarray(out, dtype=np.float64)


@lru_cache(maxsize=64)
def projection(source_dim: int, target_dim: int, seed: int = 20191) -> np.ndarray:
    """A fixed Gaussian random projection (Johnson–Lindenstrauss), scaled so
    distances are preserved in expectation."""
    rng = np.random.default_rng(seed + 7919 * source_dim + target_dim)
    return rng.normal(0.0, 1.0 / np.sqrt(target_dim), size=(source_dim, target_dim))


def space_name(function: FeatureFunction | None, dim: int) -> str:
    """The default name of a feature space: the function's qualified name and the dimension."""
    function = function or flatten
    module = getattr(function, "__module__", None) or type(function).__module__
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"{module}.{name}/{dim}"


def _bounded(x: np.ndarray) -> np.ndarray:
    """``x`` within ±:data:`LIMIT` (NaN as 0); the same array when it already is."""
    if x.size and -LIMIT <= x.min() and x.max() <= LIMIT:  # (NaN fails both comparisons)
        return x
    return np.asarray(np.clip(np.nan_to_num(x, nan=0.0, posinf=LIMIT, neginf=-LIMIT), -LIMIT, LIMIT))


class Featurizer:
    """Maps model inputs to feature vectors of exactly ``max_dim`` numbers
    within ±:data:`LIMIT`: longer ones are projected, shorter ones padded with
    zeros (which changes no distance)."""

    def __init__(self, function: FeatureFunction | None = None, max_dim: int = 64) -> None:
        self.function = function or flatten
        self.max_dim = max_dim

    def __call__(self, value: Any) -> np.ndarray:
        x = np.asarray(self.function(value), dtype=np.float64).ravel()
        x = _bounded(x)
        if x.size > self.max_dim:
            return _bounded(x @ projection(x.size, self.max_dim))
        if x.size < self.max_dim:
            return np.pad(x, (0, self.max_dim - x.size))
        return x


class FeatureSpace:
    """The feature space this process works in (a name and a dimension), and
    the check that stored data (account states, a reference) belongs to it: an
    unnamed one of the same dimension counts; the first mismatch is logged once."""

    def __init__(self, name: str, dim: int) -> None:
        self.name = name
        self.dim = dim
        self._warned = False

    def holds(self, data: Mapping[str, Any], what: str = "account state") -> bool:
        space = data.get("space") or ""
        same = data.get("dim", self.dim) == self.dim and space in ("", self.name)
        if not same and not self._warned:
            self._warned = True
            log.warning("modelguard: a stored %s is of feature space %r, not %r: it is not used (account "
                        "statistics start over; refit the reference)", what, space or data.get("dim"), self.name)
        return same
