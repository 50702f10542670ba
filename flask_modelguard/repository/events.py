"""Query events, their evaluations and watermark records, written in batches
with the flag policy's decisions."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update

from .. import models as m
from ..evidence import GENESIS, link
from ..ownership import select_probes
from ..policy import AccountFacts, Catch, FlagPolicy
from .accounts import AccountRows
from .base import _EVENT_COLUMNS, _EVENT_JSON_AT

#: A move of an account's malicious score this large reaches every process's key cache (a change row).
SCORE_BAND = 0.1
#: The first key of the PostgreSQL advisory locks that serialise an account's evidence chain.
EVIDENCE_LOCK = 730518


class EventRows(AccountRows):
    """Query events, scores and evidence records."""

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
        chained = self._chained(conn, marks) if marks else []
        if chained:
            conn.execute(insert(m.watermarks), chained)
        self._insert_scores(conn, [row["evaluation"] for row in rows if row.get("evaluation")])

    def _chained(self, conn: Any, marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``marks`` with their evidence links, each account's chain carried on
        from its latest record, poison and misinformation answers kept once an
        input and at most :attr:`evidence_limit` an account. Writers of one
        account's chain take turns: on PostgreSQL a transaction-scoped advisory
        lock per account (in id order, before this transaction locks any row);
        on SQLite the write lock this transaction holds since its first insert."""
        accounts = sorted({mark["account_id"] for mark in marks})
        w = m.watermarks
        heads = {}
        for account_id in accounts:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({EVIDENCE_LOCK}, {int(account_id)})")
            heads[account_id] = conn.execute(select(w.c.chain).where(w.c.account_id == account_id,
                                                                     w.c.chain.is_not(None))
                                             .order_by(w.c.id.desc()).limit(1)).scalar() or GENESIS
        out = []
        for mark in self._bounded(conn, marks):
            heads[mark["account_id"]] = link(heads[mark["account_id"]], mark)
            out.append({**mark, "chain": heads[mark["account_id"]]})
        return out

    def _bounded(self, conn: Any, marks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``marks`` but the deception answers of inputs with evidence already,
        and those beyond an account's :attr:`evidence_limit` (counted in
        :attr:`evidence_capped`)."""
        w = m.watermarks
        room: dict[int, int] = {}
        seen: dict[int, set[str]] = {}
        kept = []
        for mark in marks:
            if mark.get("kind", "watermark") == "watermark":
                kept.append(mark)
                continue
            account_id = mark["account_id"]
            if account_id in self._evidence_full:  # no more reads for an account at its limit
                self.evidence_capped += 1
                continue
            if account_id not in room:
                fingerprints = [x["fingerprint"] for x in marks if x["account_id"] == account_id]
                seen[account_id] = set(conn.execute(select(w.c.fingerprint).where(
                    w.c.account_id == account_id, w.c.fingerprint.in_(fingerprints))).scalars())
                recorded = select(w.c.id).where(w.c.account_id == account_id, w.c.kind != "watermark") \
                    .limit(self.evidence_limit).subquery()
                room[account_id] = self.evidence_limit - int(conn.execute(
                    select(func.count()).select_from(recorded)).scalar_one())
            if mark["fingerprint"] in seen[account_id]:
                continue
            seen[account_id].add(mark["fingerprint"])
            if room[account_id] <= 0:
                self.evidence_capped += 1
                self._evidence_full.add(account_id)
                continue
            room[account_id] -= 1
            kept.append(mark)
        return kept

    def _insert_scores(self, conn: Any, evaluations: Sequence[dict[str, Any]]) -> None:
        """Evaluation rows; the latest of each account sets its score."""
        if not evaluations:
            return
        conn.execute(insert(m.scores), evaluations)
        scored: dict[int, float] = {}
        for e in evaluations:
            value = (e.get("scores") or {}).get("malicious")
            if value is not None:
                scored[e["account_id"]] = float(value)
        before = dict(conn.execute(select(m.accounts.c.id, m.accounts.c.score)
                                   .where(m.accounts.c.id.in_(list(scored)))).all())
        for account_id, value in sorted(scored.items()):  # in id order, as every writer locks rows
            conn.execute(update(m.accounts).where(m.accounts.c.id == account_id).values(score=value))
        # Every process's cached score (it sets how hard deception bites) follows a move of SCORE_BAND.
        self.record_changes(conn, sorted(a for a, v in scored.items()
                                         if abs(v - float(before.get(a) or 0.0)) >= SCORE_BAND))

    def _facts(self, conn: Any, account_ids: set[int]) -> dict[int, AccountFacts]:
        """What the flag policy needs to know of ``account_ids``."""
        a = m.accounts.c
        observed = set(conn.execute(select(m.alerts.c.account_id).where(
            m.alerts.c.account_id.in_(account_ids), m.alerts.c.action == "observe")).scalars())
        rows = conn.execute(select(a.id, a.flagged, a.allowlisted, a.reviewed_queries).where(a.id.in_(account_ids)))
        return {row.id: AccountFacts(bool(row.flagged), bool(row.allowlisted), int(row.reviewed_queries or 0),
                                     row.id in observed) for row in rows}

    def _apply(self, conn: Any, catches: Sequence[Catch],
               alerts: Sequence[tuple[int, str, str]] | None = None) -> None:
        """Write the policy's decisions: flags, action columns, and one alert
        each, or ``alerts`` (account id, action, reason) instead (a group's one)."""
        if not catches:
            return
        a = m.accounts.c
        for catch in catches:
            if catch.flag:
                conn.execute(update(m.accounts).where(a.id == catch.account_id)
                             .values(flagged=True, updated_at=self.now(), **catch.columns))
        self.record_changes(conn, sorted({c.account_id for c in catches if c.flag}))
        if alerts is None:
            alerts = [(c.account_id, c.action, c.reason) for c in catches]
        conn.execute(insert(m.alerts), [
            {"account_id": account_id, "ts": self.clock(), "action": action, "reason": reason,
             "acknowledged_at": None, "acknowledged_by": None} for account_id, action, reason in alerts])

    # -- watermarks and canaries --------------------------------------------------

    def evidence_summary(self, account: str, latest: int = 20) -> tuple[int, list[dict[str, Any]], str | None]:
        """How many watermark records an account has, its latest ``latest``
        (newest first, without their inputs) and its chain head."""
        account_id = self.get_account(account)["id"]
        w = m.watermarks
        columns = [c for c in w.c if c.name != "input"]
        with self.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).where(w.c.account_id == account_id)).scalar_one())
            rows = [dict(r._mapping) for r in conn.execute(
                select(*columns).where(w.c.account_id == account_id).order_by(w.c.id.desc()).limit(latest))]
        head = next((r["chain"] for r in rows if r["chain"]), None)
        return total, rows, head

    def evidence_records(self, account: str) -> list[dict[str, Any]]:
        """Every watermark record of an account in chain (id) order, with its link."""
        account_id = self.get_account(account)["id"]
        query = select(m.watermarks).where(m.watermarks.c.account_id == account_id).order_by(m.watermarks.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def watermark_records(self, account: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The evidence records the ownership test asks about (:func:`~..ownership.select_probes`)."""
        return select_probes(self.evidence_records(account), limit)

    def accounts_with_watermarks(self) -> list[str]:
        query = (
            select(m.accounts.c.name)
            .where(m.accounts.c.id.in_(select(m.watermarks.c.account_id).distinct()))
            .order_by(m.accounts.c.name)
        )
        with self.engine.connect() as conn:
            return [r.name for r in conn.execute(query)]

    def score_history(self, account: str) -> list[dict[str, Any]]:
        account_id = self.get_account(account)["id"]
        query = select(m.scores).where(m.scores.c.account_id == account_id).order_by(m.scores.c.ts, m.scores.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def purge_events(self, before: float, batch: int = 10_000) -> int:
        """Delete the query events older than ``before`` (epoch seconds), oldest
        first, ``batch`` rows a transaction (a long purge never holds the
        table); returns how many. Watermark records, evaluations and alerts
        stay: they are evidence."""
        table = m.query_events
        total = 0
        while True:
            oldest = select(table.c.id).where(table.c.ts < before).order_by(table.c.id).limit(batch)
            with self.engine.begin() as conn:
                deleted = conn.execute(delete(table).where(table.c.id.in_(oldest.scalar_subquery()))).rowcount
            total += deleted
            if deleted < batch:
                return total

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
