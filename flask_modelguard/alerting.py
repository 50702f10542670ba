"""Telling people about catches: the log line, the metric, the webhook and
the signals for each account the flag policy caught, all with the reason it
gave. Framework-free (the app is only passed to signal receivers)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .alerts import Webhook
from .policy import Catch
from .signals import account_blocked, account_flagged, send

log = logging.getLogger("flask_modelguard")


class Alerter:
    """Announces catches; ``forget(account_id)`` drops what the request path
    cached of an account, so its next request sees the flag."""

    def __init__(self, account_name: Callable[[int], str | None], forget: Callable[[int], None],
                 app: Callable[[], Any], clock: Callable[[], float], webhook: Webhook | None = None,
                 telemetry: Any = None) -> None:
        self._account_name = account_name
        self._forget = forget
        self._app = app
        self.clock = clock
        self.webhook = webhook
        self.telemetry = telemetry

    def announce(self, catches: Sequence[Catch]) -> None:
        for catch in catches:
            self._announce(catch)

    def announce_group(self, catches: Sequence[Catch], reason: str) -> None:
        """A colluding group's catches: one log line and one webhook for the
        group, each member's metric, cache and signals."""
        if not catches:
            return
        action = catches[0].action
        what = "found as a colluding group (not acted on)" if action == "observe" else "flagged"
        members = [c.account_id for c in catches]
        log.warning("modelguard: accounts %s %s (%s): %s", ", ".join(map(str, members)), what, action, reason,
                    extra={"modelguard_accounts": members, "modelguard_action": action})
        if self.webhook is not None:
            self.webhook.send({"event": "group_flagged", "account_ids": members,
                               "accounts": [self._name(a) for a in members], "action": action, "reason": reason,
                               "ts": self.clock()})
        for catch in catches:
            self._announce(catch, alone=False)

    def _announce(self, catch: Catch, alone: bool = True) -> None:
        account_id, action, reason = catch.account_id, catch.action, catch.reason
        if self.telemetry is not None:
            self.telemetry.flagged(action)
        what = "found by the detectors (shadow mode, not acted on)" if action == "observe" else "flagged"
        if alone:
            log.warning("modelguard: account %d %s (%s): %s", account_id, what, action, reason,
                        extra={"modelguard_account": account_id, "modelguard_action": action})
        self._forget(account_id)
        blocked = catch.columns.get("status") == "blocked"
        name = self._name(account_id) if self.webhook is not None or blocked else None
        if self.webhook is not None and alone:
            self.webhook.send({"event": "account_flagged", "account_id": account_id, "account": name,
                               "action": action, "reason": reason, "ts": self.clock()})
        app = self._app()
        send(account_flagged, app, account_id=account_id, reason=reason, action=action)
        if blocked:
            send(account_blocked, app, account_id=account_id, account=name, reason=reason, by="detectors")

    def _name(self, account_id: int) -> str | None:
        try:
            return self._account_name(account_id)
        except SQLAlchemyError:
            return None
