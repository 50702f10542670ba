"""Authenticating a request's API key against a bounded TTL cache. Framework-free.

After the first use of a key, its look-up is served from a per-process cache
(:class:`~flask_modelguard.keycache.KeyCache`). A change made through the same
process (revoke, block, rotate) invalidates the cache at once; changes made
elsewhere (another worker, the CLI) reach it through the change feed within a
second, and within ``ttl`` seconds when the feed cannot be read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from cachetools import TTLCache
from sqlalchemy.exc import SQLAlchemyError

from .exc import (
    AccountBlocked,
    AccountSuspended,
    DatabaseUnavailable,
    ExpiredKey,
    InvalidKey,
    MissingKey,
    Problem,
    RevokedKey,
)
from .keycache import FeedWatch, KeyCache
from .keys import Principal, key_hint, parse_key, verify_secret


class KeySource(Protocol):
    """Where keys are looked up on a cache miss (the repository)."""

    def lookup(self, prefix: str) -> Principal | None: ...


class Authenticator:
    def __init__(
        self,
        repository: KeySource,
        *,
        auth_header: str | None = "Authorization",
        api_key_header: str | None = "X-API-Key",
        ttl: float = 30.0,
        maxsize: int = 10_000,
        clock: Callable[[], float] = time.time,
        feed: FeedWatch | None = None,
    ) -> None:
        self.repository = repository
        self.auth_header = auth_header
        self.api_key_header = api_key_header
        self.clock = clock
        #: The change feed's reads, when this process reads it (cached keys then outlive ``ttl``).
        self.feed = feed
        self._cache: KeyCache[Principal] = KeyCache(maxsize, ttl, feed)
        # Unknown prefixes are remembered apart, briefly, so a flood of made-up
        # keys neither evicts real ones nor costs a query each.
        self._unknown: TTLCache[str, bool] = TTLCache(maxsize=min(maxsize, 10_000), ttl=min(ttl, 5.0))
        self._generation = 0  # bumped by invalidate(): a look-up in flight must not re-cache stale data
        self._lock = threading.Lock()

    def reset_in_child(self) -> None:
        """A forked child: a lock the parent's threads held is not held here."""
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
        with self._lock:
            found = self._cache.get(prefix)
            if found is not None:
                return found
            if prefix in self._unknown:
                return None
            generation = self._generation
        try:
            principal = self.repository.lookup(prefix)
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(
                "The account database is unreachable; try again shortly."
            ) from exc
        with self._lock:
            if generation == self._generation:
                if principal is None:
                    self._unknown[prefix] = True
                else:
                    self._cache.put(prefix, principal, principal.account_id)
        return principal

    def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal behind the request's key, or raise the matching problem."""
        parsed = parse_key(self.extract(headers))
        principal = self.lookup(parsed.prefix)
        if principal is None or not verify_secret(parsed, principal.secret_hash):
            raise InvalidKey("This API key is not known.")
        problem: Problem | None = None
        if principal.revoked:
            problem = RevokedKey(f"The key {key_hint(principal.prefix)} has been revoked.")
        elif principal.expires_at is not None and self.clock() >= principal.expires_at:
            problem = ExpiredKey(
                f"The key {key_hint(principal.prefix)} was rotated and its grace period is over; use the new key."
            )
        elif principal.status == "blocked":
            problem = AccountBlocked(f"The account {principal.account!r} is blocked.")
        elif principal.status == "suspended":
            problem = AccountSuspended(f"The account {principal.account!r} is suspended.")
        if problem is not None:
            problem.principal = principal
            raise problem
        return principal

    def invalidate(self, *, prefix: str | None = None, account_id: int | None = None) -> None:
        """Drop cached look-ups of one key, of every key of an account, or all."""
        with self._lock:
            self._generation += 1
            if prefix is None and account_id is None:
                self._cache.clear()
                self._unknown.clear()
                return
            if prefix is not None:
                self._unknown.pop(prefix, None)
                self._cache.pop(prefix)
            if account_id is not None:
                self._cache.pop_account(account_id)
