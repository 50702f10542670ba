"""The guard's tables as releases before migrations created them (``create_all``).

A database that has them and no version table is stamped here, then
upgraded; an empty database is created at the head directly.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # the schema as `create_all` made it: nothing to do


def downgrade() -> None:
    pass
