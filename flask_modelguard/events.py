"""Query events: what the request path hands to the worker. Framework-free.

The request path only records references (the parsed request body, the view's
return value) and timings; everything that costs more (canonical form,
keyed hash, reading predictions) happens in :meth:`QueryEvent.to_row`, in
the worker thread.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .payload import read_predictions


def canonical(value: Any) -> Any:
    """A canonical form of decoded JSON: numbers as floats (``1`` and ``1.0`` are
    the same model input), mappings with sorted keys."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return str(value)


def fingerprint(value: Any, key: bytes) -> str:
    """Keyed BLAKE2b (128 bits, hex) of the canonical JSON of ``value``."""
    data = json.dumps(canonical(value), separators=(",", ":"), sort_keys=True).encode()
    return hashlib.blake2b(data, key=key[:64], digest_size=16).hexdigest()


@dataclass(slots=True)
class QueryEvent:
    account_id: int
    key_id: int
    route: str
    ts: float
    status: int
    latency_ms: float
    n_instances: int
    #: The decoded request body (None when it was not JSON).
    request_json: Any = None
    #: The view's JSON answer: a decoded object, or the raw bytes of a JSON response.
    response_json: Any = None

    def to_row(self, key: bytes, store_inputs: bool = False) -> dict[str, Any]:
        """The ``query_events`` row of this event (computed in the worker)."""
        response = self.response_json
        if isinstance(response, (bytes, bytearray)):
            try:
                response = json.loads(response)
            except ValueError:
                response = None
        predictions = read_predictions(response) if response is not None else []
        return {
            "account_id": self.account_id,
            "key_id": self.key_id,
            "route": self.route,
            "ts": self.ts,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "n_instances": self.n_instances,
            "fingerprint": None if self.request_json is None else fingerprint(self.request_json, key),
            "labels": [p.label for p in predictions] or None,
            "top_confidences": [p.confidence for p in predictions] or None,
            "input": self.request_json if store_inputs else None,
        }
