"""The key cache: generations against stale re-caching, and unknown prefixes kept apart."""

from __future__ import annotations

import threading

from flask_modelguard.auth import Authenticator
from flask_modelguard.keys import Principal, generate_key


class SlowRepository:
    """A repository whose look-up blocks until released (a query in flight)."""

    def __init__(self, principal):
        self.principal = principal
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def lookup(self, prefix):
        self.calls += 1
        self.started.set()
        self.release.wait(5)
        return self.principal if prefix == self.principal.prefix else None


def principal(prefix: str, secret_hash: str, status: str = "active") -> Principal:
    return Principal(1, prefix, secret_hash, None, False, 7, "acct", "free", status, None)


def test_invalidation_during_a_lookup_is_not_undone():
    new = generate_key()
    repo = SlowRepository(principal(new.prefix, new.secret_hash))
    auth = Authenticator(repo, ttl=60)
    thread = threading.Thread(target=auth.lookup, args=(new.prefix,))
    thread.start()
    repo.started.wait(5)
    auth.invalidate(account_id=7)  # e.g. the account was blocked meanwhile
    repo.release.set()
    thread.join(5)
    repo.release.set()
    auth.lookup(new.prefix)
    assert repo.calls == 2  # the stale answer was not cached


def test_unknown_prefixes_do_not_evict_real_keys_nor_query_twice():
    new = generate_key()
    repo = SlowRepository(principal(new.prefix, new.secret_hash))
    repo.release.set()
    auth = Authenticator(repo, ttl=60, maxsize=3)
    assert auth.lookup(new.prefix) is not None
    for i in range(20):
        assert auth.lookup(f"unknown{i:03d}") is None
    assert repo.calls == 1 + 20
    assert auth.lookup("unknown019") is None and repo.calls == 21  # remembered as unknown
    assert auth.lookup(new.prefix) is not None and repo.calls == 21  # the real key is still cached
