"""The admin surface: a JSON API (``api``) with its OpenAPI document, a
server-rendered dashboard (``dashboard``), admin tokens, alerts and the audit
log (``store``), and the admin commands of ``flask modelguard`` (``cli``)."""

from .store import AdminStore

__all__ = ["AdminStore"]
