"""The colluding groups the group detector finds: one row (and one alert) a
group; an index on the states' merge time, which the group search reads by.

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
    op.create_index("ix_modelguard_account_states_updated", "modelguard_account_states", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_modelguard_account_states_updated", table_name="modelguard_account_states")
    op.drop_table("modelguard_account_groups")
