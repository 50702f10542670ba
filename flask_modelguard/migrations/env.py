"""Alembic's environment for the guard's tables: run by
:func:`flask_modelguard.migrations.upgrade` on a connection it hands over."""

from __future__ import annotations

from alembic import context

from flask_modelguard import models
from flask_modelguard.migrations import VERSION_TABLE

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=models.metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    include_name=lambda name, kind, parent: kind != "table" or bool(name and name.startswith("modelguard_")),
)
with context.begin_transaction():
    context.run_migrations()
