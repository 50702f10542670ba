"""Signals (blinker), for alerting and auditing code of the application.
Every signal's ``sender`` is the Flask app.

``account_flagged`` is sent from the worker thread when an account is flagged
(by the detectors or a canary), with ``sender`` the Flask app and the keyword
arguments ``account_id``, ``reason`` (text) and ``action`` (``"canary"`` or
the configured ``MODELGUARD_ACTION``). Receivers run outside any request and
app context; an exception in one is logged and does not stop the worker.

    from flask_modelguard.signals import account_flagged

    @account_flagged.connect_via(app)
    def page_someone(app, account_id, reason, action):
        ...

``account_blocked`` is sent when an account becomes blocked: by the detectors
(``MODELGUARD_ACTION = "block"``, from the worker, ``by="detectors"``) or by
an operator (``guard.update_account(name, status="blocked")``, which the admin
API, the dashboard and ``flask modelguard block`` call, ``by="operator"``),
with ``account_id``, ``account`` (its name, or None) and ``reason``.

``quota_exceeded`` is sent from the request thread when a request is refused
with 429, with ``account_id``, ``limit`` (e.g. ``"100 per 1 minute"``) and
``cost``; it is sent only when someone listens (no cost otherwise), and a
receiver that raises is logged, never turned into an error for the client.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace

log = logging.getLogger("flask_modelguard")

_signals = Namespace()

account_flagged = _signals.signal("modelguard-account-flagged")
account_blocked = _signals.signal("modelguard-account-blocked")
quota_exceeded = _signals.signal("modelguard-quota-exceeded")


def send(signal: Any, app: Any, **kwargs: Any) -> None:
    """Send ``signal`` for ``app`` (None: nobody to tell), each receiver on its
    own: one that fails is logged and does not silence the others."""
    if app is None:
        return
    for receiver in signal.receivers_for(app):
        try:
            receiver(app, **kwargs)
        except Exception:
            log.exception("modelguard: a %s receiver failed", signal.name)
