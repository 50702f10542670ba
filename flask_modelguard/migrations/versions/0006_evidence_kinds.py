"""Every keyed wrong answer is evidence: poison and misinformation answers
are recorded beside watermark answers, with their ``kind`` and the
``null_rate`` of the ownership test (NULL for the records before: a
watermark's ``1/(classes - 1)``), and an (account, fingerprint) index (each
input's deception evidence is recorded once).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLE = "modelguard_watermarks"


def upgrade() -> None:
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="watermark"))
        batch.add_column(sa.Column("null_rate", sa.Float, nullable=True))
    op.create_index("ix_modelguard_watermarks_account_input", TABLE, ["account_id", "fingerprint"])


def downgrade() -> None:
    op.drop_index("ix_modelguard_watermarks_account_input", table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_column("null_rate")
        batch.drop_column("kind")
