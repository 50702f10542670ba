"""Signals (blinker), for alerting and auditing code of the application.

``account_flagged`` is sent from the worker thread when an account is flagged
(by the detectors or a canary), with ``sender`` the Flask app and the keyword
arguments ``account_id``, ``reason`` (text) and ``action`` (``"canary"`` or
the configured ``MODELGUARD_ACTION``). Receivers run outside any request and
app context; an exception in one is logged and does not stop the worker.

    from flask_modelguard.signals import account_flagged

    @account_flagged.connect_via(app)
    def page_someone(app, account_id, reason, action):
        ...
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

account_flagged = _signals.signal("modelguard-account-flagged")
