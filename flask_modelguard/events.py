"""Query events: what the request path hands to the worker. Framework-free.

The request path only records references (the parsed request body, the view's
return value) and timings; everything that costs more (canonical form,
keyed hash, reading predictions) happens in :meth:`QueryEvent.to_row`, in
the worker thread.
"""

from __future__ import annotations

import hashlib
import json
import math
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .payload import predictions

_NUMBER_TYPES = frozenset((int, float))


def _feed(update: Any, value: Any) -> None:
    """Feed a canonical, unambiguous byte encoding of decoded JSON to ``update``.

    Numbers are encoded as IEEE doubles (``1`` and ``1.0`` are the same model
    input; so are ``true`` and ``1`` inside a list of numbers), mappings in
    sorted key order; every item carries a type tag and every container its
    length, so distinct inputs never share an encoding.
    """
    kind = type(value)
    if kind is list or kind is tuple:
        packed: array[float] | None
        try:  # the common case, a list of numbers, packed in C
            packed = array("d", value)
        except (TypeError, OverflowError):  # strings, other items, or an integer beyond a double
            try:  # numbers written as strings are the same model input ("16" is 16)
                packed = array("d", np.asarray(value, dtype=np.float64).ravel()) if value else None
                if packed is not None and len(packed) != len(value):
                    packed = None
            except (TypeError, ValueError, OverflowError):
                packed = None
        if packed is not None:
            update(b"n%d:" % len(value))
            update((np.frombuffer(packed, dtype=np.float64) + 0.0).tobytes())  # -0.0 is 0.0
            return
        update(b"l%d:" % len(value))
        for item in value:
            _feed(update, item)
    elif kind is dict or isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        update(b"d%d:" % len(items))
        for key, item in items:
            _feed(update, key)
            _feed(update, item)
    elif kind is str:
        data = value.encode()
        update(b"s%d:" % len(data))
        update(data)
    elif kind is bool or value is None:
        update(b"T" if value is True else b"F" if value is False else b"N")
    elif kind in _NUMBER_TYPES:
        try:
            update(b"f" + array("d", (value,)).tobytes())
        except OverflowError:
            update(b"i%d:" % len(str(value)) + str(value).encode())
    else:
        _feed(update, str(value))


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None: they are not JSON,
    and PostgreSQL refuses them in a JSON column."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _finite(v) for k, v in value.items()}
    return value


def fingerprint(value: Any, key: bytes) -> str:
    """Keyed BLAKE2b (128 bits, hex) of the canonical encoding of decoded JSON."""
    hasher = hashlib.blake2b(key=key[:64], digest_size=16)
    _feed(hasher.update, value)
    return hasher.hexdigest()


def client_hash(client: str, key: bytes) -> int:
    """A client's name (MODELGUARD_CLIENT_ID) as a keyed 64-bit hash: never stored in clear."""
    digest = hashlib.blake2b(client.encode(errors="replace"), key=key[:64], digest_size=8, person=b"mg-client")
    return int.from_bytes(digest.digest(), "big")


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
    #: Keyed wrong answers served, the ownership evidence: (fingerprint, input,
    #: served label, model label, classes, kind, null rate); an older serving
    #: process sends the first five (a watermark, null rate ``1/(classes - 1)``).
    marks: list[tuple[Any, ...]] | None = None
    #: The request held a registered honey-trap input.
    canary: bool = False
    #: The model's own answer when output protection changed it (the detectors
    #: judge accounts on what the model said, not on what was served).
    model_json: Any = None
    #: The route's payload adapter (None: the common shapes), so that what a
    #: custom adapter reads is what the query log and the detectors see.
    adapter: Any = None
    #: Each input's keyed fingerprint, when the request path computed them
    #: (output protection does): the worker does not hash the inputs again.
    fingerprints: list[str] | None = None
    #: The request body as received (an out-of-process worker is sent these bytes).
    raw_body: bytes | None = None
    #: Who sent it, as ``MODELGUARD_CLIENT_ID`` names the client (hashed in the worker).
    client: str | None = None

    def to_row(self, key: bytes, store_inputs: bool = False) -> dict[str, Any]:
        """The ``query_events`` row of this event (computed in the worker)."""
        response = self.response_json
        if isinstance(response, (bytes, bytearray)):
            try:
                response = json.loads(response)
            except ValueError:
                response = None
        found = predictions(response, self.adapter) if response is not None else []
        try:
            fp = None if self.request_json is None else fingerprint(self.request_json, key)
        except (RecursionError, ValueError):  # pathological bodies still get a row
            fp = None
        return {
            "account_id": self.account_id,
            "key_id": self.key_id,
            "route": self.route,
            "ts": self.ts,
            "status": self.status,
            "latency_ms": self.latency_ms,
            "n_instances": self.n_instances,
            "fingerprint": fp,
            "labels": [p.label for p in found] or None,
            "top_confidences": [_finite(p.confidence) for p in found] or None,
            "input": _finite(self.request_json) if store_inputs else None,
            "canary": self.canary,
            "watermarks": [_evidence(self, mark) for mark in self.marks or ()],
        }


def _evidence(event: QueryEvent, mark: Sequence[Any]) -> dict[str, Any]:
    """The evidence record of one keyed wrong answer of ``event``."""
    fp, x, served, model, n_classes = mark[:5]
    kind, rate = (mark[5], mark[6]) if len(mark) >= 7 else ("watermark", None)
    return {"account_id": event.account_id, "route": event.route, "ts": event.ts, "fingerprint": fp,
            "input": _finite(x), "served_label": served, "model_label": model, "n_classes": n_classes,
            "kind": str(kind), "null_rate": None if rate is None else float(rate)}
