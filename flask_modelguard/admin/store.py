"""What the admin surface keeps besides accounts and keys: admin tokens,
alerts, the audit log, and query-log export. Framework-free (SQLAlchemy)."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import io
import json
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .. import models as m
from ..exc import AlreadyExists, NotFound
from ..keys import generate_key, hash_secret

ADMIN_SCHEME = "mga"
_TOKEN_RE = re.compile(rf"{ADMIN_SCHEME}_([a-z0-9]{{10}})_([a-z0-9]{{32}})")
#: Seconds a token verified against the database still opens the admin API
#: while the database is unreachable (health must answer during an outage).
OUTAGE_GRACE = 300.0


#: Seconds a dashboard sign-in lasts (then sign in again).
SESSION_MAX_AGE = 12 * 3600.0


def _sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row.items()}


class AdminStore:
    """Admin tokens, alerts, audit log and query-log export on the guard's engine."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        #: Digests of tokens verified lately → (admin, when): used only while the database is away.
        self._verified: dict[str, tuple[str, float]] = {}

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)

    # -- admin tokens -------------------------------------------------------------

    def create_token(self, name: str) -> str:
        """A new admin token named ``name``; the returned token is the only copy."""
        new = generate_key()
        token = f"{ADMIN_SCHEME}_{new.prefix}_{new.token.rsplit('_', 1)[1]}"
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(m.admin_tokens).values(
                    name=name, prefix=new.prefix, secret_hash=new.secret_hash, created_at=self.now()))
        except IntegrityError:
            raise AlreadyExists(f"An admin token named {name!r} already exists.") from None
        return token

    def verify_token(self, token: str) -> str | None:
        """The name of the admin holding ``token``, or None (constant-time compare)."""
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None
        prefix, secret = match[1], match[2]
        digest = hash_secret(prefix, secret)
        try:
            with self.engine.connect() as conn:
                row = conn.execute(select(m.admin_tokens).where(m.admin_tokens.c.prefix == prefix)).first()
        except SQLAlchemyError:
            found = self._verified.get(digest)  # (a dict lookup by digest: no timing to learn from)
            if found is not None and time.monotonic() - found[1] < OUTAGE_GRACE:
                return found[0]
            raise
        if row is None:
            hmac.compare_digest(digest, digest)  # same work whether or not the prefix exists
            return None
        if not hmac.compare_digest(digest, row.secret_hash) or row.revoked_at is not None:
            self._verified.pop(digest, None)
            return None
        if len(self._verified) > 1000:
            self._verified.clear()
        self._verified[digest] = (str(row.name), time.monotonic())
        return str(row.name)

    # -- dashboard sessions ---------------------------------------------------------

    def start_session(self, admin: str, token_prefix: str) -> str:
        """A new dashboard session for ``admin`` signed in with ``token_prefix``;
        returns its random id (kept only in the signed cookie; its hash here)."""
        sid = secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(insert(m.admin_sessions).values(
                sid_hash=_sid_hash(sid), admin=admin, token_prefix=token_prefix, created_at=self.now()))
        return sid

    def session_admin(self, sid: str, max_age: float = SESSION_MAX_AGE) -> str | None:
        """The admin of a live session: not ended, younger than ``max_age``
        seconds, its token not revoked. None otherwise."""
        t, s = m.admin_tokens, m.admin_sessions
        with self.engine.connect() as conn:
            row = conn.execute(
                select(s.c.admin, s.c.created_at, s.c.ended_at, t.c.revoked_at, t.c.name)
                .join(t, t.c.prefix == s.c.token_prefix).where(s.c.sid_hash == _sid_hash(sid))
            ).first()
        if row is None or row.ended_at is not None or row.revoked_at is not None or row.name != row.admin:
            return None
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=dt.timezone.utc)
        if (self.now() - created).total_seconds() > max_age:
            return None
        return str(row.admin)

    def end_session(self, sid: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(m.admin_sessions).where(m.admin_sessions.c.sid_hash == _sid_hash(sid),
                                                        m.admin_sessions.c.ended_at.is_(None))
                         .values(ended_at=self.now()))

    def list_tokens(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(m.admin_tokens.c.name, m.admin_tokens.c.prefix, m.admin_tokens.c.created_at,
                                       m.admin_tokens.c.revoked_at).order_by(m.admin_tokens.c.name))
            return [_jsonable(dict(r._mapping)) for r in rows]

    def revoke_token(self, name: str) -> None:
        with self.engine.begin() as conn:
            done = conn.execute(update(m.admin_tokens).where(m.admin_tokens.c.name == name)
                                .values(revoked_at=self.now())).rowcount
        if not done:
            raise NotFound(f"No admin token named {name!r}.")

    # -- alerts -----------------------------------------------------------------------

    def alerts(self, *, open_only: bool = False, account_id: int | None = None,
               limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """Alerts, newest first, with the account's name; and how many match."""
        query = select(m.alerts, m.accounts.c.name.label("account")).join(
            m.accounts, m.accounts.c.id == m.alerts.c.account_id)
        count = select(func.count()).select_from(m.alerts)
        if open_only:
            query = query.where(m.alerts.c.acknowledged_at.is_(None))
            count = count.where(m.alerts.c.acknowledged_at.is_(None))
        if account_id is not None:
            query = query.where(m.alerts.c.account_id == account_id)
            count = count.where(m.alerts.c.account_id == account_id)
        query = query.order_by(m.alerts.c.ts.desc(), m.alerts.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return [_jsonable(dict(r._mapping)) for r in conn.execute(query)], int(conn.execute(count).scalar() or 0)

    def alert(self, alert_id: int) -> dict[str, Any]:
        """One alert with its account's name; NotFound if there is none."""
        query = (select(m.alerts, m.accounts.c.name.label("account"))
                 .join(m.accounts, m.accounts.c.id == m.alerts.c.account_id).where(m.alerts.c.id == alert_id))
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"No alert {alert_id}.")
        return _jsonable(dict(row._mapping))

    def evaluation_for(self, account_id: int, ts: float, reason: str, scan: int = 200) -> dict[str, Any] | None:
        """The evaluation an alert raised at ``ts`` for ``reason`` came from:
        among the account's latest ``scan`` at or before ``ts``, the one whose
        reasons hold it, else the latest that found something, else the latest."""
        s = m.scores
        query = (select(s).where(s.c.account_id == account_id, s.c.ts <= ts + 1.0)
                 .order_by(s.c.ts.desc(), s.c.id.desc()).limit(scan))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for found in (lambda r: reason in (r["reasons"] or []), lambda r: bool(r["reasons"]), lambda r: True):
            match = next((r for r in rows if found(r)), None)
            if match is not None:
                return match
        return None

    def acknowledge(self, alert_id: int, by: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            done = conn.execute(update(m.alerts).where(m.alerts.c.id == alert_id, m.alerts.c.acknowledged_at.is_(None))
                                .values(acknowledged_at=self.now(), acknowledged_by=by)).rowcount
        return {**self.alert(alert_id), "changed": bool(done)}

    # -- audit log --------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str | None, before: Any = None, after: Any = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(m.audit_log).values(at=self.now(), actor=actor, action=action, target=target,
                                                    before=_clean(before), after=_clean(after)))

    def audit_entries(self, limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        query = select(m.audit_log).order_by(m.audit_log.c.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            rows = [_jsonable(dict(r._mapping)) for r in conn.execute(query)]
            return rows, int(conn.execute(select(func.count()).select_from(m.audit_log)).scalar() or 0)

    # -- query log export ---------------------------------------------------------------

    def events(self, account_id: int, since: float | None = None, until: float | None = None,
               with_inputs: bool = False) -> Iterator[dict[str, Any]]:
        """An account's query events in time order, streamed from the database."""
        columns = [c for c in m.query_events.c if with_inputs or c.name != "input"]
        query = select(*columns).where(m.query_events.c.account_id == account_id)
        if since is not None:
            query = query.where(m.query_events.c.ts >= since)
        if until is not None:
            query = query.where(m.query_events.c.ts < until)
        query = query.order_by(m.query_events.c.ts, m.query_events.c.id)
        with self.engine.connect() as conn:
            for row in conn.execution_options(yield_per=500).execute(query):
                yield dict(row._mapping)


def _clean(value: Any) -> Any:
    """Audit snapshots as JSON: datetimes as ISO strings."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value.isoformat() if isinstance(value, dt.datetime) else value


# -- query-log export formats ---------------------------------------------------------

#: The columns of a query-log export, besides ``input`` (when inputs are stored).
EXPORT_COLUMNS = ("id", "ts", "route", "status", "latency_ms", "n_instances", "fingerprint", "labels",
                  "top_confidences", "canary", "key_id")


def export_columns(with_inputs: bool) -> tuple[str, ...]:
    return EXPORT_COLUMNS + (("input",) if with_inputs else ())


def attachment(filename: str) -> str:
    """A Content-Disposition header saving as ``filename``: an ASCII stand-in
    for old clients and the name itself, UTF-8 (RFC 6266)."""
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def export_jsonl(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    """Export rows as JSON Lines, one chunk per row."""
    for row in rows:
        yield json.dumps({c: row.get(c) for c in columns}) + "\n"


def export_csv(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> Iterator[str]:
    """Export rows as CSV with a header row, in chunks of 200 rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for n, row in enumerate(rows):
        writer.writerow([csv_cell(row.get(c)) for c in columns])
        if n % 200 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def csv_cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value
