"""Limit definitions, framework-free: tiers and limit strings parsed once, the
verdict of hitting them, and the rate-limit headers that show it
(``RateLimit-Policy`` / ``RateLimit``, IETF httpapi draft, and the classic
``X-RateLimit-*``)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from limits import RateLimitItem, parse_many

from .exc import InvalidValue

#: Tiers used when the application configures none.
DEFAULT_TIERS: dict[str, str] = {
    "free": "10/second;1000/hour;10000/day",
    "pro": "100/second;100000/hour;1000000/day",
    "unlimited": "",
}

#: What happens when the limits' storage is unreachable: let requests through, or refuse them (503).
FAIL_MODES = ("open", "closed")


@lru_cache(maxsize=1024)
def parse_limits(spec: str) -> tuple[RateLimitItem, ...]:
    """Parse ``"10/second;1000/hour"`` (``;`` or ``,`` separated), shortest window first."""
    spec = spec.strip()
    if not spec:
        return ()
    try:
        items = parse_many(spec.replace(",", ";"))
    except ValueError as exc:
        raise InvalidValue(f"Invalid limit string {spec!r}: {exc}") from None
    return tuple(sorted(items, key=lambda item: item.get_expiry()))


@dataclass(frozen=True, eq=False)
class LimitSet:
    """The limits of an account, parsed once per distinct spec, with what the
    request path derives from them precomputed. Hashed by identity (cheap)."""

    spec: str
    items: tuple[RateLimitItem, ...]
    #: ``RateLimit-Policy`` header value (IETF httpapi draft).
    policy: str
    #: The largest cost a request can have (None: no limits).
    max_cost: int | None

    def __bool__(self) -> bool:
        return bool(self.items)


@lru_cache(maxsize=1024)
def limit_set(spec: str) -> LimitSet:
    """The :class:`LimitSet` of a limit string (same object for the same string)."""
    items = parse_limits(spec)
    policy = ", ".join(f'"{policy_name(i)}";q={i.amount};w={i.get_expiry()}' for i in items)
    return LimitSet(spec, items, policy, min((i.amount for i in items), default=None))


def _normalise_tier(spec: str | Iterable[str]) -> str:
    return spec if isinstance(spec, str) else ";".join(spec)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of hitting an account's limits once."""

    allowed: bool
    #: The limit that refused the request, or the one closest to refusing.
    limit: RateLimitItem | None = None
    remaining: int = 0
    reset: float = 0.0  # epoch seconds
    #: True when the storage was unreachable and the request was let through.
    failed_open: bool = False
    #: True when the storage was unreachable and the request must be refused.
    unavailable: bool = False
    #: When it was counted, on the storage's clock (what :meth:`QuotaEnforcer.refund` needs).
    at: float = 0.0


def policy_name(item: RateLimitItem) -> str:
    return f"{item.amount}/{item.multiples}{item.GRANULARITY.name}"


def rate_limit_headers(verdict: Verdict, limits: LimitSet, now: float) -> list[tuple[str, str]]:
    """Rate-limit headers for a response, in both the draft and the classic form."""
    item = verdict.limit
    if item is None:
        return []
    reset_in = max(0, math.ceil(verdict.reset - now))
    remaining = str(verdict.remaining)
    return [
        ("RateLimit-Policy", limits.policy),
        ("RateLimit", f'"{policy_name(item)}";r={remaining};t={reset_in}'),
        ("X-RateLimit-Limit", str(item.amount)),
        ("X-RateLimit-Remaining", remaining),
        ("X-RateLimit-Reset", str(math.ceil(verdict.reset))),
    ]
