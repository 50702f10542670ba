"""Rate limits and quotas on top of the ``limits`` library. Framework-free.

A *tier* is a named list of limits (``"10/second"``, ``"1000/hour"``,
``"10000/day"``); an account uses its tier's limits unless it has an override.
Every limit is hit with the request's cost (a batch of N instances costs N),
shortest window first; a refused request consumes nothing, so a client
hammering a burst limit does not eat its daily quota.

The default fixed window is exact: on Redis one Lua script tests every limit
and, only when all admit, counts the request in all of them (one round trip,
atomic across processes and hosts); in process memory every limit is tested
and counted under one lock (:mod:`.windows`: a refused request consumes
nothing, no timer thread). On other storages a
refused request is refunded afterwards, which can leak into the next window
at its edge.

The storage is chosen by URI (``memory://``, ``redis://host:port``, anything
``limits`` supports). When it is unreachable the :class:`QuotaEnforcer` fails
open or closed, as configured, and tries the storage again after
``retry_interval`` seconds, so it recovers by itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from limits import RateLimitItem
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisClusterStorage, RedisStorage, Storage, storage_from_string
from limits.strategies import STRATEGIES, RateLimiter

from . import lifecycle
from .exc import InvalidValue
from .limitset import DEFAULT_TIERS, FAIL_MODES, LimitSet, Verdict, _normalise_tier, limit_set, parse_limits
from .windows import LocalWindows

log = logging.getLogger("flask_modelguard")

#: Seconds a Redis call may take before the storage counts as down (unless
#: ``storage_options`` set ``socket_timeout`` / ``socket_connect_timeout``).
REDIS_TIMEOUT = 0.5

#: Test every limit, and count the request in all of them only when all admit
#: it. KEYS: the limits' keys; ARGV: cost, then the amounts, then the expiries.
#: Returns {1, now_ms, count, pttl, count, pttl, ...} or {0, now_ms, index of the refusing limit, count, pttl}.
_HIT_ALL = """
local cost = tonumber(ARGV[1])
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = #KEYS
for i = 1, n do
  local current = tonumber(redis.call('get', KEYS[i]) or '0')
  if current + cost > tonumber(ARGV[1 + i]) then
    return {0, now, i, current, redis.call('pttl', KEYS[i])}
  end
end
local out = {1, now}
for i = 1, n do
  local current = redis.call('incrby', KEYS[i], cost)
  if current == cost then
    redis.call('expire', KEYS[i], ARGV[1 + n + i])
  end
  out[#out + 1] = current
  out[#out + 1] = redis.call('pttl', KEYS[i])
end
return out
"""

#: Give a request's cost back to the windows it was counted in, only where
#: that window is still open (never into one that opened since), never below
#: 0. KEYS: the limits' keys; ARGV: cost, the hit's time (ms, Redis's
#: clock), then the windows' lengths (s).
_REFUND = """
local cost = tonumber(ARGV[1])
local at = tonumber(ARGV[2])
local t = redis.call('time')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #KEYS do
  local pttl = redis.call('pttl', KEYS[i])
  if pttl > 0 and now + pttl - tonumber(ARGV[2 + i]) * 1000 <= at + 2 then
    local current = tonumber(redis.call('get', KEYS[i]) or '0')
    redis.call('decrby', KEYS[i], math.min(cost, current))
  end
end
return 1
"""


def _script(client: Any, source: bytes) -> Any:
    """A Lua script of ``client``: redis-py's, called lean (:mod:`.redis_script`); valkey's, as it comes."""
    try:
        from .redis_script import LeanScript  # (redis is an extra: imported only when used)
    except ImportError:  # valkey:// without redis-py installed
        return client.register_script(source)
    return LeanScript(client, source)


class QuotaEnforcer:
    """Hits an account's limits in a ``limits`` storage and reports the result."""

    def __init__(
        self,
        storage_uri: str = "memory://",
        *,
        tiers: Mapping[str, str | Iterable[str]] | None = None,
        default_tier: str | None = None,
        strategy: str = "fixed-window",
        namespace: str = "modelguard",
        fail_mode: str = "open",
        retry_interval: float = 5.0,
        storage_options: Mapping[str, object] | None = None,
    ) -> None:
        if fail_mode not in FAIL_MODES:
            raise InvalidValue(f"fail mode must be 'open' or 'closed', not {fail_mode!r}")
        if strategy not in STRATEGIES:
            raise InvalidValue(f"Unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
        self.tiers = {name: _normalise_tier(spec) for name, spec in (tiers or DEFAULT_TIERS).items()}
        for spec in self.tiers.values():
            parse_limits(spec)  # fail at start-up, not on the first request
        self.default_tier = default_tier or next(iter(self.tiers))
        self.check_tier(self.default_tier)
        self._unknown_tiers: set[str] = set()
        # Backend errors arrive as limits' StorageError, translated in hit().
        # limits types options as float | str | bool, but storages take others (the simulated clock).
        options = dict(storage_options or {})
        if storage_uri.startswith(("redis", "rediss")):  # a hung Redis must not hang requests
            options.setdefault("socket_timeout", REDIS_TIMEOUT)
            options.setdefault("socket_connect_timeout", REDIS_TIMEOUT)
        storage = storage_from_string(storage_uri, wrap_exceptions=True, **options)  # type: ignore[arg-type]
        assert isinstance(storage, Storage)  # not async (as the RateLimiter below asserts)
        self.storage: Storage = storage
        self.limiter: RateLimiter = STRATEGIES[strategy](self.storage)
        #: The clock of the storage's windows (``time.time`` but for simulated storage).
        self.clock: Callable[[], float] = getattr(self.storage, "clock", time.time)
        self._fixed_window = strategy == "fixed-window"
        self._script: Any = None  # the Redis scripts of the exact fixed window (_HIT_ALL, _REFUND)
        self._refund_script: Any = None
        if self._fixed_window and isinstance(storage, RedisStorage) and not isinstance(storage, RedisClusterStorage):
            self._script, self._refund_script = (_script(storage.get_connection(), source.encode())
                                                 for source in (_HIT_ALL, _REFUND))
        #: In-process storages: a refused request's count is taken back under
        #: the lock of its account's stripe, before another request can see it.
        local = isinstance(storage, MemoryStorage) or getattr(storage, "STORAGE_SCHEME", None) == ["simulated"]
        #: In-process fixed windows: every limit tested and counted under one
        #: lock, no timer thread (``limits``' memory storage starts one every few requests).
        self._windows = LocalWindows(self.clock) if local and self._fixed_window else None
        if self._windows is not None:
            lifecycle.after_fork(self._windows.reset_in_child)
        self._key_cache: dict[tuple[int | str, LimitSet], tuple[str, ...]] = {}
        self._prefixed: dict[tuple[int | str, LimitSet], tuple[str, ...]] = {}
        self.namespace = namespace
        self.fail_mode = fail_mode
        self.retry_interval = retry_interval
        self._down_until = 0.0
        self._lock = threading.Lock()
        #: Requests served or refused while the storage was unreachable.
        self.storage_errors = 0

    # -- configuration ----------------------------------------------------------

    def check_tier(self, tier: str) -> None:
        if tier not in self.tiers:
            raise InvalidValue(f"Unknown tier {tier!r}; known: {', '.join(self.tiers)}")

    def limits_for(self, tier: str, override: str | None = None) -> LimitSet:
        """The limits of an account: its override if it has one, else its tier's
        (an account on a tier no longer configured gets the default tier's)."""
        if override is not None:
            return limit_set(override)
        spec = self.tiers.get(tier)
        if spec is None:
            if tier not in self._unknown_tiers:
                self._unknown_tiers.add(tier)
                log.warning("modelguard: tier %r is not configured; using %r", tier, self.default_tier)
            spec = self.tiers[self.default_tier]
        return limit_set(spec)

    # -- the request path -------------------------------------------------------

    @property
    def storage_down(self) -> bool:
        return time.monotonic() < self._down_until

    def _storage_failed(self, exc: BaseException) -> Verdict:
        with self._lock:
            self.storage_errors += 1
            first = not self.storage_down
            self._down_until = time.monotonic() + self.retry_interval
        if first:
            log.warning(
                "modelguard: rate-limit storage unreachable (%s); failing %s, retrying in %.0fs",
                exc, self.fail_mode, self.retry_interval,
            )
        return self._degraded()

    def _degraded(self) -> Verdict:
        if self.fail_mode == "open":
            return Verdict(True, failed_open=True)
        return Verdict(False, unavailable=True, reset=time.time() + self.retry_interval)

    def hit(self, account_id: int | str, limits: LimitSet, cost: int = 1) -> Verdict:
        """Consume ``cost`` from every limit; stop at the first that refuses. ``account_id``
        may be scoped, ``"7@predict"``: a route's own limits for account 7."""
        if not limits.items:
            return Verdict(True)
        if self._down_until and self.storage_down:
            with self._lock:
                self.storage_errors += 1
            return self._degraded()
        try:
            if self._fixed_window:
                verdict = self._hit_fixed_window(account_id, limits, cost)
            else:
                verdict = self._hit_strategy(account_id, limits, cost)
        except StorageError as exc:
            return self._storage_failed(exc.storage_error)
        if self._down_until:
            self._down_until = 0.0
            log.warning("modelguard: rate-limit storage reachable again")
        return verdict

    def _keys(self, account_id: int | str, limits: LimitSet) -> tuple[str, ...]:
        """Storage keys of an account's limits, cached (``key_for`` costs µs per call)."""
        keys = self._key_cache.get((account_id, limits))
        if keys is None:
            if len(self._key_cache) > 100_000:
                self._key_cache.clear()
            ident = (self.namespace, str(account_id))
            keys = self._key_cache[(account_id, limits)] = tuple(i.key_for(*ident) for i in limits.items)
        return keys

    def _script_keys(self, account_id: int | str, limits: LimitSet) -> tuple[str, ...]:
        """The keys as the Redis scripts take them: prefixed as the storage prefixes its own, cached."""
        found = self._prefixed.get((account_id, limits))
        if found is None:
            if len(self._prefixed) > 100_000:
                self._prefixed.clear()
            prefixed = self.storage.prefixed_key  # type: ignore[attr-defined]
            found = self._prefixed[(account_id, limits)] = tuple(prefixed(k) for k in self._keys(account_id, limits))
        return found

    def _hit_fixed_window(self, account_id: int | str, limits: LimitSet, cost: int) -> Verdict:
        # The fixed-window strategy's own hit() is ``storage.incr(key) <= amount``
        # per limit; calling the storage directly also yields the count, so the
        # headers need one expiry read for the binding limit, not a get and a
        # get_expiry per limit.
        if self._script is not None:
            return self._hit_redis(limits.items, self._script_keys(account_id, limits), cost)
        keys = self._keys(account_id, limits)
        if self._windows is not None:
            return self._windows.hit(limits.items, keys, cost)
        return self._hit_counting(limits.items, keys, cost)

    def _hit_counting(self, items: tuple[RateLimitItem, ...], keys: tuple[str, ...], cost: int) -> Verdict:
        """Count in each limit, shortest first; a refusal takes the counts back."""
        storage = self.storage
        best_item, best_key, best_remaining = None, "", 0
        for n, (item, key) in enumerate(zip(items, keys)):
            remaining = item.amount - storage.incr(key, item.get_expiry(), amount=cost)
            if remaining < 0:
                for refund_item, refund_key in zip(items[: n + 1], keys[: n + 1]):
                    self._refund(refund_key, refund_item, cost)
                return Verdict(False, item, max(0, remaining + cost), storage.get_expiry(key), at=self.clock())
            if best_item is None or remaining < best_remaining:
                best_item, best_key, best_remaining = item, key, remaining
        return Verdict(True, best_item, best_remaining, storage.get_expiry(best_key), at=self.clock())

    def _refund(self, key: str, item: RateLimitItem, cost: int) -> None:
        decr = getattr(self.storage, "decr", None)
        if decr is not None:  # never below 0, never a new window
            decr(key, cost)
        else:
            self.storage.incr(key, item.get_expiry(), amount=-cost)

    def _hit_redis(self, items: tuple[RateLimitItem, ...], keys: tuple[str, ...], cost: int) -> Verdict:
        """:data:`_HIT_ALL` in one round trip."""
        storage = self.storage
        assert isinstance(storage, RedisStorage)
        args = [cost, *(i.amount for i in items), *(i.get_expiry() for i in items)]
        try:
            out = self._script(keys=keys, args=args)
        except storage.base_exceptions as exc:
            raise StorageError(exc) from exc
        now = int(out[1]) / 1000.0  # Redis's clock: resets are where Redis will expire the windows
        if not out[0]:
            item = items[int(out[2]) - 1]
            return Verdict(False, item, max(0, item.amount - int(out[3])), now + max(0, int(out[4])) / 1000.0, at=now)
        best: Verdict | None = None
        for n, item in enumerate(items):
            remaining = item.amount - int(out[2 + 2 * n])
            if best is None or remaining < best.remaining:
                best = Verdict(True, item, remaining, now + max(0, int(out[3 + 2 * n])) / 1000.0, at=now)
        assert best is not None
        return best

    def refund(self, account_id: int | str, limits: LimitSet, cost: int, verdict: Verdict) -> bool:
        """Give back what an admitted request was counted (the view refused
        it: a 4xx), in the windows it was counted in that are still open.
        Only the fixed window can; False where nothing was given back."""
        if not (self._fixed_window and verdict.allowed and limits.items) or verdict.failed_open or self.storage_down:
            return False
        keys = self._script_keys(account_id, limits) if self._script is not None else self._keys(account_id, limits)
        try:
            if self._script is not None:
                storage = self.storage
                assert isinstance(storage, RedisStorage)
                args = [cost, int(verdict.at * 1000), *(i.get_expiry() for i in limits.items)]
                try:
                    self._refund_script(keys=keys, args=args)
                except storage.base_exceptions as exc:
                    raise StorageError(exc) from exc
                return True
            if self._windows is None:
                return False  # a refund there could land in a window that opened since
            self._windows.refund(limits.items, keys, cost, verdict.at)
            return True
        except StorageError as exc:
            self._storage_failed(exc.storage_error)
            return False

    def _hit_strategy(self, account_id: int | str, limits: LimitSet, cost: int) -> Verdict:
        # These strategies have no refund: test every limit first, so a refused
        # request consumes nothing (a race between test and hit can still
        # count a refused request in the limits hit before the refusing one).
        ident = (self.namespace, str(account_id))
        limiter = self.limiter
        for item in limits.items:
            if not limiter.test(item, *ident, cost=cost):
                reset, remaining = limiter.get_window_stats(item, *ident)
                return Verdict(False, item, max(0, remaining), reset)
        for item in limits.items:
            if not limiter.hit(item, *ident, cost=cost):
                reset, remaining = limiter.get_window_stats(item, *ident)
                return Verdict(False, item, max(0, remaining), reset)
        best = Verdict(False)
        for item in limits.items:
            reset, remaining = limiter.get_window_stats(item, *ident)
            if best.limit is None or remaining < best.remaining:
                best = Verdict(True, item, max(0, remaining), reset)
        return best

    def usage(self, account_id: int, limits: LimitSet) -> list[tuple[RateLimitItem, int]]:
        """How much of each limit the account used in its current window (for
        the dashboard); all 0 when the storage is unreachable. Counts nothing."""
        if not limits.items:
            return []
        if self.storage_down:
            return [(item, 0) for item in limits.items]
        try:
            if self._windows is not None:
                counts = self._windows.counts(self._keys(account_id, limits))
            elif self._fixed_window:  # the count itself: one storage read per limit
                counts = [int(self.storage.get(key)) for key in self._keys(account_id, limits)]
            else:
                ident = (self.namespace, str(account_id))
                counts = [item.amount - int(self.limiter.get_window_stats(item, *ident)[1]) for item in limits.items]
        except StorageError:
            return [(item, 0) for item in limits.items]
        return [(item, max(0, count)) for item, count in zip(limits.items, counts)]

    def reset_account(self, account_id: int, limits: LimitSet) -> None:
        """Forget an account's counters (an operator lifting a quota)."""
        if self._windows is not None:
            self._windows.clear(self._keys(account_id, limits))
            return
        for item in limits.items:
            self.limiter.clear(item, self.namespace, str(account_id))

    # -- headers ----------------------------------------------------------------
