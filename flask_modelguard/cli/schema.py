"""``flask modelguard db ...``: the guard's schema, migrated with Alembic on a
version table of its own (``modelguard_alembic_version``)."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from .. import migrations
from ..runtime import state_of
from .base import _friendly, modelguard_cli


@modelguard_cli.group("db")
def db() -> None:
    """The guard's tables: upgrade, current revision, downgrade."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Revision to upgrade to.")
@with_appcontext
@_friendly
def upgrade(revision: str) -> None:
    """Create the tables, or migrate them to the current release's schema."""
    done = migrations.upgrade(state_of(current_app).repository.engine, revision)
    click.echo(f"ModelGuard schema: {done}; now at {migrations.current(state_of(current_app).repository.engine)}.")


@db.command("current")
@with_appcontext
@_friendly
def current() -> None:
    """The revision the tables are at (this release's is printed beside it)."""
    found = migrations.current(state_of(current_app).repository.engine)
    click.echo(f"{found or 'no version table (tables from before migrations, or none)'} (this release: "
               f"{migrations.HEAD})")


@db.command("downgrade")
@click.argument("revision")
@with_appcontext
@_friendly
def downgrade(revision: str) -> None:
    """Migrate the tables back to REVISION (before running an older release)."""
    migrations.downgrade(state_of(current_app).repository.engine, revision)
    click.echo(f"ModelGuard schema now at {migrations.current(state_of(current_app).repository.engine)}.")
