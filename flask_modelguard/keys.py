"""API keys: generation, parsing and constant-time verification.

A key looks like ``mg_<prefix>_<secret>``. The prefix (10 characters) is
stored in clear and used to look the key up; the secret (32 characters, about
165 bits of entropy: 32 of 36 letters and digits) is stored only as a SHA-256 digest. A fast hash is the
right tool here: the secret is random, not a password, so there is nothing to
brute-force and no reason to make each request pay for a slow KDF.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from typing import NamedTuple

from .exc import MalformedKey

KEY_SCHEME = "mg"
PREFIX_LENGTH = 10
SECRET_LENGTH = 32
_ALPHABET = string.ascii_lowercase + string.digits


class ParsedKey(NamedTuple):
    prefix: str
    secret: str


class NewKey(NamedTuple):
    """A freshly generated key: ``token`` is shown to the user once, the rest is stored."""

    token: str
    prefix: str
    secret_hash: str


def _random(n: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(n))


def hash_secret(prefix: str, secret: str) -> str:
    """The stored digest of a key's secret, bound to its prefix."""
    return hashlib.sha256(f"{prefix}:{secret}".encode()).hexdigest()


def generate_key() -> NewKey:
    prefix, secret = _random(PREFIX_LENGTH), _random(SECRET_LENGTH)
    token = f"{KEY_SCHEME}_{prefix}_{secret}"
    return NewKey(token, prefix, hash_secret(prefix, secret))


_KEY_RE = re.compile(rf"{KEY_SCHEME}_([a-z0-9]{{{PREFIX_LENGTH}}})_([a-z0-9]{{{SECRET_LENGTH}}})")


def parse_key(token: str) -> ParsedKey:
    """Split a presented key into prefix and secret, or raise :class:`MalformedKey`."""
    match = _KEY_RE.fullmatch(token)
    if match is None:
        raise MalformedKey(
            f"API keys look like '{KEY_SCHEME}_<{PREFIX_LENGTH} chars>_<{SECRET_LENGTH} chars>'."
        )
    return ParsedKey(match[1], match[2])


def verify_secret(parsed: ParsedKey, secret_hash: str) -> bool:
    """Compare a presented secret with a stored digest in constant time."""
    return hmac.compare_digest(hash_secret(parsed.prefix, parsed.secret), secret_hash)


def key_hint(prefix: str) -> str:
    """What may be shown or logged about a key: its scheme and prefix, never the secret."""
    return f"{KEY_SCHEME}_{prefix}_…"


@dataclass(frozen=True, slots=True)
class Principal:
    """Everything the request path needs to know about a presented key, cached as one object."""

    key_id: int
    prefix: str
    secret_hash: str
    expires_at: float | None
    revoked: bool
    account_id: int
    account: str
    tier: str
    status: str
    limits: str | None
    flagged: bool = False
    score: float = 0.0
