"""Account states between memory and storage: the monitor's loader, the
periodic merge of this process's deltas into the stored states, and what
happens to unmerged deltas at a shutdown the storage refuses (spilled for the
next start, or counted). Framework-free."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .features import FeatureSpace
from .monitor import Monitor
from .repository import Repository
from .spill import SpillDirectory
from .state import AccountState

log = logging.getLogger("flask_modelguard")

Merge = Callable[[dict[str, Any] | None], dict[str, Any]]

#: Deltas of evicted accounts that make the worker merge them at once (each
#: holds at most an account's statistics since its last merge).
EARLY_MERGE = 1000
#: The worker's scheduled merge takes an account's delta once it holds this
#: many queries, or once its first query is :data:`MERGE_AGE` seconds old: a
#: merge reads, merges and writes the whole state (about 0.5 ms), so with
#: 100,000 accounts a merge per account and per tick would cost more than the
#: queries. Merges per second stay below events/10 + accounts/3600; a quiet
#: account's statistics reach storage (and the other processes) later.
MERGE_QUERIES = 10
MERGE_AGE = 3600.0


class StateStore:
    """Merges the monitor's account deltas into ``repository``."""

    def __init__(self, monitor: Monitor, repository: Repository, space: FeatureSpace,
                 spill: SpillDirectory | None = None) -> None:
        self.monitor = monitor
        self.repository = repository
        self.space = space
        self.spill = spill
        self._persisting = threading.Lock()
        #: Accounts whose unmerged queries were lost at a shutdown during an outage (no spill folder).
        self.lost = 0

    def reset_in_child(self) -> None:
        """A forked child: a merge the parent was in is not the child's."""
        self._persisting = threading.Lock()

    def load(self, account_id: int) -> AccountState | None:
        """An account's stored state (None: none, another feature space, or storage away)."""
        try:
            data = self.repository.load_state(account_id)
        except SQLAlchemyError as exc:
            log.warning("modelguard: could not load the state of account %d (%s)", account_id, exc.__class__.__name__)
            return None
        if data is None or not self.space.holds(data):
            return None
        return AccountState.from_dict(data)

    def candidates(self, since: float, limit: int) -> dict[int, AccountState]:
        """What the group search reads: the stored states of unflagged accounts
        merged since ``since`` (at most ``limit``), each with this process's
        unmerged queries (evicted accounts' too), then the most recently active
        accounts only this process holds yet, unflagged, up to ``limit``. Read
        between merges: no delta is counted twice."""
        with self._persisting:
            stored = self.repository.group_candidates(since, limit)
            states = {a: AccountState.from_dict(d) for a, d in stored.items() if self.space.holds(d)}
            room = max(0, limit - len(states))
            with self.monitor.lock:
                accounts = self.monitor.accounts
                unmerged = [(a, d.copy()) for a in states if a in accounts
                            and (d := accounts[a].delta) is not None and d.queries]
                unmerged += [(a, d.copy()) for a, d in self.monitor.evicted if a in states]
                resident = {a: r.view() for a, r in itertools.islice(
                    ((a, r) for a, r in reversed(accounts.items()) if a not in stored and r.delta is not None),
                    room)}
        for account_id, delta in unmerged:
            states[account_id].merge(delta)
        fresh = self.repository.unflagged(sorted(resident)) if resident else set()
        states.update((a, resident[a]) for a in sorted(fresh))
        return states

    def persist(self, batch: int = 200, now: float | None = None) -> int:
        """Merge every account's unmerged delta into its stored state (at flush
        and shutdown), up to ``batch`` accounts a transaction; returns how many
        accounts were merged. With ``now`` (the worker's schedule, every
        key-cache TTL), only deltas of :data:`MERGE_QUERIES` queries or older
        than :data:`MERGE_AGE`. The monitor's lock is held only to take the
        deltas and to hand the results back, never across a database round trip."""
        with self._persisting:  # one merge at a time (the worker's tick, a flush, exit)
            return self._persist(batch, scheduled_at=now)

    def persist_evicted(self, batch: int = 200) -> int:
        """Merge the deltas of accounts evicted from memory now (the worker does
        it once :data:`EARLY_MERGE` wait), so that they never pile up between
        the scheduled merges."""
        with self._persisting:
            return self._persist(batch, evicted_only=True)

    def _persist(self, batch: int, evicted_only: bool = False, scheduled_at: float | None = None) -> int:
        """:meth:`persist` with ``_persisting`` held."""
        with self.monitor.lock:
            if evicted_only:
                pending = self.monitor.take_evicted()
            elif scheduled_at is not None:
                pending = self.monitor.take_deltas(MERGE_QUERIES, scheduled_at - MERGE_AGE)
            else:
                pending = self.monitor.take_deltas()
        deltas: dict[int, AccountState] = {}
        for account_id, delta in pending:  # an evicted account back in memory has two
            deltas[account_id] = delta if account_id not in deltas else deltas[account_id].copy().merge(delta)
        ordered = list(deltas.items())
        merged_ids: set[int] = set()
        try:
            for start in range(0, len(ordered), batch):
                chunk = ordered[start : start + batch]
                results: dict[int, AccountState] = {}
                self.repository.merge_states({a: self._merge(a, delta, results) for a, delta in chunk})
                with self.monitor.lock:
                    for account_id, _ in chunk:
                        self.monitor.merged(account_id, results[account_id])
                merged_ids.update(account_id for account_id, _ in chunk)
        except BaseException:  # (an interrupt too: a delta taken is never dropped)
            with self.monitor.lock:
                self.monitor.unmerged([(a, d) for a, d in pending if a not in merged_ids])
            raise
        return len(merged_ids)

    def _merge(self, account_id: int, delta: AccountState, results: dict[int, AccountState]) -> Merge:
        """The read-modify-write of one account's stored state (run by the
        repository inside its transaction); the result lands in ``results``."""

        def merge_one(stored: dict[str, Any] | None) -> dict[str, Any]:
            if stored is None or not self.space.holds(stored):
                merged = delta.copy()  # nothing stored, or another feature space: start over
            else:
                merged = AccountState.from_dict(stored).merge(delta)  # (the delta is only read)
            if not merged.finite():  # never stored: the statistics start over from the delta
                with self.monitor.lock:
                    self.monitor.discarded += 1
                log.warning("modelguard: account %s's merged state is not finite; not stored", account_id)
                merged = delta.copy() if delta.finite() else AccountState(delta.dim, space=delta.space)
            results[account_id] = merged
            return merged.to_dict()

        return merge_one

    def persist_or_spill(self) -> None:
        """At exit: merge the deltas; when storage refuses, spill them (the next
        process merges them) or count them, with one log line."""
        with self._persisting:  # no merge by the worker between the failed one and the hand-over
            try:
                self._persist(200)
            except SQLAlchemyError as exc:
                self._spill_or_count(exc)

    def _spill_or_count(self, exc: SQLAlchemyError) -> None:
        with self.monitor.lock:
            pending = self.monitor.hand_over()  # spilled or counted below: never merged twice
        rows = [{"account_id": account_id, "state": delta.to_dict()} for account_id, delta in pending]
        if self.spill is not None and rows:
            try:
                self.spill.write(rows, kind="states")
                log.error("modelguard: account states not stored (%s): %d accounts' spilled, to be merged at "
                          "the next start", exc.__class__.__name__, len(rows))
                return
            except OSError:
                pass
        self.lost += len(rows)
        log.error("modelguard: account states not stored (%s): %d accounts' queries lost from their statistics",
                  exc.__class__.__name__, len(rows))

    def replay_spilled(self) -> None:
        """States an earlier process spilled at shutdown: merged into the stored
        states with this process's own, at the next merge."""
        if self.spill is None:
            return
        states = self.spill.claim("states")
        if states:
            with self.monitor.lock:
                self.monitor.evicted.extend((int(r["account_id"]), AccountState.from_dict(r["state"])) for r in states)
            log.warning("modelguard: %d account states spilled by an earlier process are being merged", len(states))
