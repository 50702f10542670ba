"""Watermark records hash-chained per account (flask_modelguard/evidence.py):
a ``chain`` column, filled for the records already there, in id order.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from flask_modelguard.evidence import FIELDS, GENESIS, link

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("modelguard_watermarks", sa.Column("chain", sa.String(64), nullable=True))
    table = sa.table("modelguard_watermarks", sa.column("id"), sa.column("chain"),
                     *[sa.column(f, sa.JSON if f in ("input", "served_label", "model_label") else None)
                       for f in FIELDS])
    conn = op.get_bind()
    heads: dict[int, str] = {}
    for row in conn.execute(sa.select(table).order_by(table.c.id)).mappings().all():
        heads[row["account_id"]] = link(heads.get(row["account_id"], GENESIS), dict(row))
        conn.execute(table.update().where(table.c.id == row["id"]).values(chain=heads[row["account_id"]]))


def downgrade() -> None:
    op.drop_column("modelguard_watermarks", "chain")
