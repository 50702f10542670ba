"""The admin service under the API, the dashboard and the CLI, on SQLite and
PostgreSQL: each action writes one audit entry naming its actor (a refused
one none), refusals are typed exceptions, and accounts are filtered, sorted
and paged in SQL exactly as a reference implementation in Python would."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event, insert

from flask_modelguard import models as m
from flask_modelguard.admin.service import AdminService
from flask_modelguard.exc import AlreadyExists, InvalidValue, NotFound


@pytest.fixture
def setup(make_guarded: Any) -> Iterator[tuple[Any, AdminService]]:
    g = make_guarded()
    with g.app.app_context():
        yield g, AdminService.of(g.guard.state(g.app))


def audit_log(service: AdminService) -> list[dict[str, Any]]:
    """Every audit entry, oldest first."""
    entries, _ = service.store.audit_entries(limit=10_000)
    return entries[::-1]


def evaluate(service: AdminService, name: str, ts: float, reasons: list[str], score: float = 0.5) -> None:
    """Record a detector evaluation of ``name`` (what the worker writes)."""
    account_id = service.repository.get_account(name)["id"]
    with service.repository.engine.begin() as conn:
        conn.execute(insert(m.scores).values(account_id=account_id, ts=ts, queries=int(ts), reasons=reasons,
                                             scores={"malicious": score}))


def test_every_action_writes_one_audit_entry_with_its_actor(setup):
    g, service = setup
    made: dict[str, str] = {}
    steps = [
        ("create-account", "acme", lambda: service.create_account("ann", "acme", tier="pro")),
        ("update-account", "acme", lambda: service.update_account("bob", "acme", status="blocked", limits="5/minute")),
        ("update-account", "acme", lambda: service.update_account("bob", "acme", allowlisted=True)),
        ("issue-key", "acme", lambda: service.issue_key("cy", "acme")),
        ("create-admin-token", "ops", lambda: made.setdefault("token", service.create_admin_token("cli:root", "ops"))),
        ("dashboard-login", "ops", lambda: service.sign_in("ops", made["token"].split("_")[1])),
        ("add-canaries", None, lambda: service.add_canaries("dee", [[1.0, 2.0]], note="trap")),
        ("revoke-admin-token", "ops", lambda: service.revoke_admin_token("cli:root", "ops")),
    ]
    for action, target, run in steps:
        before = len(audit_log(service))
        run()
        entries = audit_log(service)[before:]
        assert [(e["action"], e["target"]) for e in entries] == [(action, target)], action
    entries = audit_log(service)
    assert [e["actor"] for e in entries] == ["ann", "bob", "bob", "cy", "cli:root", "ops", "dee", "cli:root"]
    changed = entries[1]
    assert changed["before"] == {"status": "active", "limits": None}
    assert changed["after"] == {"status": "blocked", "limits": "5/minute"}
    assert entries[2]["after"] == {"allowlisted": True}  # only what was asked, though the flag is cleared too


def test_keys_alerts_and_exports_are_audited_once_without_secrets(setup):
    g, service = setup
    service.create_account("ann", "acme")
    first = service.issue_key("ann", "acme")
    rotated = service.rotate_key("bob", first.token, grace=0)  # a whole key is accepted ...
    assert (rotated.account, rotated.replaces, rotated.grace) == ("acme", first.prefix, 0.0)
    revoked = service.revoke_key("cy", rotated.token)
    assert revoked["prefix"] == rotated.prefix and revoked["revoked_at"] is not None
    account_id = service.repository.get_account("acme")["id"]
    with service.repository.engine.begin() as conn:
        conn.execute(insert(m.alerts).values(account_id=account_id, ts=1.0, action="canary", reason="r"))
    alert_id = service.store.alerts()[0][0]["id"]
    assert service.acknowledge_alert("dee", alert_id)["changed"]
    assert not service.acknowledge_alert("eve", alert_id)["changed"]  # still audited: someone tried
    rows = service.export_events("fay", "acme", since=10.0)
    assert list(rows) == []
    entries = audit_log(service)[1:]  # after create-account
    assert [(e["actor"], e["action"], e["target"]) for e in entries] == [
        ("ann", "issue-key", "acme"), ("bob", "rotate-key", first.prefix), ("cy", "revoke-key", rotated.prefix),
        ("dee", "acknowledge-alert", str(alert_id)), ("eve", "acknowledge-alert", str(alert_id)),
        ("fay", "export-events", "acme")]
    assert entries[1]["after"] == {"prefix": rotated.prefix, "grace": 0.0}
    assert entries[3]["after"] == {"acknowledged_by": "dee", "changed": True}
    assert entries[5]["after"] == {"format": "jsonl", "since": 10.0, "until": None}
    text = repr(entries)
    assert first.token.rsplit("_", 1)[1] not in text and rotated.token.rsplit("_", 1)[1] not in text


def test_refusals_are_typed_and_write_no_audit_entry(setup):
    g, service = setup
    service.create_account("ann", "acme")
    service.create_admin_token("ann", "ops")
    before = len(audit_log(service))
    with pytest.raises(AlreadyExists, match="already exists"):
        service.create_account("bob", "acme")
    with pytest.raises(AlreadyExists, match="already exists"):
        service.create_admin_token("bob", "ops")
    assert issubclass(AlreadyExists, InvalidValue)  # callers catching InvalidValue keep working
    for bad in ({"tier": "gold"}, {"limits": "often"}):
        with pytest.raises(InvalidValue) as refused:
            service.create_account("bob", "other", **bad)
        assert not isinstance(refused.value, AlreadyExists)
    with pytest.raises(InvalidValue) as refused:
        service.create_account("bob", "x/keys")
    assert not isinstance(refused.value, AlreadyExists)
    with pytest.raises(NotFound):
        service.update_account("bob", "nobody", status="blocked")
    with pytest.raises(InvalidValue, match="status must be one of"):
        service.update_account("bob", "acme", status="sleeping")
    with pytest.raises(InvalidValue, match="Give at least one of"):
        service.update_account("bob", "acme", colour="red")
    with pytest.raises(InvalidValue, match="flagged must be true or false"):
        service.update_account("bob", "acme", flagged="yes")
    with pytest.raises(NotFound):
        service.issue_key("bob", "nobody")
    with pytest.raises(NotFound):
        service.rotate_key("bob", "zzzzzzzzzz")
    with pytest.raises(NotFound, match="API keys look like"):
        service.rotate_key("bob", "mg_bad")
    key = service.issue_key("bob", "acme")
    for grace in (-1, float("nan"), True, 10**9):
        with pytest.raises(InvalidValue, match="grace must be"):
            service.rotate_key("bob", key.prefix, grace)
    with pytest.raises(NotFound):
        service.acknowledge_alert("bob", 12345)
    with pytest.raises(NotFound):
        service.revoke_admin_token("bob", "nobody")
    with pytest.raises(InvalidValue, match="predictions must list 0 labels"):
        service.verify_watermark("bob", "acme", predictions=[1, 2])
    with pytest.raises(InvalidValue, match="sort must be one of"):
        service.accounts(sort="colour")
    entries = audit_log(service)[before:]
    assert [e["action"] for e in entries] == ["issue-key"]  # the one that was done


#: (name, tier, status, flagged, score, created second): mixed case, accents,
#: LIKE's wildcards and ties, to catch collation, escaping and tie-breaking.
ACCOUNTS = [
    ("alpha", "free", "active", False, 0.5, 0),
    ("Zed", "pro", "blocked", True, 0.9, 1),
    ("beta", "free", "suspended", True, 0.5, 2),
    ("Émile", "pro", "active", False, 0.0, 3),
    ("100%_sure", "unlimited", "active", False, 0.5, 4),
    ("1000 sure", "free", "blocked", False, 0.2, 5),
    ("gamma", "free", "active", True, 0.0, 6),
    ("Alpha2", "pro", "active", False, 0.9, 7),
]


def expected(rows: list[dict[str, Any]], *, status: str | None = None, flagged: bool | None = None,
             tier: str | None = None, search: str | None = None, sort: str = "score") -> list[str]:
    """The names the listing should give, in order, computed in Python."""
    kept = [r for r in rows if (status is None or r["status"] == status) and (flagged is None or r["flagged"] == flagged)
            and (tier is None or r["tier"] == tier) and (not search or search.lower() in r["name"].lower())]
    if sort == "name":
        kept.sort(key=lambda r: r["name"])
    elif sort == "rank":
        kept.sort(key=lambda r: (-r["score"], not r["flagged"], r["name"]))
    else:
        kept.sort(key=lambda r: (r[sort], r["name"]), reverse=True)
    return [r["name"] for r in kept]


def test_accounts_are_filtered_sorted_and_paged_in_sql(setup):
    g, service = setup
    start = g.clock.now
    for name, tier, status, flagged, score, second in ACCOUNTS:
        g.clock.now = start + second
        service.create_account("ann", name, tier=tier)
        service.update_account("ann", name, status=status, flagged=flagged)
        g.guard.update_account(name, score=score)
    service.issue_key("ann", "alpha")
    service.revoke_key("ann", service.issue_key("ann", "alpha").prefix)
    rows = [service.repository.get_account(name) for name, *_ in ACCOUNTS]
    filters = itertools.product((None, "active", "blocked"), (None, True, False), (None, "free", "pro"),
                                (None, "a", "%", "_", "ALPHA", "sure"))
    for status, flagged, tier, search in filters:
        for sort in ("score", "name", "created_at", "rank"):
            want = expected(rows, status=status, flagged=flagged, tier=tier, search=search, sort=sort)
            got = service.accounts(status=status, flagged=flagged, tier=tier, search=search, sort=sort, limit=None)
            assert [a["name"] for a in got.items] == want and got.total == len(want), (status, flagged, tier, search)
    everyone = expected(rows, sort="score")
    for limit, offset in ((3, 0), (3, 3), (3, 6), (3, 9), (1, 7), (50, 2)):
        page = service.accounts(limit=limit, offset=offset)
        assert [a["name"] for a in page.items] == everyone[offset:offset + limit] and page.total == len(ACCOUNTS)
    assert service.accounts(limit=None, offset=5).total == len(ACCOUNTS)
    assert service.accounts(limit=None, offset=50).total == len(ACCOUNTS)
    keys = {a["name"]: a["active_keys"] for a in service.accounts(limit=None).items}
    assert keys["alpha"] == 1 and keys["beta"] == 0  # the revoked key does not count


def test_flagged_accounts_come_with_their_latest_reasons_in_one_query(setup):
    g, service = setup
    for name, score in (("quiet", 0.1), ("thief", 0.9), ("canary", 0.4)):
        service.create_account("ann", name)
        g.guard.update_account(name, score=score)
    service.update_account("ann", "thief", flagged=True)
    service.update_account("ann", "canary", flagged=True)
    evaluate(service, "thief", 10.0, ["ADD 50 > 26"])
    evaluate(service, "thief", 20.0, ["PRADA 0.8 < 0.9", "ADD 60 > 26"])
    evaluate(service, "thief", 30.0, [])  # a later evaluation that found nothing does not hide why
    evaluate(service, "quiet", 40.0, ["never shown: not flagged"])
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = service.repository.engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        flagged = service.flagged_accounts()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(statements) == 1, statements
    assert [(a["name"], a["reasons"]) for a in flagged] == [("thief", ["PRADA 0.8 < 0.9", "ADD 60 > 26"]),
                                                           ("canary", [])]
