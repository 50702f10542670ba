"""The ``flask modelguard`` group and what its commands share: errors as one-line
messages, the admin service (every change audited), keys shown once."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from ..admin.service import AdminService
from ..exc import ModelGuardError
from ..runtime import state_of


def _guard() -> Any:
    return state_of(current_app).guard


def _friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ModelGuardError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            raise click.ClickException(
                f"Database error: {exc.__class__.__name__}: {str(exc).splitlines()[0]}"
                " (did you run 'flask modelguard init-db'?)"
            ) from None

    return wrapper


def _service() -> AdminService:
    """The admin service: every change made from the shell goes through it (audited as :func:`_actor`)."""
    return AdminService.of(state_of(current_app))


def _actor() -> str:
    from ..admin.cli import cli_actor

    return cli_actor()


def _show_key(token: str, what: str) -> None:
    click.echo(f"{what}: {token}")
    click.echo("Store it now: it is shown only once.", err=True)


@click.group("modelguard")
def modelguard_cli() -> None:
    """Manage ModelGuard accounts and API keys."""


def _guard_settings() -> Any:
    return state_of(current_app).settings
