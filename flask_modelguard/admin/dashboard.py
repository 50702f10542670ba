"""The admin dashboard: server-rendered pages under ``MODELGUARD_ADMIN_PREFIX``
(default ``/modelguard/``): an overview over time, the accounts, an account's
console, the alerts, and every action an operator needs.

The blueprint, sign-in and CSRF are :mod:`.session`; the pages (GET)
:mod:`.pages`; the actions (POST, audited) :mod:`.actions`; the SQL behind
the charts :mod:`.traffic` and the SVG :mod:`.charts`.
"""

from __future__ import annotations

from . import actions, pages  # noqa: F401  (their routes join the blueprint)
from .session import dashboard

__all__ = ["dashboard"]
