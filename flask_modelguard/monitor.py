"""The detection loop of the worker: account states, detectors, verdicts.
Framework-free.

:class:`Monitor` receives one :class:`~flask_modelguard.state.Observation` per
answered request (in the worker thread, never in a request), updates the
account's state and PRADA, evaluates the detectors once the account has
``min_queries`` queries, then every ``every`` queries (and, once the account is large, every 5% of its size: the cost of
an evaluation does not grow with the account, so the amortised cost per query
falls). A verdict lists the reasons an account is malicious, e.g.
``"PRADA W=0.71 < 0.9"`` or ``"ADD 1121.8 > 652.6 at 100 queries"``; the
guard turns a non-empty verdict into a flag (the suspicious-account output
policy) and an alert.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .detectors.add import Reference, add_score
from .detectors.anomaly import AnomalyModel
from .detectors.population import PopulationSample
from .detectors.prada import Prada
from .detectors.registry import KINDS, evidence, ratios
from .detectors.supervised import StackedEnsemble, SupervisedModel
from .detectors.window import feature_entropy, rule_reasons
from .resident import ResidentAccount
from .state import AccountState, Observation, behaviour, label_key

log = logging.getLogger("flask_modelguard")


@dataclass
class Evaluation:
    """Detector scores of an account at one moment, and the verdict."""

    account_id: int
    ts: float
    queries: int
    scores: dict[str, float | None]
    reasons: list[str] = field(default_factory=list)

    @property
    def malicious(self) -> bool:
        return bool(self.reasons)


def ensemble(evidence: list[float]) -> float:
    """The malicious score in [0, 1] from each detector's evidence, its score
    divided by its own calibrated threshold (PRADA: ``(1 − W) / (1 − δ)``).

    It is ``max(evidence) / 2``, clipped: 0.5 exactly when the most convinced
    detector reaches its threshold, 1 at twice it. A detector's threshold is
    calibrated to its own benign false-positive rate, so the score crosses 0.5
    ("any detector fires") on at most the sum of those rates of benign
    evaluations (a union bound). Poisoning that grows with the score
    (``poison(p, p_max=...)``, ``misinformation(adaptive=True)``) reads it.
    """
    if not evidence:
        return 0.0
    return float(min(1.0, max(0.0, max(evidence) / 2.0)))


#: ``observe(stored=...)`` not given: the monitor's loader reads the stored state.
_UNREAD: Any = object()


class Monitor:
    """Per-account states and detectors of one process."""

    def __init__(
        self,
        dim: int,
        *,
        space: str = "",
        reference: Reference | None = None,
        prada_threshold: float = 0.9,
        min_queries: int = 20,
        every: int = 10,
        max_accounts: int = 10_000,
        max_seen: int = 512,
        loader: Callable[[int], AccountState | None] | None = None,
    ) -> None:
        self.dim = dim
        #: The feature space's name, given to new states (see MODELGUARD_FEATURE_SPACE).
        self.space = space
        self.reference = reference
        self.prada_threshold = prada_threshold
        self.min_queries = min_queries
        self.every = every
        self.max_accounts = max_accounts
        self.max_seen = max_seen
        self.accounts: OrderedDict[int, ResidentAccount] = OrderedDict()
        #: Reads an account's merged state from storage when it first shows up.
        self.loader = loader
        #: Deltas of accounts evicted from memory before they were merged.
        self.evicted: list[tuple[int, AccountState]] = []
        #: Held by observe() and the merge into storage (worker thread vs flush()).
        self.lock = threading.Lock()
        #: Fitted behaviour anomaly models (refitted by the guard on a schedule),
        #: and the supervised random forest when trained on labelled accounts.
        self.anomaly: list[AnomalyModel | SupervisedModel] = []
        #: Opt-in rules on windowed statistics (see detectors/window.py): name → parameters.
        self.rules: dict[str, dict[str, float]] = {}
        #: The stacked ensemble, when trained: it then gives the malicious score.
        self.ensemble: StackedEnsemble | None = None
        #: The reference-free detector (``MODELGUARD_POPULATION``): a sample of
        #: every account's recent queries, and the reference fitted on it.
        self.population: PopulationSample | None = None
        self.population_reference: Reference | None = None
        self.population_reason = "off"
        #: "auto" mode: the sample is only fed while there is no reference.
        self.population_auto = True
        #: Where features may lie, ``(low, high)`` (numbers or per-feature
        #: arrays): features beyond are clipped before any statistic sees them.
        #: None: the reference's widened range (:meth:`Reference.input_range`), if any.
        self.input_range: tuple[Any, Any] | None = None
        #: Feature rows clipped into the input range, and evaluations that failed.
        self.clipped = 0
        self.errors = 0
        #: Stored states that were not finite (from before inputs were bounded): started over.
        self.discarded = 0
        #: "any": an account is flagged when any detector crosses its threshold;
        #: "auto"/"ensemble": when an ensemble is trained, only when its score
        #: reaches 0.5 (one decision calibrated to one false-positive rate).
        self.verdict = "auto"

    def _account(self, account_id: int, stored: Any = _UNREAD) -> ResidentAccount:
        found = self.accounts.get(account_id)
        if found is None:
            if stored is _UNREAD:
                stored = self.loader(account_id) if self.loader is not None else None
            if stored is not None and not stored.finite():
                self.discarded += 1
                log.warning("modelguard: the stored state of account %s is not finite; its statistics start over",
                            account_id)
                stored = None
            found = self.accounts[account_id] = ResidentAccount(
                stored or AccountState(self.dim, space=self.space), Prada(self.prada_threshold), self.max_seen)
            if found.queries >= self.min_queries:  # judged before: next after ``every`` more, not at once
                # (an account back in memory each time it is used would otherwise cost an evaluation a query)
                found.evaluated = True
                found.since = max(0, max(self.every, found.queries // 20) - self.every)
            if len(self.accounts) > self.max_accounts:
                # The least recently active goes; its unmerged delta waits for the next merge.
                gone_id, gone = self.accounts.popitem(last=False)
                if gone.delta is not None and gone.delta.queries:
                    self.evicted.append((gone_id, gone.delta))
        else:
            self.accounts.move_to_end(account_id)
        return found

    def observe(self, account_id: int, obs: Observation, stored: Any = _UNREAD) -> Evaluation | None:
        """Add one request's observation; an :class:`Evaluation` when it is time for one.
        ``stored``: the account's stored state, read beforehand (outside :attr:`lock`)
        by a caller that saw the account was not in memory; else the ``loader`` reads it."""
        account = self._account(account_id, stored)
        self._bound(obs)
        hashes = [int(fingerprint[:16], 16) for fingerprint in obs.fingerprints]  # 64 bits of a keyed hash
        new = [account.seen.add(h) for h in hashes]  # a repeat is no new probe (PRADA would see distance 0)
        if len(new) == len(obs.labels):
            obs.new = new
        if account.delta is None:
            account.delta = AccountState(self.dim, space=self.space)
        account.delta.update(obs)
        for h, label in zip(hashes, obs.labels):
            account.window.add(h, label_key(label), obs.ts)
        if self.population is not None and len(obs.features) and (self.reference is None or not self.population_auto):
            rows = [i for i, is_new in enumerate(obs.new or [True] * len(obs.labels)) if is_new]
            if rows:
                self.population.add(account_id, np.asarray(obs.features)[rows], [obs.labels[i] for i in rows])
        points = obs.features if obs.raw is None else obs.raw
        for is_new, x, label in zip(obs.new or [True] * len(obs.labels), points, obs.labels):
            if is_new and np.any(x):  # an input without numbers gives PRADA nothing to measure
                account.prada.update(x, label_key(label))
        account.since += len(obs.labels)
        queries = account.queries
        due = max(self.every, queries // 20)
        stepped = not account.stepped and account.prada.step_evidence() >= 1.0
        if not stepped and (queries < self.min_queries or (account.evaluated and account.since < due)):
            return None
        account.stepped = account.stepped or stepped
        account.since, account.evaluated = 0, True
        try:
            return self.evaluate(account_id, obs.ts)
        except Exception as exc:  # a verdict of its own: never silently benign
            return self._failed(account_id, account, obs.ts, exc)

    def _bound(self, obs: Observation) -> None:
        """Clip the observation's features (and PRADA's points, when they are
        the same space) into the input range."""
        bounds = self.input_range
        if bounds is None and self.reference is not None:
            bounds = self.reference.input_range()
        features = np.asarray(obs.features, dtype=np.float64)
        if bounds is None or not features.size:
            return
        low, high = bounds
        if np.shape(low) not in ((), features.shape[1:]):
            return  # a reference of another dimension: the space check reports it
        outside = (features < low) | (features > high)
        if not outside.any():
            return
        self.clipped += int(outside.any(axis=1).sum())
        clipped = np.clip(features, low, high)
        if obs.raw is obs.features:
            obs.raw = clipped
        obs.features = clipped

    def _failed(self, account_id: int, account: ResidentAccount, ts: float, exc: Exception) -> Evaluation:
        """The evaluation of an account whose detectors failed: suspicious, with
        the error as its reason (hostile input must not buy a clean verdict)."""
        account.errors += 1
        self.errors += 1
        if account.errors == 1:
            log.warning("modelguard: detection failed for account %s (%s); treated as suspicious",
                        account_id, exc.__class__.__name__, exc_info=exc)
        scores: dict[str, float | None] = {"malicious": 0.5, "detection_errors": float(account.errors)}
        return Evaluation(account_id, ts, account.queries, scores,
                          [f"detection failed ({exc.__class__.__name__}): treated as suspicious"])

    def score_state(self, state: AccountState) -> dict[str, float | None]:
        """The behaviour vector of a state with ADD's score, threshold and ratio."""
        scores: dict[str, float | None] = dict(behaviour(state))
        for kind, reference in ((KINDS["add"], self.reference), (KINDS["population"], self.population_reference)):
            if reference is None or kind.ratio is None:
                continue
            value = add_score(state, reference)
            limit = reference.threshold(max(1, state.distinct))
            scores[kind.score], scores[kind.threshold_key] = value, limit
            if value is not None and limit:
                scores[kind.ratio] = value / limit
        return scores

    def population_status(self) -> dict[str, Any]:
        """Whether the reference-free detector is live, and why not (readiness.py)."""
        if self.population is None:
            return {"live": False, "why": self.population_reason}
        if self.population_reference is None:
            return {"live": False, "why": f"warming up: {self.population_reason}"}
        return {"live": True, "why": f"reference of the pooled traffic ({self.population_reason})"}

    def evaluate(self, account_id: int, ts: float) -> Evaluation:
        account = self._account(account_id)
        state = account.view()
        scores = self.score_state(state)
        window = account.window.stats()
        scores.update(window)
        scores["feature_entropy"] = feature_entropy(state.moments.cov()) if state.moments.n > 1 else None
        broken = rule_reasons(window, self.rules)  # opt-in rules flag whatever the verdict mode
        scores["steps"], scores["steps_ratio"] = account.prada.steps, account.prada.step_evidence()
        scores["prada_w"] = account.prada.statistic()
        for model in self.anomaly:
            value = scores[model.kind] = model.score(scores)
            if math.isfinite(model.threshold) and model.threshold > 0:
                scores[f"{model.kind}_ratio"] = value / model.threshold
        found = evidence(scores, self.prada_threshold, {model.kind: model.threshold for model in self.anomaly})
        if any(e.hard and e.over for e in found):  # benign inputs measured at none: flags whatever the verdict mode
            broken.append(f"sign steps: {account.prada.steps} of {account.prada.queries} queries")
        over = [e for e in found if e.over and not e.hard]
        reasons = [e.reason(state.distinct) for e in over]
        if self.ensemble is not None:
            stacked = scores["malicious"] = self.ensemble.malicious(ratios(found))
            if self.verdict != "any":  # the models' own flags give way to the ensemble's calibrated one
                named = "; ".join(e.reason(state.distinct) for e in over if KINDS[e.kind].threshold != "calibrated")
                reasons = [f"ensemble {stacked:.2f} >= 0.5 ({named or 'no single detector'})"] if stacked >= 0.5 else []
            elif stacked >= 0.5:
                reasons.append(f"ensemble {stacked:.2f} >= 0.5")
        else:
            scores["malicious"] = ensemble([e.ratio for e in found if e.ratio is not None])
        reasons.extend(broken)
        if account.errors:
            scores["detection_errors"] = account.errors
        clean = {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in scores.items()}
        return Evaluation(account_id, ts, state.queries, clean, reasons)

    def reset(self) -> None:
        """Forget everything (a forked child: the parent merges its own deltas)."""
        self.accounts = OrderedDict()
        self.evicted = []
        self.lock = threading.Lock()
        if self.population is not None:
            self.population = PopulationSample(self.population.capacity, self.population.max_share,
                                               space=self.population.space)

    def take_evicted(self) -> list[tuple[int, AccountState]]:
        """Only the evicted accounts' deltas (an early merge bounds their memory;
        call with :attr:`lock` held)."""
        pending, self.evicted = self.evicted, []
        return pending

    def take_deltas(self, min_queries: int = 1, stale_before: float = math.inf) -> list[tuple[int, AccountState]]:
        """Accounts with queries not yet merged into storage, and those deltas
        (evicted ones included), now being merged: the detectors still count
        them until :meth:`merged` or :meth:`unmerged` (call with :attr:`lock` held).
        A delta of fewer than ``min_queries`` queries waits unless its first
        query is older than ``stale_before``."""
        pending, self.evicted = self.evicted, []
        for account_id, account in self.accounts.items():
            delta = account.delta
            if delta is not None and delta.queries and (delta.queries >= min_queries
                                                        or delta.first_ts < stale_before):
                account.merging, account.delta = delta, None
                pending.append((account_id, delta))
        return pending

    def merged(self, account_id: int, state: AccountState) -> None:
        """Storage now holds ``state``, which includes this process's merged delta."""
        account = self.accounts.get(account_id)
        if account is not None:
            account.base, account.merging = state.compact(), None

    def unmerged(self, pending: list[tuple[int, AccountState]]) -> None:
        """The merge of these deltas failed: keep them for the next one."""
        for account_id, delta in pending:
            account = self.accounts.get(account_id)
            if account is not None and account.merging is delta:
                account.merging = None
                account.delta = delta if account.delta is None else delta.merge(account.delta)
            else:  # evicted before or meanwhile: merged with the evictions
                self.evicted.append((account_id, delta))

    def hand_over(self) -> list[tuple[int, AccountState]]:
        """Every unmerged delta, forgotten here (spilled at exit: never merged twice)."""
        pending = self.take_deltas()
        for account in self.accounts.values():
            account.merging = None
        return pending

    def state(self, account_id: int) -> AccountState | None:
        """What this process knows of an account (None when not in memory)."""
        found = self.accounts.get(account_id)
        return None if found is None else found.view()

    def forget(self, account_id: int) -> None:
        self.accounts.pop(account_id, None)

    def _state_bytes(self, sample: int = 1000) -> int:
        """Bytes the accounts' states hold, estimated from the ``sample`` most
        recently active ones (a sum over 100,000 accounts would cost 0.5 s)."""
        accounts = self.accounts
        if len(accounts) <= sample:
            return sum(a.memory_bytes() for a in accounts.values())
        recent = [accounts[k].memory_bytes() for k in itertools.islice(reversed(accounts), sample)]
        return int(sum(recent) / sample * len(accounts))

    def stats(self) -> dict[str, Any]:
        return {
            "accounts": len(self.accounts),
            "state_bytes": self._state_bytes(),
            "inputs_clipped": self.clipped,
            "evaluations_failed": self.errors,
            "states_discarded": self.discarded,
        }
