"""The admin API's request parameters and bodies as typed values, or a 400
problem that says what was wrong."""

from __future__ import annotations

import math
from typing import Any

from flask import request

from ..exc import BadRequest


def body(*allowed: str, optional: bool = False) -> dict[str, Any]:
    """The JSON object sent, with no field but ``allowed`` (``optional``: or no body, as {})."""
    data = request.get_json(silent=True)
    if optional and not data:
        return {}
    if not isinstance(data, dict):
        raise BadRequest("Send a JSON object.")
    unknown = set(data) - set(allowed)
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}.")
    return data


def number(name: str, kind: type[int] | type[float], default: Any, low: float = -math.inf,
            high: float = math.inf) -> Any:
    """Query parameter ``name`` as an int or a finite float in [low, high]."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"{name} must be {'an integer' if kind is int else 'a number (epoch seconds)'}.") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be finite.")
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}.")
    return value


def choice(name: str, allowed: tuple[str, ...], what: str, default: str | None = None) -> str | None:
    """Query parameter ``name``, one of ``allowed`` (``what`` says which, in the refusal)."""
    value = request.args.get(name, default)
    if value is not None and value not in allowed:
        raise BadRequest(f"{name} must be {what}.")
    return value


def paging() -> tuple[int, int]:
    return number("limit", int, 50, 1, 1000), number("offset", int, 0, 0, 10**9)
