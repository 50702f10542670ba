"""``flask modelguard`` commands of the admin surface: admin tokens, flagged
accounts, block/unblock, alerts, query-log export. Each change is audited as
``cli:<user>``."""

from __future__ import annotations

import getpass
import json
import sys
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext


def _state() -> Any:
    from ..extension import ModelGuard

    return ModelGuard.state(current_app)


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment
        return "cli"


def register(group: click.Group, friendly: Any) -> None:
    """Add the admin commands to the ``modelguard`` group."""

    @group.command("create-admin-token")
    @click.argument("name")
    @with_appcontext
    @friendly
    def create_admin_token(name: str) -> None:
        """Create an admin token NAME for the admin API (printed once)."""
        token = _state().admin.create_token(name)
        _state().admin.audit(cli_actor(), "create-admin-token", name)
        click.echo(f"Admin token for {name}: {token}")
        click.echo("Store it now: it is shown only once.", err=True)

    @group.command("revoke-admin-token")
    @click.argument("name")
    @with_appcontext
    @friendly
    def revoke_admin_token(name: str) -> None:
        """Revoke the admin token NAME at once."""
        _state().admin.revoke_token(name)
        _state().admin.audit(cli_actor(), "revoke-admin-token", name)
        click.echo(f"Admin token {name} revoked.")

    @group.command("list-flagged")
    @with_appcontext
    @friendly
    def list_flagged() -> None:
        """Flagged accounts, highest malicious score first, with their latest reasons."""
        state = _state()
        rows = sorted((a for a in state.guard.list_accounts() if a["flagged"]), key=lambda a: -a["score"])
        if not rows:
            click.echo("No flagged accounts.")
            return
        click.echo(f"{'NAME':<24} {'SCORE':>5} {'STATUS':<10} REASONS")
        for row in rows:
            history = state.guard.score_history(row["name"])
            reasons: list[str] = next((h["reasons"] for h in reversed(history) if h["reasons"]), [])
            click.echo(f"{row['name']:<24} {row['score']:>5.2f} {row['status']:<10} {'; '.join(reasons) or '-'}")

    @group.command("show-account")
    @click.argument("name")
    @with_appcontext
    @friendly
    def show_account(name: str) -> None:
        """An account: status, tier, limits, flag, score, keys, last evaluation, open alerts."""
        state = _state()
        account = state.repository.get_account(name)
        for field in ("name", "tier", "status", "limits", "flagged", "allowlisted", "score", "created_at"):
            click.echo(f"{field:<12} {account[field]}")
        for key in state.repository.list_keys(name):
            status = "revoked" if key["revoked_at"] else "live"
            click.echo(f"key          mg_{key['prefix']}_… ({status}, created {key['created_at']})")
        history = state.guard.score_history(name)
        if history:
            last = history[-1]
            click.echo(f"evaluated    at {last['queries']} queries: malicious score "
                       f"{(last['scores'] or {}).get('malicious')}; {'; '.join(last['reasons']) or 'no reasons'}")
        alerts, _ = state.admin.alerts(open_only=True, account_id=account["id"])
        for alert in alerts:
            click.echo(f"alert #{alert['id']}    {alert['action']}: {alert['reason']}")

    def _set_status(name: str, status: str) -> None:
        state = _state()
        before = state.repository.get_account(name)
        after = state.guard.update_account(name, status=status)
        state.admin.audit(cli_actor(), "update-account", name, {"status": before["status"]}, {"status": after["status"]})
        click.echo(f"{name}: {before['status']} -> {after['status']}")

    @group.command("block")
    @click.argument("name")
    @with_appcontext
    @friendly
    def block(name: str) -> None:
        """Block account NAME: its requests get 403 (at once here, elsewhere within the key-cache TTL)."""
        _set_status(name, "blocked")

    @group.command("unblock")
    @click.argument("name")
    @with_appcontext
    @friendly
    def unblock(name: str) -> None:
        """Make account NAME active again."""
        _set_status(name, "active")

    @group.command("alerts")
    @click.option("--all", "show_all", is_flag=True, help="Acknowledged ones too.")
    @with_appcontext
    @friendly
    def alerts(show_all: bool) -> None:
        """Open alerts, newest first."""
        items, total = _state().admin.alerts(open_only=not show_all, limit=1000)
        for a in items:
            ack = f" (acknowledged by {a['acknowledged_by']})" if a["acknowledged_at"] else ""
            click.echo(f"#{a['id']:<5} {a['account']:<24} {a['action']:<8} {a['reason']}{ack}")
        click.echo(f"{total} alert(s).", err=True)

    @group.command("ack")
    @click.argument("alert_id", type=int)
    @with_appcontext
    @friendly
    def ack(alert_id: int) -> None:
        """Acknowledge alert ALERT_ID."""
        row = _state().admin.acknowledge(alert_id, cli_actor())
        _state().admin.audit(cli_actor(), "acknowledge-alert", str(alert_id), None,
                             {"acknowledged_by": row["acknowledged_by"], "changed": row["changed"]})
        click.echo(f"Alert #{alert_id} acknowledged." if row["changed"] else f"Alert #{alert_id} was already acknowledged.")

    @group.command("export-log")
    @click.argument("name")
    @click.option("--since", type=float, help="Epoch seconds (inclusive).")
    @click.option("--until", type=float, help="Epoch seconds (exclusive).")
    @click.option("--output", "-o", type=click.File("w"), default="-", help="File (default: standard output).")
    @with_appcontext
    @friendly
    def export_log(name: str, since: float | None, until: float | None, output: Any) -> None:
        """Export account NAME's query log as JSON Lines (evidence for an incident)."""
        state = _state()
        account = state.repository.get_account(name)
        n = 0
        for row in state.admin.events(account["id"], since, until, state.settings.store_inputs):
            output.write(json.dumps(row, default=str) + "\n")
            n += 1
        state.admin.audit(cli_actor(), "export-events", name, None, {"since": since, "until": until, "rows": n})
        if output is not sys.stdout:
            click.echo(f"{n} events written.", err=True)
