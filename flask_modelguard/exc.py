"""Exceptions. Every error a client can see is a :class:`Problem`, rendered as
RFC 9457 ``application/problem+json``; operator errors (CLI, API misuse) are
plain :class:`ModelGuardError` subclasses."""

from __future__ import annotations

from typing import Any, ClassVar

#: Base of the ``type`` URIs of the problems this library reports.
PROBLEM_BASE = "https://flask-modelguard.dev/problems/"


class ModelGuardError(Exception):
    """Base class of every exception raised by flask_modelguard."""


class NotFound(ModelGuardError, LookupError):
    """An account or key named by an operator does not exist."""


class InvalidValue(ModelGuardError, ValueError):
    """An operator passed a value that cannot be used (bad tier, bad limit string...)."""


class Problem(ModelGuardError):
    """An HTTP error for the client, as an RFC 9457 problem detail.

    Subclasses set ``status``, ``slug`` (last part of the ``type`` URI) and
    ``title``; instances carry a ``detail`` and optional extension members and
    response headers.
    """

    status: ClassVar[int] = 400
    slug: ClassVar[str] = "bad-request"
    title: ClassVar[str] = "Bad request"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions
        #: The authenticated key's principal, when the refusal concerns a known account.
        self.principal: Any = None

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_dict(self) -> dict[str, Any]:
        body = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        body.update(self.extensions)
        return body


class BadRequest(Problem):
    status, slug, title = 400, "bad-request", "Bad request"


class MissingKey(Problem):
    status, slug, title = 401, "missing-api-key", "API key required"


class MalformedKey(Problem):
    status, slug, title = 401, "malformed-api-key", "Malformed API key"


class InvalidKey(Problem):
    status, slug, title = 401, "invalid-api-key", "Invalid API key"


class ExpiredKey(Problem):
    status, slug, title = 401, "expired-api-key", "API key expired"


class RevokedKey(Problem):
    status, slug, title = 403, "revoked-api-key", "API key revoked"


class AccountSuspended(Problem):
    status, slug, title = 403, "account-suspended", "Account suspended"


class AccountBlocked(Problem):
    status, slug, title = 403, "account-blocked", "Account blocked"


class CostExceedsLimit(Problem):
    status, slug, title = 413, "cost-exceeds-limit", "Request exceeds the account's limit"


class AnswerWithheld(Problem):
    status, slug, title = 502, "answer-withheld", "Answer withheld"


class RateLimitExceeded(Problem):
    status, slug, title = 429, "rate-limit-exceeded", "Rate limit exceeded"


class StorageUnavailable(Problem):
    status, slug, title = 503, "limits-storage-unavailable", "Service unavailable"


class DatabaseUnavailable(Problem):
    status, slug, title = 503, "database-unavailable", "Service unavailable"


class PayloadTooLarge(Problem):
    status, slug, title = 413, "payload-too-large", "Request body too large"


class HTTPProblem(Problem):
    """A werkzeug ``HTTPException`` raised by a protected view, as a problem."""

    def __init__(self, status: int, title: str, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.status = status  # type: ignore[misc]
        self.title = title  # type: ignore[misc]
        self.slug = title.lower().replace(" ", "-").replace("'", "")  # type: ignore[misc]


class AdminAuthRequired(Problem):
    status, slug, title = 401, "admin-auth-required", "Admin credential required"


class AdminForbidden(Problem):
    status, slug, title = 403, "admin-forbidden", "Not allowed"


class ResourceNotFound(Problem):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(Problem):
    status, slug, title = 409, "conflict", "Conflict"


class AlreadyExists(InvalidValue):
    """An operator tried to create something (an account, an admin token)
    under a name that is taken. The admin API answers it with 409."""
