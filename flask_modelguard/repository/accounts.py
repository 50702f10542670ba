"""Accounts and their keys; the admin queries over accounts (filtered, sorted and paged in SQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .. import models as m
from ..exc import AlreadyExists, InvalidValue, NotFound
from ..keys import NewKey, Principal, generate_key
from .base import STATUSES, Base, _epoch, _utc


class AccountRows(Base):
    """Accounts and API keys."""

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
            if result.rowcount:
                account_id = conn.execute(select(m.accounts.c.id).where(m.accounts.c.name == name)).scalar_one()
                self.record_changes(conn, [int(account_id)])
        if result.rowcount == 0:
            raise NotFound(f"No account named {name!r}.")
        return self.get_account(name)

    # -- the change feed ----------------------------------------------------------

    def record_changes(self, conn: Any, account_ids: Sequence[int], prefixes: Sequence[str] = ()) -> None:
        """In ``conn``'s transaction: these accounts' (or keys') standing changed."""
        rows: list[dict[str, Any]] = [{"account_id": a, "prefix": None, "ts": self.clock()} for a in account_ids]
        rows += [{"account_id": None, "prefix": p, "ts": self.clock()} for p in prefixes]
        if rows:
            conn.execute(insert(m.account_changes), rows)

    def changes_since(self, last: int | None, also: Sequence[int] = (),
                      limit: int = 10_000) -> list[tuple[int, int | None, str | None]]:
        """The changes after id ``last``, and those with an id in ``also`` (ids
        skipped by an earlier read), oldest first: (id, account id, key prefix).
        ``last`` None: only the newest row, where the feed ends now (nothing, if empty)."""
        c = m.account_changes.c
        with self.engine.connect() as conn:
            if last is None:
                newest = conn.execute(select(func.max(c.id))).scalar()
                return [] if newest is None else [(int(newest), None, None)]
            where = c.id > last if not also else or_(c.id > last, c.id.in_(list(also)))
            rows = conn.execute(select(c.id, c.account_id, c.prefix).where(where).order_by(c.id).limit(limit)).all()
        return [(int(r.id), r.account_id, r.prefix) for r in rows]

    def purge_changes(self, before: float) -> int:
        """Rows older than ``before``, except the newest row: SQLite hands out
        max(id) + 1, so an emptied table would give ids the readers have passed."""
        c = m.account_changes.c
        with self.engine.begin() as conn:
            newest = conn.execute(select(func.max(c.id))).scalar()
            if newest is None:
                return 0
            return int(conn.execute(delete(m.account_changes).where(c.ts < before, c.id < newest)).rowcount)

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
                self.record_changes(conn, [], prefixes=[prefix])
        return new, row

    def revoke_key(self, prefix: str) -> dict[str, Any]:
        with self.engine.begin() as conn:
            result = conn.execute(
                update(m.api_keys)
                .where(m.api_keys.c.prefix == prefix, m.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=self.now())
            )
            if result.rowcount:
                self.record_changes(conn, [], prefixes=[prefix])
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
