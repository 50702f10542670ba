"""policy.py: which accounts a batch flags, why and with which action, decided once."""

from __future__ import annotations

from typing import Any

import pytest

from flask_modelguard.policy import CANARY_REASON, REVIEW_QUERIES, AccountFacts, FlagPolicy


def _row(account_id: int, queries: int = 0, reasons: tuple[str, ...] = (), canary: bool = False) -> dict[str, Any]:
    evaluation = {"account_id": account_id, "queries": queries, "reasons": list(reasons)} if queries else None
    return {"account_id": account_id, "canary": canary, "evaluation": evaluation}


def test_detected_accounts_get_the_action_and_the_first_reason() -> None:
    policy = FlagPolicy("block")
    rows = [_row(1, 30, ("ADD 30 > 20",)), _row(1, 40, ("PRADA W=0.8 < 0.9",)), _row(2, 30)]
    assert policy.suspects(rows) == {1}
    (catch,) = policy.decide(rows, {1: AccountFacts()})
    assert (catch.account_id, catch.action, catch.reason, catch.flag) == (1, "block", "ADD 30 > 20", True)
    assert catch.columns == {"status": "blocked"}
    assert FlagPolicy("throttle", "slow").columns == {"tier": "slow"} and FlagPolicy().columns == {}


def test_a_canary_flags_alone_and_also_applies_the_action_when_the_detectors_found_it() -> None:
    policy = FlagPolicy("block")
    (alone,) = policy.decide([_row(3, canary=True)], {})
    assert (alone.action, alone.reason, dict(alone.columns)) == ("canary", CANARY_REASON, {})
    (both,) = policy.decide([_row(3, canary=True), _row(3, 50, ("ADD 30 > 20",))], {3: AccountFacts()})
    assert (both.action, both.reason, dict(both.columns)) == ("canary", CANARY_REASON, {"status": "blocked"})


def test_allow_listed_and_already_flagged_accounts_are_left_alone() -> None:
    rows = [_row(1, 30, ("x",)), _row(2, 30, ("y",), canary=True)]
    facts = {1: AccountFacts(allowlisted=True), 2: AccountFacts(flagged=True)}
    assert FlagPolicy().decide(rows, facts) == []


@pytest.mark.parametrize("reviewed, queries, flagged", [
    (0, 20, True),  # never reviewed: at once
    (200, 250, False),  # reviewed at 200: not before 100 more queries ...
    (200, 200 + REVIEW_QUERIES, True),  # ... and then again
])
def test_a_review_stands_until_enough_new_evidence(reviewed: int, queries: int, flagged: bool) -> None:
    catches = FlagPolicy().decide([_row(1, queries, ("x",))], {1: AccountFacts(reviewed_queries=reviewed)})
    assert bool(catches) is flagged


def test_shadow_mode_alerts_once_and_a_canary_still_flags_once() -> None:
    policy = FlagPolicy("observe")
    (catch,) = policy.decide([_row(1, 30, ("ADD 30 > 20",))], {1: AccountFacts()})
    assert (catch.action, catch.flag, dict(catch.columns)) == ("observe", False, {})
    assert policy.decide([_row(1, 40, ("ADD",))], {1: AccountFacts(observed=True)}) == []
    (canary,) = policy.decide([_row(2, canary=True), _row(2, 30, ("ADD",))], {2: AccountFacts()})
    assert (canary.action, canary.flag) == ("canary", True)  # one announcement, not an observe one as well


def test_an_unknown_action_is_refused() -> None:
    with pytest.raises(ValueError, match="action must be one of"):
        FlagPolicy("shout")
