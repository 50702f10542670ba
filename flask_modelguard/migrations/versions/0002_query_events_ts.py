"""An index on the query log's time alone: retention's purge (``ts < cutoff``)
and time ranges over every account no longer scan the table.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_modelguard_query_events_ts", "modelguard_query_events", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_modelguard_query_events_ts", table_name="modelguard_query_events")
