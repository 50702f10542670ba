"""``flask modelguard``: tables, accounts and keys."""

from __future__ import annotations

import json

import click
from flask.cli import with_appcontext

from ..keys import key_hint
from ..repository import STATUSES
from .base import _actor, _friendly, _guard, _guard_settings, _service, _show_key, modelguard_cli


@modelguard_cli.command("init-db")
@with_appcontext
@_friendly
def init_db() -> None:
    """Create the guard's tables, or migrate them (as `flask modelguard db upgrade`)."""
    _guard().init_db()
    click.echo("ModelGuard tables are ready.")


@modelguard_cli.command("purge-events")
@click.option("--older-than", type=float, help="Days of query log to keep (default MODELGUARD_RETENTION).")
@with_appcontext
@_friendly
def purge_events(older_than: float | None) -> None:
    """Delete query events older than the retention (evidence stays)."""
    seconds = older_than * 86_400 if older_than is not None else _guard_settings().retention
    if seconds is None:
        raise click.ClickException("Say how long to keep: --older-than DAYS, or set MODELGUARD_RETENTION.")
    purged = _service().purge_events(_actor(), seconds)
    click.echo(f"{purged} query events older than {seconds / 86_400:g} days deleted.")


@modelguard_cli.command("create-account")
@click.argument("name")
@click.option("--tier", help="Tier of the account (default MODELGUARD_DEFAULT_TIER).")
@click.option("--limits", help='Limits replacing the tier\'s, e.g. "5/second;100/day".')
@click.option("--key/--no-key", default=True, show_default=True, help="Also issue an API key.")
@with_appcontext
@_friendly
def create_account(name: str, tier: str | None, limits: str | None, key: bool) -> None:
    """Create an account (and its first API key)."""
    service, actor = _service(), _actor()
    account = service.create_account(actor, name, tier=tier, limits=limits)
    click.echo(f"Created account {account['name']!r} (tier {account['tier']}).")
    if key:
        _show_key(service.issue_key(actor, name).token, "API key")


@modelguard_cli.command("issue-key")
@click.argument("account")
@with_appcontext
@_friendly
def issue_key(account: str) -> None:
    """Issue a new API key for ACCOUNT."""
    _show_key(_service().issue_key(_actor(), account).token, "API key")


@modelguard_cli.command("rotate-key")
@click.argument("key")
@click.option("--grace", type=float, help="Seconds the old key stays valid (default MODELGUARD_ROTATION_GRACE).")
@with_appcontext
@_friendly
def rotate_key(key: str, grace: float | None) -> None:
    """Replace KEY (its prefix or the whole key) with a new one."""
    _show_key(_service().rotate_key(_actor(), key, grace).token, "New API key")


@modelguard_cli.command("revoke-key")
@click.argument("key")
@with_appcontext
@_friendly
def revoke_key(key: str) -> None:
    """Revoke KEY (its prefix or the whole key) now."""
    row = _service().revoke_key(_actor(), key)
    click.echo(f"Revoked {key_hint(row['prefix'])} of account {row['account']!r}.")


@modelguard_cli.command("list-accounts")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@with_appcontext
@_friendly
def list_accounts(status: str | None, as_json: bool) -> None:
    """List accounts with tier, status and number of live keys."""
    rows = _service().accounts(status=status, sort="name", limit=None).items
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, default=str))
        return
    click.echo(f"{'NAME':<24} {'TIER':<12} {'STATUS':<10} {'KEYS':>4}  LIMITS")
    for row in rows:
        click.echo(
            f"{row['name']:<24} {row['tier']:<12} {row['status']:<10} {row['active_keys']:>4}  {row['limits'] or '-'}"
        )


@modelguard_cli.command("list-keys")
@click.argument("account")
@with_appcontext
@_friendly
def list_keys(account: str) -> None:
    """List the keys of ACCOUNT (prefixes only)."""
    for row in _guard().list_keys(account):
        state = "revoked" if row["revoked_at"] else (f"expires {row['expires_at']}" if row["expires_at"] else "active")
        click.echo(f"{key_hint(row['prefix'])}  created {row['created_at']}  {state}")


@modelguard_cli.command("set-status")
@click.argument("account")
@click.argument("status", type=click.Choice(STATUSES))
@with_appcontext
@_friendly
def set_status(account: str, status: str) -> None:
    """Set ACCOUNT's status: active, suspended or blocked."""
    _service().update_account(_actor(), account, status=status)
    click.echo(f"Account {account!r} is now {status}.")


@modelguard_cli.command("set-tier")
@click.argument("account")
@click.argument("tier")
@with_appcontext
@_friendly
def set_tier(account: str, tier: str) -> None:
    """Move ACCOUNT to TIER."""
    _service().update_account(_actor(), account, tier=tier)
    click.echo(f"Account {account!r} is now on tier {tier}.")


@modelguard_cli.command("set-limits")
@click.argument("account")
@click.argument("limits")
@with_appcontext
@_friendly
def set_limits(account: str, limits: str) -> None:
    """Override ACCOUNT's limits ("5/second;100/day"); "tier" restores the tier's."""
    _service().update_account(_actor(), account, limits=None if limits == "tier" else limits)
    click.echo(f"Account {account!r} limits: {limits}.")


@modelguard_cli.command("flag")
@click.argument("account")
@click.option("--off", is_flag=True, help="Remove the flag.")
@with_appcontext
@_friendly
def flag(account: str, off: bool) -> None:
    """Flag ACCOUNT: its answers follow the suspicious-account policy."""
    _service().update_account(_actor(), account, flagged=not off)
    click.echo(f"Account {account!r} is {'no longer ' if off else ''}flagged.")
