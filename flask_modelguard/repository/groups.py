"""Colluding groups: the candidate states the group search reads, and a
group's verdict written once (its members' evaluations, flags and one alert)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import func, insert, select, update

from .. import models as m
from ..policy import Catch, FlagPolicy
from .events import EventRows

#: PostgreSQL advisory lock key of group verdicts: processes that found the same group write it once.
GROUP_LOCK = 7305186421


class GroupRows(EventRows):
    """The group detector's reads and its one write."""

    def group_candidates(self, since: float, limit: int) -> dict[int, dict[str, Any]]:
        """Stored states of active accounts, neither flagged nor allow-listed,
        merged since ``since`` (epoch seconds): the ``limit`` latest."""
        a, s = m.accounts.c, m.account_states.c
        cutoff = dt.datetime.fromtimestamp(since, dt.timezone.utc)
        latest = (select(s.account_id).join(m.accounts, a.id == s.account_id)
                  .where(a.status == "active", a.flagged.is_(False), a.allowlisted.is_(False), s.updated_at >= cutoff)
                  .order_by(s.updated_at.desc(), s.account_id).limit(limit))
        with self.engine.connect() as conn:
            ids = list(conn.execute(latest).scalars())
            found: dict[int, dict[str, Any]] = {}
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                found.update(conn.execute(select(s.account_id, s.state).where(s.account_id.in_(chunk))).all())
        return found

    def unflagged(self, account_ids: Sequence[int]) -> set[int]:
        """Which of ``account_ids`` are active, neither flagged nor allow-listed."""
        a = m.accounts.c
        found: set[int] = set()
        with self.engine.connect() as conn:
            for start in range(0, len(account_ids), 500):
                chunk = list(account_ids[start : start + 500])
                found.update(conn.execute(select(a.id).where(
                    a.id.in_(chunk), a.status == "active", a.flagged.is_(False), a.allowlisted.is_(False))).scalars())
        return found

    def record_group(self, group: Mapping[str, Any], evaluations: Mapping[int, dict[str, Any]],
                     policy: FlagPolicy, since: float = 0.0) -> tuple[list[Catch], int | None]:
        """A group's verdict, serialised with every other process's (a
        PostgreSQL session lock taken before the transaction's snapshot;
        SQLite's ``BEGIN IMMEDIATE``): what ``policy`` decides of its members
        (``evaluations``: account id → evaluation row; the facts decide:
        flagged, allow-listed, reviewed), their evaluation rows, the group's
        row of the members caught (``group``: queries, ratio, z, reason) and
        one alert naming them. In shadow mode, members of a shadow-mode group
        found since ``since`` are not caught again, and a group sharing most of
        its members with such a group joins it without another alert. Returns
        the catches and the joined group's id, if any; no catches when no
        member is newly caught (another process wrote the group first)."""
        with self._serialised() as conn:
            earlier = conn.execute(select(m.account_groups).where(m.account_groups.c.ts >= since)).all()
            seen = {int(a) for r in earlier if r.action == "observe" for a in r.members}
            skip = seen if policy.action == "observe" else set()
            new = {a: e for a, e in evaluations.items() if a not in skip}
            rows = [{"account_id": a, "canary": False, "evaluation": e} for a, e in new.items()]
            catches = policy.decide(rows, self._facts(conn, set(new))) if new else []
            if not catches:
                return [], None
            caught = sorted(c.account_id for c in catches)
            self._insert_scores(conn, [new[a] for a in caught])
            joined = _joins(earlier, set(evaluations)) if policy.action == "observe" else None
            if joined is not None:
                self._join(conn, joined, caught, sum(int(new[a]["queries"]) for a in caught))
                self._apply(conn, catches, alerts=[])
                return catches, int(joined.id)
            conn.execute(insert(m.account_groups).values(
                ts=self.clock(), members=caught, action=catches[0].action,
                **{k: group[k] for k in ("queries", "ratio", "z", "reason")}))
            names = dict(conn.execute(select(m.accounts.c.id, m.accounts.c.name)
                                      .where(m.accounts.c.id.in_(caught))).all())
            members = ", ".join(str(names.get(a, a)) for a in caught)
            self._apply(conn, catches, alerts=[(caught[0], catches[0].action, f"{group['reason']}: {members}")])
        return catches, None

    @contextmanager
    def _serialised(self) -> Iterator[Any]:
        """A transaction no other process records a group during."""
        with self.engine.connect() as conn:
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({GROUP_LOCK})")
                conn.commit()  # (a session lock: the transaction below takes its snapshot after it)
            try:
                with conn.begin():
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN IMMEDIATE")
                    yield conn
            finally:
                if postgres:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({GROUP_LOCK})")
                    conn.commit()

    def _join(self, conn: Any, earlier: Any, members: list[int], queries: int) -> None:
        """New members of an earlier group, in its row."""
        conn.execute(update(m.account_groups).where(m.account_groups.c.id == earlier.id).values(
            members=sorted({*map(int, earlier.members), *members}), queries=earlier.queries + queries))

    def list_groups(self, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
        """Colluding groups found, newest first, each with its members' names (``accounts``)."""
        g = m.account_groups.c
        query = select(m.account_groups).order_by(g.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
            ids = sorted({int(a) for r in rows for a in r["members"]})
            names = dict(conn.execute(select(m.accounts.c.id, m.accounts.c.name).where(m.accounts.c.id.in_(ids)))
                         .all()) if ids else {}
        for row in rows:
            row["accounts"] = [names.get(int(a)) for a in row["members"]]
        return rows

    def count_groups(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(m.account_groups)).scalar_one())


def _joins(earlier: Sequence[Any], members: set[int]) -> Any:
    """The shadow-mode group holding most of ``members``, if one holds at least half."""
    shared = [(len(set(map(int, r.members)) & members), r) for r in earlier if r.action == "observe"]
    count, found = max(shared, key=lambda item: item[0], default=(0, None))
    return found if found is not None and 2 * count >= len(members) else None
