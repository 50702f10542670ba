"""The colluding groups the group detector finds: one row (and one alert) a group.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "modelguard_account_groups",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("members", sa.JSON, nullable=False),
        sa.Column("queries", sa.Integer, nullable=False),
        sa.Column("ratio", sa.Float, nullable=False),
        sa.Column("z", sa.Float, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("modelguard_account_groups")
