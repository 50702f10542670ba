"""The group detector on a schedule: every ``interval`` seconds the worker
reads the recent states of unflagged accounts, looks for colluding groups
(:mod:`.detectors.groups`) and writes each group's verdict once: its members'
evaluations and flags per the flag policy, one alert and one webhook for the
group. Framework-free."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from .alerting import Alerter
from .detectors.groups import Group, GroupSearch
from .monitor import Monitor
from .persistence import StateStore
from .policy import FlagPolicy
from .repository import Repository
from .state import AccountState

log = logging.getLogger("flask_modelguard")


class GroupWatch:
    """Looks for colluding accounts among the stored states, on a schedule."""

    def __init__(self, monitor: Monitor, states: StateStore, repository: Repository, policy: FlagPolicy,
                 alerter: Alerter, *, interval: float = 60.0, window: float = 86_400.0, candidates: int = 2000,
                 search: GroupSearch | None = None, enabled: bool = True) -> None:
        self.monitor = monitor
        self.states = states
        self.repository = repository
        self.policy = policy
        self.alerter = alerter
        self.interval = interval
        #: Accounts whose state was merged within this many seconds are candidates.
        self.window = window
        self.candidates = candidates
        self.search = search or GroupSearch()
        self.enabled = enabled
        self._next = -float("inf")
        self._searching = threading.Lock()
        self.searches = self.groups = self.flagged = self.failed = 0
        self.last_candidates = 0
        self.last_seconds: float | None = None
        self.why = "off (MODELGUARD_GROUPS)" if not enabled else "no search yet"

    def reset_in_child(self) -> None:
        """A forked child: a search the parent was in is not the child's."""
        self._searching = threading.Lock()

    def tick(self, now: float) -> list[Group]:
        """A search when one is due (the worker calls this after each merge)."""
        if not self.enabled or now < self._next or not self._searching.acquire(blocking=False):
            return []  # (one search at a time: the worker's tick and a flush may both call)
        self._next = now + self.interval
        try:
            return self.scan(now)
        except Exception as exc:  # counted and shown; the next tick tries again
            failing = self.why.startswith("the last search failed")
            self.failed += 1
            self.why = f"the last search failed ({exc.__class__.__name__})"
            outage = isinstance(exc, SQLAlchemyError)  # the database away: expected, no traceback
            (log.debug if failing else log.warning)(
                "modelguard: the search for colluding accounts failed (%s); retrying every %.0f s",
                exc.__class__.__name__, self.interval, exc_info=None if outage else exc)
            return []
        finally:
            self._searching.release()

    def scan(self, now: float) -> list[Group]:
        """Search now; record and announce each group found."""
        reference = next((r for r in (self.monitor.reference, self.monitor.population_reference)
                          if r is not None and r.thresholds), None)
        if reference is None:
            self.why = "waiting for a reference with calibrated thresholds (ADD's or the population's)"
            return []
        started = time.perf_counter()
        states = self.states.candidates(now - self.window, self.candidates)
        found = self.search.find(states, reference)
        new = [group for group in found if self._record(group, states, now)]
        self.searches += 1
        self.groups += len(new)
        self.last_candidates, self.last_seconds = len(states), time.perf_counter() - started
        self.why = f"searched {len(states)} accounts in {self.last_seconds:.2f} s"
        return new

    def _record(self, group: Group, states: dict[int, AccountState], now: float) -> bool:
        """Write and announce a group's verdict; False when it was written before
        (another process, an earlier search in shadow mode)."""
        members = [int(a) for a in group.members]
        scores = {"malicious": min(1.0, group.ratio / 2.0), "group_ratio": group.ratio, "group_z": group.z,
                  "group_size": float(len(group.members)), "group_agreement": group.agreement}
        evaluations = {a: {"account_id": a, "ts": now, "queries": states[a].queries, "scores": scores,
                           "reasons": [group.reason]} for a in members}
        record = {"queries": group.queries, "ratio": group.ratio, "z": group.z, "reason": group.reason}
        catches = self.repository.record_group(record, evaluations, self.policy, since=now - self.window)
        self.flagged += sum(1 for c in catches if c.flag)
        self.alerter.announce_group(catches, group.reason)
        return bool(catches)

    def stats(self) -> dict[str, Any]:
        return {"group_searches": self.searches, "groups_found": self.groups,
                "group_members_flagged": self.flagged, "group_searches_failed": self.failed,
                "group_candidates": self.last_candidates, "group_search_seconds": self.last_seconds,
                "group_search": self.why}
