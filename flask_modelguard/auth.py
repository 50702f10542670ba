"""Authenticating a request's API key against a bounded TTL cache. Framework-free.

After the first use of a key, its look-up is served from a per-process cache
(``cachetools.TTLCache``); the database is asked again when the entry expires.
A change made through the same process (revoke, block, rotate) invalidates
the cache at once; changes made elsewhere (another worker, the CLI) take
effect within ``ttl`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from cachetools import TTLCache
from sqlalchemy.exc import SQLAlchemyError

from .exc import (
    AccountBlocked,
    AccountSuspended,
    DatabaseUnavailable,
    ExpiredKey,
    InvalidKey,
    MissingKey,
    RevokedKey,
)
from .keys import key_hint, parse_key, verify_secret
from .repository import Principal, Repository

class Authenticator:
    def __init__(
        self,
        repository: Repository,
        *,
        auth_header: str | None = "Authorization",
        api_key_header: str | None = "X-API-Key",
        ttl: float = 30.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repository = repository
        self.auth_header = auth_header
        self.api_key_header = api_key_header
        self.clock = clock
        self._cache: TTLCache[str, Principal | None] = TTLCache(maxsize=maxsize, ttl=ttl)
        self._lock = threading.Lock()

    def extract(self, headers: Mapping[str, str]) -> str:
        """The presented key, or raise :class:`MissingKey`."""
        if self.auth_header:
            value = headers.get(self.auth_header)
            if value:
                scheme, _, token = value.partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    return token.strip()
        if self.api_key_header:
            value = headers.get(self.api_key_header)
            if value and value.strip():
                return value.strip()
        where = " or ".join(
            h for h in (
                self.auth_header and f"'{self.auth_header}: Bearer <key>'",
                self.api_key_header and f"'{self.api_key_header}: <key>'",
            ) if h
        )
        raise MissingKey(f"Send your API key in {where}.")

    def lookup(self, prefix: str) -> Principal | None:
        try:
            with self._lock:
                return self._cache[prefix]
        except KeyError:
            pass
        try:
            principal = self.repository.lookup(prefix)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(
                "The account database is unreachable; try again shortly."
            ) from exc
        with self._lock:
            self._cache[prefix] = principal
        return principal

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal behind the request's key, or raise the matching problem."""
        parsed = parse_key(self.extract(headers))
        principal = self.lookup(parsed.prefix)
        if principal is None or not verify_secret(parsed, principal.secret_hash):
            raise InvalidKey("This API key is not known.")
        if principal.revoked:
            raise RevokedKey(f"The key {key_hint(principal.prefix)} has been revoked.")
        if principal.expires_at is not None and self.clock() >= principal.expires_at:
            raise ExpiredKey(
                f"The key {key_hint(principal.prefix)} was rotated and its grace period is over; use the new key."
            )
        if principal.status == "blocked":
            raise AccountBlocked(f"The account {principal.account!r} is blocked.")
        if principal.status == "suspended":
            raise AccountSuspended(f"The account {principal.account!r} is suspended.")
        return principal

    def invalidate(self, *, prefix: str | None = None, account_id: int | None = None) -> None:
        """Drop cached look-ups of one key, of every key of an account, or all."""
        with self._lock:
            if prefix is None and account_id is None:
                self._cache.clear()
                return
            for cached_prefix, principal in list(self._cache.items()):
                if cached_prefix == prefix or (
                    principal is not None and principal.account_id == account_id
                ):
                    self._cache.pop(cached_prefix, None)
