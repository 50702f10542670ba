"""HTTP responses the guard builds: RFC 9457 problems and rate-limit headers."""

from __future__ import annotations

import json

from flask import Response

from .exc import Problem

PROBLEM_MIMETYPE = "application/problem+json"


def problem_response(problem: Problem) -> Response:
    """An RFC 9457 ``application/problem+json`` response for ``problem``."""
    return Response(
        json.dumps(problem.to_dict()),
        status=problem.status,
        mimetype=PROBLEM_MIMETYPE,
        headers=problem.headers,
    )


def add_headers(response: Response, headers: list[tuple[str, str]]) -> None:
    """Append headers we built ourselves (ASCII names, digits and quoted policy
    names, never user input) without werkzeug's per-value validation, which
    costs more than building them."""
    raw = getattr(response.headers, "_list", None)
    if isinstance(raw, list):
        raw.extend(headers)
    else:  # pragma: no cover - a future werkzeug without _list
        response.headers.extend(headers)
