"""Fitted models stored as signed pickles, so the processes of an app load
them instead of fitting them again. Framework-free.

A pickle runs code when loaded, so one is loaded only when an HMAC-SHA256
under a key derived from the app's secret vouches for it *and* for what it
claims: the training set it was fitted on (a digest of the data) and the
versions of Python, NumPy, scikit-learn and flask_modelguard that pickled it.
Whoever can write the database but does not know the secret cannot make a
process unpickle their bytes, nor pass an old pickle off as a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import pickle
import platform
from importlib import metadata
from typing import Any

log = logging.getLogger("flask_modelguard")

_PURPOSE = b"modelguard-detector-models"


def versions() -> dict[str, str]:
    """What a pickle of fitted models depends on: loaded only where these match."""
    return {"python": ".".join(platform.python_version_tuple()[:2]), "numpy": metadata.version("numpy"),
            "scikit-learn": metadata.version("scikit-learn"), "flask-modelguard": _own_version()}


def _own_version() -> str:
    try:
        return metadata.version("flask-modelguard")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "source"


def digest(data: Any) -> str:
    """A digest of a JSON-able training set (canonical JSON)."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _mac(secret: bytes, claims: dict[str, Any], blob: bytes) -> str:
    key = hmac.new(secret, _PURPOSE, hashlib.sha256).digest()
    signed = json.dumps(claims, sort_keys=True).encode() + b"\0" + blob
    return hmac.new(key, signed, hashlib.sha256).hexdigest()


def seal(obj: Any, secret: bytes, training: str) -> tuple[bytes, dict[str, Any]]:
    """``obj`` pickled, and the signed claims that go with it."""
    blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    claims = {"training": training, "versions": versions()}
    return blob, {**claims, "hmac": _mac(secret, claims, blob)}


def unseal(blob: bytes, meta: dict[str, Any], secret: bytes, training: str) -> Any | None:
    """The object, when ``meta`` claims this training set and these versions and
    the signature holds; None otherwise (logged when it is not a plain mismatch)."""
    claims = {"training": meta.get("training"), "versions": meta.get("versions")}
    if claims != {"training": training, "versions": versions()}:
        return None  # fitted on another set, or by other library versions: fit again
    if not hmac.compare_digest(str(meta.get("hmac", "")), _mac(secret, claims, blob)):
        log.warning("modelguard: the stored detector models are not signed with this app's secret; refitting")
        return None
    try:
        return pickle.loads(blob)  # noqa: S301 - vouched for by the app's secret, checked above
    except Exception as exc:
        log.warning("modelguard: the stored detector models could not be loaded (%s); refitting",
                    exc.__class__.__name__)
        return None
