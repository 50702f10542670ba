"""``flask modelguard ...`` through Flask's CLI runner, on every database."""

from __future__ import annotations

import re

import pytest

KEY_RE = re.compile(r"mg_[a-z0-9]{10}_[a-z0-9]{32}")


@pytest.fixture
def cli(make_guarded):
    g = make_guarded()
    runner = g.app.test_cli_runner()

    def run(*args: str, ok: bool = True):
        result = runner.invoke(args=["modelguard", *args])
        assert (result.exit_code == 0) == ok, result.output
        return result

    run.guarded = g
    return run


def test_init_db_create_account_and_key(cli):
    assert "ready" in cli("init-db").output
    out = cli("create-account", "alice", "--tier", "pro").output
    key = KEY_RE.search(out).group(0)
    assert cli.guarded.predict(key).headers["X-RateLimit-Limit"] == "100"
    listing = cli("list-accounts").output
    assert re.search(r"alice\s+pro\s+active\s+1", listing)
    assert key not in listing and key not in cli("list-keys", "alice").output


def test_issue_rotate_revoke(cli):
    cli("create-account", "bob", "--no-key")
    key = KEY_RE.search(cli("issue-key", "bob").output).group(0)
    new = KEY_RE.search(cli("rotate-key", key, "--grace", "0").output).group(0)
    assert new != key
    assert cli.guarded.predict(key).status_code == 401  # no grace
    prefix = new.split("_")[1]
    assert "Revoked" in cli("revoke-key", prefix).output
    assert cli.guarded.predict(new).status_code == 403
    keys = cli("list-keys", "bob").output
    assert "revoked" in keys and "expires" in keys


def test_set_status_tier_and_limits(cli):
    key = KEY_RE.search(cli("create-account", "carol").output).group(0)
    cli("set-status", "carol", "blocked")
    assert cli.guarded.predict(key).status_code == 403
    cli("set-status", "carol", "active")
    cli("set-tier", "carol", "pro")
    assert cli.guarded.predict(key).headers["X-RateLimit-Limit"] == "100"
    cli("set-limits", "carol", "3/minute")
    assert cli.guarded.predict(key).headers["X-RateLimit-Limit"] == "3"
    cli("set-limits", "carol", "tier")
    assert cli.guarded.predict(key).headers["X-RateLimit-Limit"] == "100"
    assert "blocked" not in cli("list-accounts", "--status", "blocked").output.split("\n", 1)[1]


@pytest.mark.parametrize(
    "args, message",
    [
        (("issue-key", "nobody"), "No account named 'nobody'"),
        (("create-account", "x", "--tier", "gold"), "Unknown tier 'gold'"),
        (("create-account", "x", "--limits", "often"), "Invalid limit string"),
        (("revoke-key", "zzzzzzzzzz"), "No key with prefix"),
        (("rotate-key", "mg_bad"), "API keys look like"),
        (("set-status", "nobody", "blocked"), "No account named"),
        (("set-status", "nobody", "sleeping"), "Invalid value"),
    ],
)
def test_bad_arguments_give_clear_errors(cli, args, message):
    result = cli(*args, ok=False)
    assert message in result.output
    assert "Traceback" not in result.output


def test_duplicate_account_and_double_revoke(cli):
    key = KEY_RE.search(cli("create-account", "dave").output).group(0)
    assert "already exists" in cli("create-account", "dave", ok=False).output
    cli("revoke-key", key)
    assert "already revoked" in cli("revoke-key", key, ok=False).output


def test_missing_tables_are_explained(make_guarded, tmp_path):
    g = make_guarded(MODELGUARD_CREATE_TABLES=False, MODELGUARD_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db")
    result = g.app.test_cli_runner().invoke(args=["modelguard", "list-accounts"])
    assert result.exit_code == 1 and "init-db" in result.output
    assert "Traceback" not in result.output


def test_purge_events_keeps_the_retention_and_is_audited(cli):
    g = cli.guarded
    name, key = g.account()
    for _ in range(3):
        assert g.predict(key).status_code == 200
    g.guard.flush(g.app)
    assert "Say how long to keep" in cli("purge-events", ok=False).output  # no MODELGUARD_RETENTION set
    assert "0 query events older than 1 days deleted" in cli("purge-events", "--older-than", "1").output
    g.clock.now += 2 * 86_400
    assert "3 query events older than 1 days deleted" in cli("purge-events", "--older-than", "1").output
    assert g.rows(name) == []
    from flask_modelguard import ModelGuard

    entry = ModelGuard.state(g.app).admin.audit_entries(limit=1)[0][0]
    assert entry["action"] == "purge-events" and entry["after"]["purged"] == 3
