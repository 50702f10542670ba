"""Colluding groups: the candidate states the group search reads, and a
group's verdict written once (its members' evaluations, flags and one alert)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, insert, select

from .. import models as m
from ..lifecycle import serialised
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
            grouped = {int(a) for members in conn.execute(select(m.account_groups.c.members).where(
                m.account_groups.c.ts >= since)).scalars() for a in members}
            ids = [a for a in conn.execute(latest.limit(limit + len(grouped))).scalars() if a not in grouped][:limit]
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
                     policy: FlagPolicy, since: float = 0.0) -> list[Catch]:
        """A group's verdict, serialised with every other process's (a
        PostgreSQL session lock taken before the transaction's snapshot;
        SQLite's ``BEGIN IMMEDIATE``): what ``policy`` decides of its members
        (``evaluations``: account id → evaluation row; the facts decide:
        flagged, allow-listed, reviewed; in shadow mode, members of a group
        found since ``since`` are not caught again), their evaluation rows,
        the group's row of the members caught (``group``: queries, ratio, z,
        reason) and one alert naming them. Returns the catches: none when no
        member is newly caught (another process wrote the group first)."""
        with serialised(self.engine, GROUP_LOCK) as conn:
            earlier = conn.execute(select(m.account_groups.c.members).where(m.account_groups.c.ts >= since,
                                                                           m.account_groups.c.action == "observe"))
            seen = {int(a) for members in earlier.scalars() for a in members} if policy.action == "observe" else set()
            new = {a: e for a, e in evaluations.items() if a not in seen}
            rows = [{"account_id": a, "canary": False, "evaluation": e} for a, e in new.items()]
            catches = policy.decide(rows, self._facts(conn, set(new))) if new else []
            if not catches:
                return []
            caught = sorted(c.account_id for c in catches)
            self._insert_scores(conn, [new[a] for a in caught])
            conn.execute(insert(m.account_groups).values(
                ts=self.clock(), members=caught, action=catches[0].action,
                **{k: group[k] for k in ("queries", "ratio", "z", "reason")}))
            names = dict(conn.execute(select(m.accounts.c.id, m.accounts.c.name)
                                      .where(m.accounts.c.id.in_(caught))).all())
            members = ", ".join(str(names.get(a, a)) for a in caught)
            self._apply(conn, catches, alerts=[(caught[0], catches[0].action, f"{group['reason']}: {members}")])
        return catches

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

