"""Colluding groups: the candidate states the group search reads, and a
group's verdict written once (its members' evaluations, flags and one alert)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import insert, select

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
        latest = (select(s.account_id).join(m.accounts, a.id == s.account_id)
                  .where(a.status == "active", a.flagged.is_(False), a.allowlisted.is_(False),
                         s.updated_at >= dt.datetime.fromtimestamp(since, dt.timezone.utc))
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
                     policy: FlagPolicy) -> list[Catch]:
        """A group's verdict, in one transaction serialised with every other
        process's: what ``policy`` decides of its members not in an earlier
        group (``evaluations``: account id → evaluation row), their evaluation
        rows, the group's row (``group``: queries, ratio, z, reason) and one
        alert naming every member. Nothing when no member is newly caught
        (another process wrote the group first; a shadow-mode group found again)."""
        with self.engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({GROUP_LOCK})")
            known = {int(a) for members in conn.execute(select(m.account_groups.c.members)).scalars() for a in members}
            new = {a: e for a, e in evaluations.items() if a not in known}
            rows = [{"account_id": a, "canary": False, "evaluation": e} for a, e in new.items()]
            catches = policy.decide(rows, self._facts(conn, set(new))) if new else []
            if not catches:
                return []
            self._insert_scores(conn, [new[c.account_id] for c in catches])
            conn.execute(insert(m.account_groups).values(
                ts=self.clock(), members=sorted(evaluations), action=catches[0].action,
                **{k: group[k] for k in ("queries", "ratio", "z", "reason")}))
            names = dict(conn.execute(select(m.accounts.c.id, m.accounts.c.name)
                                      .where(m.accounts.c.id.in_(list(evaluations)))).all())
            members = ", ".join(str(names.get(a, a)) for a in sorted(evaluations))
            self._apply(conn, catches, alert=(catches[0].action, f"{group['reason']}: {members}"))
        return catches

    def list_groups(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest colluding groups found, newest first."""
        query = select(m.account_groups).order_by(m.account_groups.c.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
