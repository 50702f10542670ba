"""Which accounts a batch of query events flags, why, and what is done to them:
decided here, once. Framework-free.

The repository reads the facts this needs (``AccountFacts``) and writes what
it decides (``Catch``) in the transaction that stores the events; the
worker's alerting logs, signals and posts the same catches, so an alert, a log
line and a webhook always give the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: After an operator clears an account, the detectors need this many queries
#: of new evidence before they flag it again.
REVIEW_QUERIES = 100

#: The reason given for an account that sent a honey-trap (canary) input.
CANARY_REASON = "sent a canary input"

#: MODELGUARD_ACTION: what happens to an account the detectors find.
ACTIONS = ("observe", "degrade", "throttle", "block")


@dataclass(frozen=True)
class AccountFacts:
    """What the policy needs to know of an account from storage."""

    flagged: bool = False
    allowlisted: bool = False
    #: The account's query count when an operator last reviewed it (0: never).
    reviewed_queries: int = 0
    #: Already alerted in shadow mode.
    observed: bool = False


@dataclass(frozen=True)
class Catch:
    """One decision: alert on ``account_id`` for ``reason``, and unless this is
    a shadow-mode alert (``flag`` False), flag it and set ``columns``."""

    account_id: int
    action: str  # "canary", "observe", or the MODELGUARD_ACTION
    reason: str
    flag: bool = True
    columns: Mapping[str, Any] = field(default_factory=dict)


def _found(rows: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, str]]:
    """Accounts the detectors found in ``rows``: their latest evidence (query
    count) and the reasons of their first evaluation in the batch."""
    found: dict[int, tuple[int, str]] = {}
    for row in rows:
        evaluation = row.get("evaluation")
        if evaluation and evaluation["reasons"]:
            account_id, queries = int(evaluation["account_id"]), int(evaluation["queries"])
            latest, reason = found.get(account_id, (0, "; ".join(evaluation["reasons"])))
            found[account_id] = (max(latest, queries), reason)
    return found


class FlagPolicy:
    """MODELGUARD_ACTION as a decision over a batch of rows.

    A canary always flags (action ``canary``, no other change); an account
    the detectors find is flagged with the configured action's columns, unless
    an operator reviewed it less than :data:`REVIEW_QUERIES` queries ago; an
    allow-listed or already flagged account is left alone. In shadow mode
    (``observe``) a found account gets one alert and nothing else.
    """

    def __init__(self, action: str = "degrade", throttle_tier: str = "throttled") -> None:
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}: {action!r}")
        self.action = action
        self.columns: dict[str, Any] = {"throttle": {"tier": throttle_tier},
                                        "block": {"status": "blocked"}}.get(action, {})

    def suspects(self, rows: Sequence[Mapping[str, Any]]) -> set[int]:
        """The accounts whose facts :meth:`decide` needs (none: nothing to decide)."""
        return {int(row["account_id"]) for row in rows if row["canary"]} | set(_found(rows))

    def decide(self, rows: Sequence[Mapping[str, Any]], facts: Mapping[int, AccountFacts]) -> list[Catch]:
        """The catches of this batch, by account."""
        canaries = {int(row["account_id"]) for row in rows if row["canary"]}
        found = _found(rows)
        catches: list[Catch] = []
        if self.action == "observe":  # one alert per account, unless its canary says more
            catches = [Catch(a, "observe", reason, flag=False) for a, (_, reason) in sorted(found.items())
                       if not facts.get(a, AccountFacts()).observed and a not in canaries]
            found = {}
        due = self._due(found, facts)
        for account_id in sorted(canaries | due):
            known = facts.get(account_id, AccountFacts())
            if known.allowlisted or known.flagged:
                continue
            # A canary flags whatever the detectors say; when they found the account too, its action applies.
            columns = self.columns if account_id in due else {}
            if account_id in canaries:
                catches.append(Catch(account_id, "canary", CANARY_REASON, columns=columns))
            else:
                catches.append(Catch(account_id, self.action, found[account_id][1], columns=columns))
        return catches

    @staticmethod
    def _due(found: Mapping[int, tuple[int, str]], facts: Mapping[int, AccountFacts]) -> set[int]:
        """Found accounts with enough evidence since their last review."""
        due = set()
        for account_id, (queries, _) in found.items():
            reviewed = facts.get(account_id, AccountFacts()).reviewed_queries
            if queries >= reviewed + (REVIEW_QUERIES if reviewed else 0):
                due.add(account_id)
        return due
