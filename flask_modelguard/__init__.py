"""flask_modelguard: protect machine-learning prediction APIs against model stealing."""

from .config import Settings
from .events import QueryEvent, fingerprint
from .exc import (
    AccountBlocked,
    AccountSuspended,
    BadRequest,
    DatabaseUnavailable,
    ExpiredKey,
    InvalidKey,
    InvalidValue,
    MalformedKey,
    MissingKey,
    ModelGuardError,
    NotFound,
    Problem,
    RateLimitExceeded,
    RevokedKey,
    StorageUnavailable,
)
from .extension import ModelGuard, RouteOptions, problem_response, protect
from .quotas import DEFAULT_TIERS, QuotaEnforcer, Verdict
from .signals import account_flagged
from .worker import EventWorker

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIERS",
    "AccountBlocked",
    "AccountSuspended",
    "BadRequest",
    "DatabaseUnavailable",
    "EventWorker",
    "ExpiredKey",
    "InvalidKey",
    "InvalidValue",
    "MalformedKey",
    "MissingKey",
    "ModelGuard",
    "ModelGuardError",
    "NotFound",
    "Problem",
    "QueryEvent",
    "QuotaEnforcer",
    "RateLimitExceeded",
    "RevokedKey",
    "RouteOptions",
    "Settings",
    "StorageUnavailable",
    "Verdict",
    "account_flagged",
    "fingerprint",
    "problem_response",
    "protect",
]
