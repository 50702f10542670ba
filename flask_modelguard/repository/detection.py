"""What the detectors keep: account states, the reference, the training set and
fitted models, the canaries."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from .. import models as m
from .base import Base

#: One account's stored state (built once: SQLAlchemy builds a statement in about 100 µs).
_LOAD_STATE = select(m.account_states.c.state).where(m.account_states.c.account_id == bindparam("account_id"))


class DetectionRows(Base):
    """Account states, the reference, training data, fitted models and canaries."""

    def add_canaries(self, fingerprints: Sequence[str], note: str | None = None) -> int:
        """Register honey-trap fingerprints; returns how many were new."""
        known = self.canary_fingerprints()
        new = [fp for fp in dict.fromkeys(fingerprints) if fp not in known]
        if new:
            with self.engine.begin() as conn:
                conn.execute(insert(m.canaries), [{"fingerprint": fp, "note": note, "created_at": self.now()} for fp in new])
        return len(new)

    def load_state(self, account_id: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(_LOAD_STATE, {"account_id": account_id}).first()
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
        account order before they are read (``SELECT ... FOR UPDATE``; on
        SQLite, whose driver would only begin the transaction at the first
        write, ``BEGIN IMMEDIATE`` takes the write lock first), so processes
        merging at the same time neither lose each other's deltas nor
        deadlock. A merge function may run twice (when another process
        inserted a first row meanwhile)."""
        table = m.account_states
        ids = sorted(merges)
        for attempt in range(2):
            try:
                merged: dict[int, dict[str, Any]] = {}
                with self.engine.begin() as conn:
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the read-modify-write below, serialised
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
