"""SQLAlchemy tables, on the extension's own :data:`metadata`.

The tables never share the application's metadata, so ``db.create_all()`` of
the host app does not touch them and ``flask modelguard init-db`` creates only
these. Names start with ``modelguard_``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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
    # Flagged accounts get the routes' suspicious-account output policy.
    Column("flagged", Boolean, nullable=False, default=False),
    # Malicious score in [0, 1] (poisoning may grow with it).
    Column("score", Float, nullable=False, default=0.0),
    # Allow-listed accounts are never flagged by the detectors (an operator's word wins).
    Column("allowlisted", Boolean, nullable=False, default=False),
    # Queries the account had sent when an operator last cleared its flag: the
    # detectors act again only on 100 queries of new evidence.
    Column("reviewed_queries", Integer, nullable=False, default=0),
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
    Column("canary", Boolean, nullable=False, default=False),  # the request held a honey-trap input
)
Index("ix_modelguard_query_events_account_ts", query_events.c.account_id, query_events.c.ts)
# Time ranges over everyone (retention's purge, the dashboard's charts), covering
# what the charts aggregate so SQLite reads no table row (migration 0005).
Index("ix_modelguard_query_events_ts_status", query_events.c.ts, query_events.c.status, query_events.c.latency_ms)

#: Keyed wrong answers served, the ownership evidence: watermark answers (DAWN)
#: and the poison and misinformation answers of flagged accounts. The input is
#: kept, since verification needs it.
watermarks = Table(
    "modelguard_watermarks",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", Integer, nullable=False, index=True),
    Column("route", String(255), nullable=False),
    Column("ts", Float, nullable=False),
    Column("fingerprint", String(32), nullable=False),
    Column("input", JSON, nullable=False),
    Column("served_label", JSON, nullable=False),  # class index or name, deliberately wrong
    Column("model_label", JSON, nullable=False),  # what the model answered
    Column("n_classes", Integer, nullable=False),
    # SHA-256 of the account's previous link and this record (evidence.py; migration 0004).
    Column("chain", String(64), nullable=True),
    # Which keyed choice served it (watermark, poison, misinformation) and the
    # chance an independent model agrees with it (NULL: 1/(classes - 1)); migration 0006.
    Column("kind", String(16), nullable=False, server_default="watermark"),
    Column("null_rate", Float, nullable=True),
    # An account's latest link, read by every writer of its chain (migration 0005).
    Index("ix_modelguard_watermarks_account_order", "account_id", "id"),
    # Whether an input already has evidence: deception evidence is one record an input (migration 0006).
    Index("ix_modelguard_watermarks_account_input", "account_id", "fingerprint"),
)

#: Honey-trap inputs registered by the owner: any account sending one is flagged.
canaries = Table(
    "modelguard_canaries",
    metadata,
    Column("fingerprint", String(32), primary_key=True),
    Column("note", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: Detector evaluations of accounts (score history) and their verdicts.
scores = Table(
    "modelguard_scores",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", Integer, nullable=False),
    Column("ts", Float, nullable=False),
    Column("queries", Integer, nullable=False),
    Column("scores", JSON, nullable=False),
    Column("reasons", JSON, nullable=False),  # empty: nothing found
)
Index("ix_modelguard_scores_account_ts", scores.c.account_id, scores.c.ts)

#: The reference data of the ADD detector (class Gaussians and thresholds), one row.
references = Table(
    "modelguard_references",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: The labelled training set of the supervised detectors (one row, id 1):
#: evaluations' scores, labels and account groups (from simulated traffic).
training = Table(
    "modelguard_training",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: The detectors fitted on the training set (one row, id 1), so other processes
#: load them instead of fitting them again: pickled, signed with the app's
#: secret (HMAC-SHA256), with the versions of the libraries that pickled them.
detector_models = Table(
    "modelguard_detector_models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("blob", LargeBinary, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

#: What changed an account's or a key's standing (flag, status, tier, limits,
#: rotation, revocation), in order: every process reads the new rows twice a
#: second and forgets what it cached of them (``changes.py``).
account_changes = Table(
    "modelguard_account_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("account_id", Integer, nullable=True),
    Column("prefix", String(32), nullable=True),
    Column("ts", Float, nullable=False),
)

#: Account states merged from every process (see state.AccountState.merge).
account_states = Table(
    "modelguard_account_states",
    metadata,
    Column("account_id", Integer, primary_key=True),
    Column("state", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The group search reads the latest merged (migration 0003).
    Index("ix_modelguard_account_states_updated", "updated_at"),
)

#: Colluding groups the group detector found (detectors/groups.py): one row and one alert a group.
account_groups = Table(
    "modelguard_account_groups",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("members", JSON, nullable=False),  # account ids
    Column("queries", Integer, nullable=False),
    Column("ratio", Float, nullable=False),  # the merged state's ADD score over its threshold
    Column("z", Float, nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", Text, nullable=False),
)

#: Admin credentials for the admin API and dashboard: hashed like API keys.
admin_tokens = Table(
    "modelguard_admin_tokens",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False, unique=True),
    Column("secret_hash", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

#: Dashboard sign-ins: the session cookie holds a random id whose hash is
#: here; signing out ends the row, so a copy of the cookie is worthless after.
admin_sessions = Table(
    "modelguard_admin_sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("sid_hash", String(64), nullable=False, unique=True),
    Column("admin", String(128), nullable=False),
    Column("token_prefix", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=True),
)

#: One row per alert (an account flagged, or found in shadow mode), until acknowledged.
alerts = Table(
    "modelguard_alerts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("account_id", Integer, ForeignKey("modelguard_accounts.id", ondelete="CASCADE"), nullable=False),
    Column("ts", Float, nullable=False),
    Column("action", String(16), nullable=False),  # observe, degrade, throttle, block, canary
    Column("reason", Text, nullable=False),
    Column("acknowledged_at", DateTime(timezone=True), nullable=True),
    Column("acknowledged_by", String(128), nullable=True),
    Index("ix_modelguard_alerts_open", "acknowledged_at", "ts"),
)

#: Every admin action: who, what, on what, the state before and after.
audit_log = Table(
    "modelguard_audit_log",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
)

#: Alembic's version table, under a name of the guard's own (the host app's
#: migrations keep theirs): which migration the guard's tables are at.
schema_version = Table(
    "modelguard_alembic_version",
    metadata,
    Column("version_num", String(32), primary_key=True),
)
