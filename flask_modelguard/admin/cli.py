"""``flask modelguard`` commands of the admin surface: admin tokens, flagged
accounts, block/unblock, alerts, query-log export. Each change goes through
the :class:`~flask_modelguard.admin.service.AdminService`, audited as
``cli:<user>``."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from flask import current_app
from flask.cli import with_appcontext

from ..runtime import state_of
from .service import AdminService

F = TypeVar("F", bound=Callable[..., Any])

#: The commands defined here: (name, function, click parameters), added by :func:`register`.
_COMMANDS: list[tuple[str, Callable[..., Any], tuple[Callable[[Any], Any], ...]]] = []


def _state() -> Any:
    return state_of(current_app)


def _service() -> AdminService:
    return AdminService.of(_state())


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no user name in this environment
        return "cli"


def _command(name: str, *params: Callable[[Any], Any]) -> Callable[[F], F]:
    """Declare ``flask modelguard NAME`` with its click arguments and options."""

    def declare(fn: F) -> F:
        _COMMANDS.append((name, fn, params))
        return fn

    return declare


def register(group: click.Group, friendly: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Add the admin commands to the ``modelguard`` group; ``friendly`` turns
    library errors into a one-line message and exit code 1."""
    for name, fn, params in _COMMANDS:
        command = with_appcontext(friendly(fn))
        for param in reversed(params):  # as if stacked as decorators, in this order
            command = param(command)
        group.command(name)(command)


@_command("create-admin-token", click.argument("name"))
def create_admin_token(name: str) -> None:
    """Create an admin token NAME for the admin API (printed once)."""
    token = _service().create_admin_token(cli_actor(), name)
    click.echo(f"Admin token for {name}: {token}")
    click.echo("Store it now: it is shown only once.", err=True)


@_command("revoke-admin-token", click.argument("name"))
def revoke_admin_token(name: str) -> None:
    """Revoke the admin token NAME at once."""
    _service().revoke_admin_token(cli_actor(), name)
    click.echo(f"Admin token {name} revoked.")


@_command("list-flagged")
def list_flagged() -> None:
    """Flagged accounts, highest malicious score first, with their latest reasons."""
    rows = _service().flagged_accounts()
    if not rows:
        click.echo("No flagged accounts.")
        return
    click.echo(f"{'NAME':<24} {'SCORE':>5} {'STATUS':<10} REASONS")
    for row in rows:
        click.echo(f"{row['name']:<24} {row['score']:>5.2f} {row['status']:<10} {'; '.join(row['reasons']) or '-'}")


@_command("show-account", click.argument("name"))
def show_account(name: str) -> None:
    """An account: status, tier, limits, flag, score, keys, last evaluation, open alerts."""
    state = _state()
    account = state.repository.get_account(name)
    for field in ("name", "tier", "status", "limits", "flagged", "allowlisted", "score", "created_at"):
        click.echo(f"{field:<12} {account[field]}")
    for key in state.repository.list_keys(name):
        status = "revoked" if key["revoked_at"] else "live"
        click.echo(f"key          mg_{key['prefix']}_… ({status}, created {key['created_at']})")
    history = state.repository.score_history(name)
    if history:
        last = history[-1]
        click.echo(f"evaluated    at {last['queries']} queries: malicious score "
                   f"{(last['scores'] or {}).get('malicious')}; {'; '.join(last['reasons']) or 'no reasons'}")
    alerts, _ = state.admin.alerts(open_only=True, account_id=account["id"])
    for alert in alerts:
        click.echo(f"alert #{alert['id']}    {alert['action']}: {alert['reason']}")


def _set_status(name: str, status: str) -> None:
    change = _service().update_account(cli_actor(), name, status=status)
    click.echo(f"{name}: {change.before['status']} -> {change.after['status']}")


@_command("block", click.argument("name"))
def block(name: str) -> None:
    """Block account NAME: its requests get 403 (at once here, elsewhere within the key-cache TTL)."""
    _set_status(name, "blocked")


@_command("unblock", click.argument("name"))
def unblock(name: str) -> None:
    """Make account NAME active again."""
    _set_status(name, "active")


@_command("alerts", click.option("--all", "show_all", is_flag=True, help="Acknowledged ones too."))
def alerts(show_all: bool) -> None:
    """Open alerts, newest first."""
    items, total = _state().admin.alerts(open_only=not show_all, limit=1000)
    for a in items:
        ack = f" (acknowledged by {a['acknowledged_by']})" if a["acknowledged_at"] else ""
        click.echo(f"#{a['id']:<5} {a['account']:<24} {a['action']:<8} {a['reason']}{ack}")
    click.echo(f"{total} alert(s).", err=True)


@_command("groups", click.option("--limit", type=int, default=100, show_default=True, help="How many."))
def groups(limit: int) -> None:
    """Colluding groups the group detector found, newest first."""
    repository = _state().repository
    for g in repository.list_groups(limit):
        names = ", ".join(str(a) for a in g["accounts"])
        click.echo(f"#{g['id']:<5} {len(g['members']):>3} accounts {g['action']:<8} {g['reason']}: {names}")
    click.echo(f"{repository.count_groups()} group(s).", err=True)


@_command("ack", click.argument("alert_id", type=int))
def ack(alert_id: int) -> None:
    """Acknowledge alert ALERT_ID."""
    row = _service().acknowledge_alert(cli_actor(), alert_id)
    click.echo(f"Alert #{alert_id} acknowledged." if row["changed"] else f"Alert #{alert_id} was already acknowledged.")


@_command("export-log", click.argument("name"),
          click.option("--since", type=float, help="Epoch seconds (inclusive)."),
          click.option("--until", type=float, help="Epoch seconds (exclusive)."),
          click.option("--output", "-o", type=click.File("w"), default="-", help="File (default: standard output)."))
def export_log(name: str, since: float | None, until: float | None, output: Any) -> None:
    """Export account NAME's query log as JSON Lines (evidence for an incident)."""
    n = 0
    for row in _service().export_events(cli_actor(), name, since=since, until=until, fmt="jsonl"):
        output.write(json.dumps(row, default=str) + "\n")
        n += 1
    if output is not sys.stdout:
        click.echo(f"{n} events written.", err=True)
