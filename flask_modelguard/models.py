"""SQLAlchemy tables, on the extension's own :data:`metadata`.

The tables never share the application's metadata, so ``db.create_all()`` of
the host app does not touch them and ``flask modelguard init-db`` creates only
these. Names start with ``modelguard_``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

#: An account is the unit of billing, limits and detection.
accounts = Table(
    "modelguard_accounts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("tier", String(64), nullable=False),
    Column("status", String(16), nullable=False, default="active"),
    # ";"-separated limit strings ("5/second;100/day") replacing the tier's, or NULL.
    Column("limits", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

#: API keys: the prefix in clear for look-up, the secret only as a digest.
api_keys = Table(
    "modelguard_api_keys",
    metadata,
    Column("id", Integer, primary_key=True),
    Column(
        "account_id",
        Integer,
        ForeignKey("modelguard_accounts.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # Set when the key was rotated: it stays valid until then.
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

#: One row per protected request, written in batches by the worker.
query_events = Table(
    "modelguard_query_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", Integer, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("route", String(255), nullable=False),
    Column("ts", Float, nullable=False),  # epoch seconds (the guard's clock)
    Column("status", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("n_instances", Integer, nullable=False),
    Column("fingerprint", String(32), nullable=True),
    Column("labels", JSON, nullable=True),
    Column("top_confidences", JSON, nullable=True),
    Column("input", JSON, nullable=True),  # only with MODELGUARD_STORE_INPUTS
)
Index("ix_modelguard_query_events_account_ts", query_events.c.account_id, query_events.c.ts)
