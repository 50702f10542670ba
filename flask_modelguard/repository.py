"""Reading and writing the guard's tables. Framework-free: takes an Engine."""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import JSON, Engine, bindparam, event, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import models as m
from .exc import AlreadyExists, InvalidValue, NotFound
from .keys import NewKey, Principal, generate_key
from .policy import AccountFacts, Catch, FlagPolicy

STATUSES = ("active", "suspended", "blocked")

_EVENT_COLUMNS = tuple(c.name for c in m.query_events.columns if c.name != "id")
_EVENT_JSON_AT = tuple(i for i, name in enumerate(_EVENT_COLUMNS) if isinstance(m.query_events.c[name].type, JSON))


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes: they were written as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _epoch(value: dt.datetime | None) -> float | None:
    value = _utc(value)
    return None if value is None else value.timestamp()


def _enable_sqlite_concurrency(engine: Engine) -> None:
    """WAL and a busy timeout let the worker write while requests read."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


class Repository:
    """Accounts, keys and query events in SQL."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        if engine.dialect.name == "sqlite":
            _enable_sqlite_concurrency(engine)
        self._file_identity: tuple[int, int] | None = None
        self.file_problem()  # remembers which file the engine opened
        mark = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(engine.dialect.paramstyle)
        self._raw_insert = None if mark is None else (
            f"INSERT INTO {m.query_events.name} ({', '.join(_EVENT_COLUMNS)}) "
            f"VALUES ({', '.join([mark] * len(_EVENT_COLUMNS))})"
        )

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock(), dt.timezone.utc)

    def create_all(self) -> None:
        m.metadata.create_all(self.engine)

    def file_problem(self) -> str | None:
        """For a SQLite file: what is wrong with it (gone, or replaced by
        another file: SQLite then keeps writing to the old one, which nobody
        will read), None while it is the file the engine first saw."""
        path = self.engine.url.database
        if self.engine.dialect.name != "sqlite" or not path or path == ":memory:" or path.startswith("file:"):
            return None
        try:
            found = os.stat(path)
        except OSError:
            return f"the SQLite file {path} is gone" if self._file_identity is not None else None
        identity = (found.st_dev, found.st_ino)
        if self._file_identity is None:
            self._file_identity = identity
        elif identity != self._file_identity:
            return f"the SQLite file {path} was replaced by another file"
        return None

    def ping(self) -> bool:
        """Whether the database answers (a ``SELECT 1``; raises when it does not)."""
        with self.engine.connect() as conn:
            conn.execute(select(1))
        return True

    def drop_all(self) -> None:
        m.metadata.drop_all(self.engine)

    # -- accounts ---------------------------------------------------------------

    def create_account(self, name: str, tier: str, limits: str | None = None) -> dict[str, Any]:
        now = self.now()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(m.accounts).values(
                        name=name, tier=tier, status="active", limits=limits,
                        flagged=False, score=0.0, allowlisted=False, reviewed_queries=0,
                        created_at=now, updated_at=now,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"An account named {name!r} already exists.") from None
        return self.get_account(name)

    def get_account(self, name: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(m.accounts).where(m.accounts.c.name == name)).first()
        if row is None:
            raise NotFound(f"No account named {name!r}.")
        return dict(row._mapping)

    def account_name(self, account_id: int) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(m.accounts.c.name).where(m.accounts.c.id == account_id)).scalar()

    def list_accounts(self, status: str | None = None) -> list[dict[str, Any]]:
        keys = (
            select(m.api_keys.c.account_id, func.count().label("n"))
            .where(m.api_keys.c.revoked_at.is_(None))
            .group_by(m.api_keys.c.account_id)
            .subquery()
        )
        query = (
            select(m.accounts, func.coalesce(keys.c.n, 0).label("active_keys"))
            .outerjoin(keys, keys.c.account_id == m.accounts.c.id)
            .order_by(m.accounts.c.name)
        )
        if status is not None:
            query = query.where(m.accounts.c.status == status)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def update_account(self, name: str, **values: Any) -> dict[str, Any]:
        """Set ``status``, ``tier`` or ``limits`` of an account."""
        if "status" in values and values["status"] not in STATUSES:
            raise InvalidValue(f"Status must be one of {', '.join(STATUSES)}.")
        with self.engine.begin() as conn:
            result = conn.execute(
                update(m.accounts)
                .where(m.accounts.c.name == name)
                .values(updated_at=self.now(), **values)
            )
        if result.rowcount == 0:
            raise NotFound(f"No account named {name!r}.")
        return self.get_account(name)

    # -- keys -------------------------------------------------------------------

    def issue_key(self, account: str) -> tuple[NewKey, dict[str, Any]]:
        """Create a key for ``account``; the returned token is the only copy of the secret."""
        account_id = self.get_account(account)["id"]
        new = generate_key()
        with self.engine.begin() as conn:
            conn.execute(
                insert(m.api_keys).values(
                    account_id=account_id, prefix=new.prefix,
                    secret_hash=new.secret_hash, created_at=self.now(),
                )
            )
        return new, self.get_key(new.prefix)

    def get_key(self, prefix: str) -> dict[str, Any]:
        query = (
            select(
                m.api_keys.c.id, m.api_keys.c.prefix, m.api_keys.c.account_id,
                m.api_keys.c.created_at, m.api_keys.c.expires_at, m.api_keys.c.revoked_at,
                m.accounts.c.name.label("account"),
            )
            .join(m.accounts, m.accounts.c.id == m.api_keys.c.account_id)
            .where(m.api_keys.c.prefix == prefix)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise NotFound(f"No key with prefix {prefix!r}.")
        return dict(row._mapping)

    def list_keys(self, account: str) -> list[dict[str, Any]]:
        account_id = self.get_account(account)["id"]
        query = (
            select(m.api_keys.c.prefix, m.api_keys.c.created_at,
                   m.api_keys.c.expires_at, m.api_keys.c.revoked_at)
            .where(m.api_keys.c.account_id == account_id)
            .order_by(m.api_keys.c.created_at, m.api_keys.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def rotate_key(self, prefix: str, grace: float) -> tuple[NewKey, dict[str, Any]]:
        """Issue a new key for the owner of ``prefix``; the old key expires after ``grace`` seconds."""
        old = self.get_key(prefix)
        if old["revoked_at"] is not None:
            raise InvalidValue(f"Key {prefix!r} is revoked and cannot be rotated.")
        new, row = self.issue_key(old["account"])
        expires = self.now() + dt.timedelta(seconds=grace)
        current = _utc(old["expires_at"])
        if current is None or expires < current:
            with self.engine.begin() as conn:
                conn.execute(
                    update(m.api_keys).where(m.api_keys.c.prefix == prefix).values(expires_at=expires)
                )
        return new, row

    def revoke_key(self, prefix: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(m.api_keys)
                .where(m.api_keys.c.prefix == prefix, m.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )
        key = self.get_key(prefix)  # raises NotFound for an unknown prefix
        if result.rowcount == 0:
            raise InvalidValue(f"Key {prefix!r} is already revoked.")
        return key

    def lookup(self, prefix: str) -> Principal | None:
        """The key and its account in one round trip, or None."""
        query = (
            select(
                m.api_keys.c.id, m.api_keys.c.secret_hash, m.api_keys.c.expires_at,
                m.api_keys.c.revoked_at, m.accounts.c.id.label("account_id"),
                m.accounts.c.name, m.accounts.c.tier, m.accounts.c.status, m.accounts.c.limits,
                m.accounts.c.flagged, m.accounts.c.score,
            )
            .join(m.accounts, m.accounts.c.id == m.api_keys.c.account_id)
            .where(m.api_keys.c.prefix == prefix)
        )
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return Principal(
            key_id=row.id, prefix=prefix, secret_hash=row.secret_hash,
            expires_at=_epoch(row.expires_at), revoked=row.revoked_at is not None,
            account_id=row.account_id, account=row.name, tier=row.tier,
            status=row.status, limits=row.limits, flagged=bool(row.flagged), score=float(row.score or 0.0),
        )

    def account_prefixes(self, name: str) -> list[str]:
        return [k["prefix"] for k in self.list_keys(name)]

    # -- query events -----------------------------------------------------------

    def insert_events(self, rows: Sequence[dict[str, Any]], policy: FlagPolicy | None = None) -> list[Catch]:
        """Insert query-event rows, their watermark records and evaluations,
        and what ``policy`` decides of the accounts they concern (flags,
        action columns, alerts), in one transaction; returns the catches.

        The worker's hot path: with the common DBAPI parameter styles the event
        rows go straight to the driver's ``executemany`` (JSON columns
        serialised here), which costs about half of SQLAlchemy's per-row
        processing.
        """
        if not rows:
            return []
        with self.engine.begin() as conn:
            self._insert_rows(conn, rows)
            suspects = policy.suspects(rows) if policy is not None else set()
            if not suspects:
                return []
            assert policy is not None
            catches = policy.decide(rows, self._facts(conn, suspects))
            self._apply(conn, catches)
        return catches

    def _insert_rows(self, conn: Any, rows: Sequence[dict[str, Any]]) -> None:
        if self._raw_insert is None:
            conn.execute(insert(m.query_events), [{c: r[c] for c in _EVENT_COLUMNS} for r in rows])
        else:
            params = []
            for row in rows:
                values = [row[name] for name in _EVENT_COLUMNS]
                for i in _EVENT_JSON_AT:
                    if values[i] is not None:
                        values[i] = json.dumps(values[i])
                params.append(tuple(values))
            conn.exec_driver_sql(self._raw_insert, params)
        marks = [mark for row in rows for mark in row.get("watermarks") or ()]
        if marks:
            conn.execute(insert(m.watermarks), marks)
        evaluations = [row["evaluation"] for row in rows if row.get("evaluation")]
        if evaluations:
            conn.execute(insert(m.scores), evaluations)
            scored: dict[int, float] = {}
            for e in evaluations:  # the latest evaluation of each account sets its score
                value = (e.get("scores") or {}).get("malicious")
                if value is not None:
                    scored[e["account_id"]] = float(value)
            for account_id, value in scored.items():
                conn.execute(update(m.accounts).where(m.accounts.c.id == account_id).values(score=value))

    def _facts(self, conn: Any, account_ids: set[int]) -> dict[int, AccountFacts]:
        """What the flag policy needs to know of ``account_ids``."""
        a = m.accounts.c
        observed = set(conn.execute(select(m.alerts.c.account_id).where(
            m.alerts.c.account_id.in_(account_ids), m.alerts.c.action == "observe")).scalars())
        rows = conn.execute(select(a.id, a.flagged, a.allowlisted, a.reviewed_queries).where(a.id.in_(account_ids)))
        return {row.id: AccountFacts(bool(row.flagged), bool(row.allowlisted), int(row.reviewed_queries or 0),
                                     row.id in observed) for row in rows}

    def _apply(self, conn: Any, catches: Sequence[Catch]) -> None:
        """Write the policy's decisions: flags, action columns, one alert each."""
        if not catches:
            return
        a = m.accounts.c
        for catch in catches:
            if catch.flag:
                conn.execute(update(m.accounts).where(a.id == catch.account_id)
                             .values(flagged=True, updated_at=self.now(), **catch.columns))
        conn.execute(insert(m.alerts), [
            {"account_id": c.account_id, "ts": self.clock(), "action": c.action, "reason": c.reason,
             "acknowledged_at": None, "acknowledged_by": None} for c in catches])

    # -- watermarks and canaries --------------------------------------------------

    def watermark_records(self, account: str, limit: int | None = None) -> list[dict[str, Any]]:
        """An account's watermark records, one per distinct input, oldest first."""
        account_id = self.get_account(account)["id"]
        query = (
            select(m.watermarks)
            .where(m.watermarks.c.account_id == account_id)
            .order_by(m.watermarks.c.ts, m.watermarks.c.id)
        )
        seen: set[str] = set()
        records = []
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                if row.fingerprint not in seen:
                    seen.add(row.fingerprint)
                    records.append(dict(row._mapping))
                    if limit is not None and len(records) >= limit:
                        break
        return records

    def accounts_with_watermarks(self) -> list[str]:
        query = (
            select(m.accounts.c.name)
            .where(m.accounts.c.id.in_(select(m.watermarks.c.account_id).distinct()))
            .order_by(m.accounts.c.name)
        )
        with self.engine.connect() as conn:
            return [r.name for r in conn.execute(query)]

    def add_canaries(self, fingerprints: Sequence[str], note: str | None = None) -> int:
        """Register honey-trap fingerprints; returns how many were new."""
        known = self.canary_fingerprints()
        new = [fp for fp in dict.fromkeys(fingerprints) if fp not in known]
        if new:
            with self.engine.begin() as conn:
                conn.execute(insert(m.canaries), [{"fingerprint": fp, "note": note, "created_at": self.now()} for fp in new])
        return len(new)

    def score_history(self, account: str) -> list[dict[str, Any]]:
        account_id = self.get_account(account)["id"]
        query = select(m.scores).where(m.scores.c.account_id == account_id).order_by(m.scores.c.ts, m.scores.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def load_state(self, account_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(m.account_states.c.state).where(m.account_states.c.account_id == account_id)
            ).first()
        return None if row is None else row.state

    def merge_state(
        self, account_id: int, merge: Callable[[dict[str, Any] | None], dict[str, Any]]
    ) -> dict[str, Any]:
        """Replace an account's stored state by ``merge(stored)``; see :meth:`merge_states`."""
        return self.merge_states({account_id: merge})[account_id]

    def merge_states(
        self, merges: Mapping[int, Callable[[dict[str, Any] | None], dict[str, Any]]]
    ) -> dict[int, dict[str, Any]]:
        """Replace each account's stored state by ``merge(stored)``, all in one
        transaction (one commit, not one per account) with the rows locked in
        account order (``SELECT ... FOR UPDATE`` where the database has it;
        SQLite serialises writers anyway), so processes merging at the same
        time neither lose each other's deltas nor deadlock. A merge function
        may run twice (when another process inserted a first row meanwhile)."""
        table = m.account_states
        ids = sorted(merges)
        for attempt in range(2):
            try:
                merged: dict[int, dict[str, Any]] = {}
                with self.engine.begin() as conn:
                    stored: dict[int, Any] = {}
                    for start in range(0, len(ids), 500):
                        chunk = ids[start : start + 500]
                        query = (select(table.c.account_id, table.c.state).where(table.c.account_id.in_(chunk))
                                 .order_by(table.c.account_id).with_for_update())
                        stored.update((r.account_id, r.state) for r in conn.execute(query))
                    now = self.now()
                    new: list[dict[str, Any]] = []
                    old: list[dict[str, Any]] = []
                    for account_id in ids:
                        merged[account_id] = merges[account_id](stored.get(account_id))
                        row = {"b_id": account_id, "b_state": merged[account_id], "b_at": now}
                        (old if account_id in stored else new).append(row)
                    if new:
                        conn.execute(insert(table).values(account_id=bindparam("b_id"), state=bindparam("b_state"),
                                                          updated_at=bindparam("b_at")), new)
                    if old:
                        conn.execute(update(table).where(table.c.account_id == bindparam("b_id"))
                                     .values(state=bindparam("b_state"), updated_at=bindparam("b_at")), old)
                return merged
            except IntegrityError:
                if attempt:  # another process inserted a first row meanwhile: merge into it
                    raise
        raise AssertionError("unreachable")

    def benign_states(self, min_queries: int = 1) -> list[dict[str, Any]]:
        """Stored states of accounts that are active and not flagged (the
        anomaly models' picture of normal), with at least ``min_queries``."""
        query = (
            select(m.account_states.c.state)
            .join(m.accounts, m.accounts.c.id == m.account_states.c.account_id)
            .where(m.accounts.c.flagged.is_(False), m.accounts.c.status == "active")
        )
        with self.engine.connect() as conn:
            states = [r.state for r in conn.execute(query)]
        return [s for s in states if int(s["queries"]) >= min_queries]

    def save_reference(self, data: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(m.references.delete())
            conn.execute(insert(m.references).values(id=1, data=data, created_at=self.now()))

    def load_reference(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(m.references.c.data).where(m.references.c.id == 1)).first()
        return None if row is None else row.data

    def reference_version(self) -> Any:
        """When the stored reference was written (None: there is none): a cheap check for a new one."""
        with self.engine.connect() as conn:
            return conn.execute(select(m.references.c.created_at).where(m.references.c.id == 1)).scalar()

    def training_version(self) -> Any:
        """When the stored training set was written (None: there is none)."""
        with self.engine.connect() as conn:
            return conn.execute(select(m.training.c.created_at).where(m.training.c.id == 1)).scalar()

    def save_training(self, data: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(m.training.delete())
            conn.execute(insert(m.training).values(id=1, data=data, created_at=self.now()))

    def load_training(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(m.training.c.data).where(m.training.c.id == 1)).first()
        return None if row is None else row.data

    def save_detector_models(self, blob: bytes, meta: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(m.detector_models.delete())
            conn.execute(insert(m.detector_models).values(id=1, blob=blob, meta=meta, created_at=self.now()))

    def load_detector_models(self) -> tuple[bytes, dict[str, Any]] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(m.detector_models.c.blob, m.detector_models.c.meta)
                               .where(m.detector_models.c.id == 1)).first()
        return None if row is None else (bytes(row.blob), dict(row.meta))

    def canary_fingerprints(self) -> frozenset[str]:
        with self.engine.connect() as conn:
            return frozenset(r.fingerprint for r in conn.execute(select(m.canaries.c.fingerprint)))

    def count_events(self, account_id: int | None = None) -> int:
        query = select(func.count()).select_from(m.query_events)
        if account_id is not None:
            query = query.where(m.query_events.c.account_id == account_id)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def events(self, account_id: int) -> Iterable[dict[str, Any]]:
        query = (
            select(m.query_events)
            .where(m.query_events.c.account_id == account_id)
            .order_by(m.query_events.c.ts, m.query_events.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # == Admin queries (used by flask_modelguard.admin.service) ===================
    # Accounts filtered, sorted and paged in SQL with a total count, and the
    # flagged accounts with their latest reasons, in one query each. Only new
    # methods here: nothing above depends on them.

    #: The orders ``page_accounts`` knows: (column, descending) pairs, the
    #: account id last so that pages never overlap. "score" and "created_at"
    #: are the admin API's (ties by name, descending too), "rank" the
    #: dashboard's (highest score first, flagged before not, then by name).
    ACCOUNT_SORTS: Mapping[str, tuple[tuple[str, bool], ...]] = {
        "score": (("score", True), ("name", True)),
        "created_at": (("created_at", True), ("name", True)),
        "name": (("name", False),),
        "rank": (("score", True), ("flagged", True), ("name", False)),
    }

    def page_accounts(
        self, *, status: str | None = None, flagged: bool | None = None, tier: str | None = None,
        search: str | None = None, sort: str = "score", limit: int | None = 50, offset: int = 0,
        with_reasons: bool = False,
    ) -> tuple[list[dict[str, Any]], int]:
        """Accounts matching every filter given (``search``: part of the name,
        case-insensitive), in ``sort`` order (one of :attr:`ACCOUNT_SORTS`;
        names compare by code point on every database), at most ``limit``
        (None: all) from ``offset``; each with ``active_keys`` (its keys not
        revoked) and, ``with_reasons``, ``reasons`` (those of its latest
        evaluation that found something, [] if none). And how many match."""
        if sort not in self.ACCOUNT_SORTS:
            raise InvalidValue(f"sort must be one of {', '.join(self.ACCOUNT_SORTS)}.")
        a = m.accounts
        where = self._account_filters(status, flagged, tier, search)
        keys = (select(m.api_keys.c.account_id, func.count().label("n")).where(m.api_keys.c.revoked_at.is_(None))
                .group_by(m.api_keys.c.account_id).subquery())
        columns: list[Any] = [a, func.coalesce(keys.c.n, 0).label("active_keys")]
        if with_reasons:
            columns.append(self._latest_reasons().label("reasons"))
        order = [self._by_code_point(a.c[name]) if name == "name" else a.c[name] for name, _ in self.ACCOUNT_SORTS[sort]]
        directions = [d for _, d in self.ACCOUNT_SORTS[sort]]
        query = (select(*columns).outerjoin(keys, keys.c.account_id == a.c.id).where(*where)
                 .order_by(*[c.desc() if d else c.asc() for c, d in zip(order, directions)], a.c.id.asc())
                 .limit(limit).offset(offset))
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
            if limit is None and (rows or not offset):  # the whole rest: no second query to count
                total = offset + len(rows)
            else:
                total = int(conn.execute(select(func.count()).select_from(a).where(*where)).scalar_one())
        if with_reasons:
            for row in rows:
                row["reasons"] = list(row["reasons"] or [])
        return rows, total

    @staticmethod
    def _account_filters(status: str | None, flagged: bool | None, tier: str | None,
                         search: str | None) -> list[Any]:
        if status is not None and status not in STATUSES:
            raise InvalidValue(f"status must be one of {', '.join(STATUSES)}.")
        a = m.accounts
        where: list[Any] = []
        if status is not None:
            where.append(a.c.status == status)
        if flagged is not None:
            where.append(a.c.flagged.is_(bool(flagged)))
        if tier is not None:
            where.append(a.c.tier == tier)
        if search:
            where.append(a.c.name.icontains(search, autoescape=True))
        return where

    def _by_code_point(self, column: Any) -> Any:
        """``column`` compared by code point (SQLite's default; PostgreSQL's
        default collation follows the locale)."""
        return column.collate("C") if self.engine.dialect.name == "postgresql" else column

    @staticmethod
    def _latest_reasons() -> Any:
        """The reasons of the account's latest evaluation with any, as a correlated subquery."""
        s = m.scores
        return (select(s.c.reasons)
                .where(s.c.account_id == m.accounts.c.id, func.json_array_length(s.c.reasons) > 0)
                .order_by(s.c.ts.desc(), s.c.id.desc()).limit(1).correlate(m.accounts).scalar_subquery())
