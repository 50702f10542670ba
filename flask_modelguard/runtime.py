"""The per-application runtime of the guard: what ``init_app`` builds and the
request path runs through (authentication, limits, the view, output
protection, the event for the worker), and the worker's side (detection,
writes, state merges).
"""

from __future__ import annotations

import atexit
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import Flask, Response, current_app, request
from sqlalchemy import create_engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError, StatementError
from sqlalchemy.pool import StaticPool
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .alerts import Webhook
from .auth import Authenticator
from .config import Settings
from .detectors.add import Reference
from .detectors.anomaly import AnomalyModel
from .detectors.population import PopulationSample, fit_population
from .detectors.supervised import SupervisedModel, Trained, train
from .events import QueryEvent, fingerprint
from .exc import (
    BadRequest,
    CostExceedsLimit,
    HTTPProblem,
    PayloadTooLarge,
    Problem,
    RateLimitExceeded,
    StorageUnavailable,
)
from .features import Featurizer, flatten, space_name
from .monitor import Monitor
from .payload import instances, predictions
from .protection import OutputProtector, RouteOptions
from .quotas import LimitSet, QuotaEnforcer, Verdict, limit_set
from .readiness import detection_status
from .reference_data import digest, read_source
from .repository import Principal, Repository
from .responses import add_headers, problem_response
from .signals import account_blocked, account_flagged, quota_exceeded
from .spill import SpillDirectory
from .state import AccountState, Observation
from .telemetry import install as install_telemetry
from .worker import EventWorker

if TYPE_CHECKING:
    from .admin.store import AdminStore
    from .extension import ModelGuard

log = logging.getLogger("flask_modelguard")


def _bad_data(exc: BaseException) -> bool:
    """A write error retrying cannot fix: the rows are at fault, not the database."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return False  # connection lost, database down, locked: transient
    return isinstance(exc, (StatementError, TypeError, ValueError))


_live_states: weakref.WeakSet[GuardState] = weakref.WeakSet()


def _spill_directory(setting: Any, app: Flask) -> SpillDirectory | None:
    """MODELGUARD_SPILL: a directory, None for the app's instance folder, False for none."""
    if setting is False:
        return None
    return SpillDirectory(setting if setting else os.path.join(app.instance_path, "modelguard-spill"))


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body is larger than this API takes ({limit} bytes).")


def _reset_in_child() -> None:
    for state in list(_live_states):
        state.monitor.reset()  # the parent merges what it saw; the child starts afresh
        state._pid = os.getpid()
        state._served_once = False  # a forked worker checks its first request again
        if state.tables_pending:  # its worker's tick creates them once the database is back
            state.worker.start()


def _persist_at_exit() -> None:
    """Write queued events, then merge the account states they fed."""
    for state in list(_live_states):
        if state._pid == os.getpid():
            state.worker.final_flush()
            state._persist_quietly()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
atexit.register(_persist_at_exit)


def _dispose_in_child(engine: Any) -> Callable[[], None]:
    """Forget, without closing, connections inherited through fork (gunicorn --preload)."""
    ref = weakref.ref(engine)

    def dispose() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    return dispose


class GuardState:
    """Everything the guard keeps for one application."""

    def __init__(self, guard: ModelGuard, app: Flask, settings: Settings) -> None:
        self.guard = guard
        self._app = weakref.ref(app)  # signals name their app; the state does not keep it alive
        self.settings = settings
        self.clock = settings.clock or guard.clock
        url = settings.database_url or "sqlite:///" + os.path.join(app.instance_path, "modelguard.db")
        if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
            os.makedirs(os.path.dirname(os.path.abspath(url[len("sqlite:///"):])) or ".", exist_ok=True)
        engine_options = {"hide_parameters": True, **settings.engine_options}
        if url in ("sqlite://", "sqlite:///:memory:"):
            engine_options.setdefault("poolclass", StaticPool)
            engine_options.setdefault("connect_args", {"check_same_thread": False})
        engine = create_engine(url, **engine_options)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_dispose_in_child(engine))
        self._pid = os.getpid()
        self.repository = Repository(engine, clock=self.clock)
        self.enforcer = QuotaEnforcer(
            settings.storage_uri,
            tiers=settings.tiers,
            default_tier=settings.default_tier,
            strategy=settings.strategy,
            namespace=settings.namespace,
            fail_mode=settings.fail_mode,
            retry_interval=settings.storage_retry,
            storage_options=settings.storage_options,
        )
        self.auth = Authenticator(
            self.repository,
            auth_header=settings.auth_header,
            api_key_header=settings.api_key_header,
            ttl=settings.key_cache_ttl,
            maxsize=settings.key_cache_size,
            clock=self.clock,
        )
        fingerprint_key = settings.fingerprint_key(
            app.config.get("SECRET_KEY"), required=settings.enabled and not (app.debug or app.testing))
        self.fingerprint_key = fingerprint_key
        self.protector = OutputProtector(
            fingerprint_key,
            output=settings.output,
            tier_output=settings.tier_output,
            suspicious_output=settings.suspicious_output,
            watermark=settings.watermark,
            unrecognised=settings.unrecognised,
        )
        self.featurizer = Featurizer(settings.features, settings.feature_dim)
        self.raw = Featurizer(None, settings.feature_dim)  # PRADA's space: the inputs themselves
        #: The name of the feature space, stored with states and the reference.
        self.space = settings.feature_space or space_name(settings.features, settings.feature_dim)
        self.monitor = Monitor(
            settings.feature_dim,
            space=self.space,
            prada_threshold=settings.prada_threshold,
            min_queries=settings.detection_min_queries,
            every=settings.detection_every,
            max_accounts=settings.max_accounts,
            loader=self._load_state,
        )
        self.monitor.verdict = settings.verdict
        if settings.input_range is not None:
            self.monitor.input_range = (float(settings.input_range[0]), float(settings.input_range[1]))
        if settings.detection and settings.population is not False:
            self.monitor.population = PopulationSample(space=self.space)
            self.monitor.population_auto = settings.population == "auto"
            self.monitor.population_reason = "no population fitted yet"
        else:
            self.monitor.population_reason = "off (MODELGUARD_POPULATION)"
        self._next_population = 0.0
        #: Where a final flush that storage refuses leaves its events (MODELGUARD_SPILL).
        self.spill = _spill_directory(settings.spill, app)
        self.monitor.rules = settings.resolved_rules()
        self.worker: EventWorker[QueryEvent] = EventWorker(
            self._prepare,
            self._write_events,
            max_queue=settings.queue_size,
            max_bytes=settings.queue_bytes,
            probe=self.repository.ping,
            spill=None if self.spill is None else self.spill.write,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            shutdown_timeout=settings.shutdown_timeout,
            permanent=_bad_data,
            on_tick=self._tick,
            tick_interval=settings.key_cache_ttl,
        )
        _live_states.add(self)
        #: Requests served without a rate-limit check because the storage was down.
        self.failed_open = 0
        self._space_warned = False
        #: Events the detectors failed on (logged; the event itself is still written).
        self.detection_errors = 0
        #: Events the detectors could not judge (inputs and answers do not pair up).
        self.detection_skipped = 0
        self._next_refit = 0.0
        #: MODELGUARD_CREATE_TABLES could not create the tables yet (the worker retries).
        self.tables_pending = False
        self._file_problem: str | None = None
        self._served_once = False
        #: Accounts whose unmerged queries were lost at a shutdown during an outage (no spill folder).
        self.states_lost = 0
        #: Where the reference in use came from ("" none, "config:<digest>", "operator", "cli", "api").
        self.reference_source = ""
        self._reference_version: Any = None
        self._training_version: Any = None
        #: Where flag alerts are POSTed (MODELGUARD_ALERT_WEBHOOK), if anywhere.
        self.webhook = None if not settings.alert_webhook else Webhook(
            settings.alert_webhook, headers=dict(settings.alert_webhook_headers))
        actions: dict[str, dict[str, Any]] = {
            "observe": {"observe": True}, "degrade": {},
            "throttle": {"tier": settings.throttle_tier}, "block": {"status": "blocked"},
        }
        self._action = actions[settings.action]
        #: The admin tokens, alerts and audit log (set by ``init_app``).
        self.admin: AdminStore
        #: Prometheus metrics (docs/metrics.md); None when off or prometheus_client is missing.
        self.telemetry = install_telemetry(app, settings, self.worker, self.detection_status)
        if self.telemetry is not None:
            self.protector.on_unprotected = self.telemetry.unprotected

    def _prepare(self, event: QueryEvent) -> dict[str, Any]:
        """The event's row (worker thread); detection runs here, once per event."""
        row = event.to_row(self.fingerprint_key, self.settings.store_inputs)
        if self.settings.detection and 200 <= event.status < 300 and row["labels"]:
            try:
                self._detect(event, row)
            except Exception:  # detection must never cost the query log its row
                self.detection_errors += 1
                if self.detection_errors == 1 or self.detection_errors % 1000 == 0:
                    log.exception("modelguard: detection failed on an event (%d so far)", self.detection_errors)
        return row

    def _detect(self, event: QueryEvent, row: dict[str, Any]) -> None:
        """Feed the monitor; attach its evaluation, when one is due, to the row."""
        inputs = instances(event.request_json)
        if event.model_json is not None:
            found = predictions(event.model_json, event.adapter)
            labels, confidences = [p.label for p in found], [p.confidence for p in found]
        else:
            labels, confidences = row["labels"], row["top_confidences"]
        if len(inputs) != len(labels):
            self.detection_skipped += 1  # inputs and answers do not pair up: counted, not judged
            return
        features = np.stack([self.featurizer(x) for x in inputs])
        raw = features if self.featurizer.function is flatten else np.stack([self.raw(x) for x in inputs])
        obs = Observation(
            event.ts, [fingerprint(x, self.fingerprint_key) for x in inputs],
            features, labels, confidences, raw,
        )
        with self.monitor.lock:
            began = time.perf_counter()
            evaluation = self.monitor.observe(event.account_id, obs)
            took = time.perf_counter() - began
        if self.telemetry is not None:
            self.telemetry.detector(took, evaluation is not None)
        if evaluation is not None:
            row["evaluation"] = {
                "account_id": evaluation.account_id, "ts": evaluation.ts, "queries": evaluation.queries,
                "scores": evaluation.scores, "reasons": evaluation.reasons,
            }

    def _write_events(self, rows: Any) -> None:
        flagged = self.repository.insert_events(rows, self._action)
        if self.telemetry is not None:
            self.telemetry.sync(written=len(rows))
        if not flagged:
            return
        why: dict[int, str] = {}
        for row in rows:
            evaluation = row.get("evaluation")
            if row["canary"]:
                why.setdefault(row["account_id"], "sent a canary input")
            elif evaluation and evaluation["reasons"]:
                why.setdefault(row["account_id"], "; ".join(evaluation["reasons"]))
        for account_id in flagged:
            reason = why.get(account_id, "?")
            action = "canary" if reason.startswith("sent a canary") else self.settings.action
            if self.telemetry is not None:
                self.telemetry.flagged(action)
            what = "found by the detectors (shadow mode, not acted on)" if action == "observe" else "flagged"
            log.warning("modelguard: account %d %s (%s): %s", account_id, what, action, reason,
                        extra={"modelguard_account": account_id, "modelguard_action": action})
            self.auth.invalidate(account_id=account_id)
            if self.webhook is not None:
                try:
                    name = self.repository.account_name(account_id)
                except SQLAlchemyError:
                    name = None
                self.webhook.send({"event": "account_flagged", "account_id": account_id, "account": name,
                                   "action": action, "reason": reason, "ts": self.clock()})
            self._send(account_flagged, account_id=account_id, reason=reason, action=action)
            if action == "block":
                try:
                    name = self.repository.account_name(account_id)
                except SQLAlchemyError:
                    name = None
                self._send(account_blocked, account_id=account_id, account=name, reason=reason, by="detectors")

    def _send(self, signal: Any, **kwargs: Any) -> None:
        """Send ``signal`` for this app, each receiver on its own: one failing
        is logged and does not silence the others."""
        app = self._app()
        if app is None:
            return
        for receiver in signal.receivers_for(app):
            try:
                receiver(app, **kwargs)
            except Exception:
                log.exception("modelguard: a %s receiver failed", signal.name)

    def _load_state(self, account_id: int) -> AccountState | None:
        try:
            data = self.repository.load_state(account_id)
        except SQLAlchemyError as exc:
            log.warning("modelguard: could not load the state of account %d (%s)", account_id, exc.__class__.__name__)
            return None
        if data is None or not self._same_space(data):
            return None  # nothing stored, or a state of another feature space
        return AccountState.from_dict(data)

    def _same_space(self, data: dict[str, Any], what: str = "account state") -> bool:
        """Whether a stored state (or reference) is of this feature space (an
        unnamed one of the same dimension counts as one); logs the first mismatch."""
        space = data.get("space") or ""
        same = data.get("dim", self.settings.feature_dim) == self.settings.feature_dim and space in ("", self.space)
        if not same and not self._space_warned:
            self._space_warned = True
            log.warning("modelguard: a stored %s is of feature space %r, not %r: it is not used (account "
                        "statistics start over; refit the reference)", what, space or data.get("dim"), self.space)
        return same

    def persist_states(self, batch: int = 200) -> int:
        """Merge this process's account deltas into the stored states (the
        worker does it every key-cache TTL, and at flush and shutdown), up to
        ``batch`` accounts a transaction; returns how many accounts were merged."""
        done = 0
        with self.monitor.lock:
            pending = self.monitor.deltas()
            deltas: dict[int, AccountState] = {}
            for account_id, delta in pending:  # an evicted account back in memory has two
                deltas[account_id] = delta if account_id not in deltas else deltas[account_id].copy().merge(delta)
            ordered = list(deltas.items())
            merged_ids: set[int] = set()
            for start in range(0, len(ordered), batch):
                chunk = ordered[start : start + batch]
                results: dict[int, AccountState] = {}

                def merge(account_id: int, delta: AccountState,
                          results: dict[int, AccountState] = results) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
                    def merge_one(stored: dict[str, Any] | None) -> dict[str, Any]:
                        if stored is None or not self._same_space(stored):
                            merged = delta.copy()  # nothing stored, or another feature space: start over
                        else:
                            merged = AccountState.from_dict(stored).merge(delta)  # (the delta is only read)
                        if not merged.finite():  # never stored: the statistics start over from the delta
                            self.monitor.discarded += 1
                            log.warning("modelguard: account %s's merged state is not finite; not stored", account_id)
                            merged = delta.copy() if delta.finite() else AccountState(delta.dim, space=delta.space)
                        results[account_id] = merged
                        return merged.to_dict()
                    return merge_one

                try:
                    self.repository.merge_states({account_id: merge(account_id, delta) for account_id, delta in chunk})
                except Exception:
                    # Keep every delta not merged yet for the next attempt: an account in
                    # memory still holds its current one, not those of its evictions.
                    for later_id, later in pending:
                        account = self.monitor.accounts.get(later_id)
                        if later_id not in merged_ids and (account is None or account.delta is not later):
                            self.monitor.evicted.append((later_id, later))
                    raise
                for account_id, _ in chunk:
                    self.monitor.merged(account_id, results[account_id])
                    merged_ids.add(account_id)
                done += len(chunk)
        return done

    def _tick(self) -> None:
        if self.telemetry is not None:
            self.telemetry.sync()
        if self.tables_pending and not self.create_tables():
            return
        problem = self.repository.file_problem()
        if problem != self._file_problem:
            self._file_problem = problem
            if problem:
                log.error("modelguard: %s: events written now are lost; restart the server", problem)
        self._replay_spilled()
        self.refresh_canaries()
        try:
            self._reload_changed()
            self.persist_states()
            if self.monitor.population is not None and time.monotonic() >= self._next_population:
                self._next_population = time.monotonic() + self.settings.population_refit
                self.refit_population()
            if self.settings.anomaly_models and time.monotonic() >= self._next_refit:
                self._next_refit = time.monotonic() + self.settings.anomaly_refit
                self.refit_anomaly_models()
        except Exception as exc:
            log.warning("modelguard: could not store account states or refit (%s); retrying later",
                        exc.__class__.__name__)

    def refit_anomaly_models(self, kinds: Any = None, vectors: list[dict[str, Any]] | None = None) -> int:
        """Fit the anomaly models on benign behaviour ``vectors`` (default: the
        stored states of active, unflagged accounts, each scored as the
        monitor scores accounts). Runs in the worker on a schedule; returns how
        many accounts it was fitted on (0: too few, models left as they were)."""
        kinds = list(kinds or self.settings.anomaly_models)
        if vectors is None:
            vectors = []
            for data in self.repository.benign_states(self.settings.detection_min_queries):
                if self._same_space(data):
                    vectors.append(self.monitor.score_state(AccountState.from_dict(data)))
        if len(vectors) < 10:
            log.info("modelguard: %d benign accounts, too few to fit anomaly models", len(vectors))
            return 0
        models: list[Any] = [AnomalyModel(kind, fpr=self.settings.anomaly_fpr).fit(vectors) for kind in kinds]
        with self.monitor.lock:  # a trained random forest stays
            self.monitor.anomaly = models + [m for m in self.monitor.anomaly if isinstance(m, SupervisedModel)]
        return len(vectors)

    def refit_population(self) -> bool:
        """Fit the reference-free detector's reference on the pooled sample of
        every account's recent queries (the worker does it every
        ``MODELGUARD_POPULATION_REFIT`` seconds); in "auto" mode only while no
        reference exists. True when a reference was fitted."""
        monitor = self.monitor
        if monitor.population is None:
            return False
        if self.settings.population == "auto" and monitor.reference is not None:
            monitor.population_reference, monitor.population_reason = None, "not needed: ADD has a reference"
            return False
        with monitor.lock:
            sample = PopulationSample.from_dict(monitor.population.to_dict())  # fitted outside the lock
        fit = fit_population(sample)
        with monitor.lock:
            if fit.reference is not None:
                monitor.population_reference = fit.reference
                monitor.population_reason = f"{fit.accounts} accounts, {fit.rows} queries"
            else:
                monitor.population_reason = fit.reason
        return fit.reference is not None

    def fit_detectors(self, data: dict[str, Any], store: bool = True) -> Trained:
        """Train the anomaly models, the random forest and the stacked
        ensemble on a labelled set ``{"rows": [scores...], "labels": [bool...],
        "groups": [account...]}`` (what ``flask modelguard evaluate`` exports),
        store it (other processes fit the same models from it at start-up) and
        use them at once."""
        trained = train(data["rows"], data["labels"], data["groups"],
                        anomaly_kinds=list(self.settings.anomaly_models), fpr=self.settings.ensemble_fpr,
                        prada_threshold=self.settings.prada_threshold)
        if store:
            self.repository.save_training(data)
        with self.monitor.lock:
            self.monitor.anomaly = [*trained.anomaly, *([trained.supervised] if trained.supervised else [])]
            self.monitor.ensemble = trained.ensemble
        # a schedule refit would replace the anomaly models fitted with the ensemble
        self._next_refit = time.monotonic() + self.settings.anomaly_refit
        return trained

    def load_training(self, quiet: bool = False) -> None:
        try:
            self._training_version = self.repository.training_version()
            data = self.repository.load_training()
        except SQLAlchemyError as exc:
            (log.debug if quiet else log.warning)("modelguard: could not load the training set (%s)",
                                                  exc.__class__.__name__)
            return
        if data is not None:
            try:
                self.fit_detectors(data, store=False)
            except ValueError as exc:
                log.warning("modelguard: stored training set not usable (%s)", exc)
        if self.monitor.ensemble is None and self.settings.verdict == "ensemble" and self.settings.detection:
            log.warning("modelguard: MODELGUARD_VERDICT is 'ensemble' but no ensemble is trained "
                        "(flask modelguard fit-detectors); any detector flags until then")

    def fit_reference(self, inputs: Any, labels: Any, source: str = "api", **options: Any) -> Reference:
        """Fit ADD's reference on known-good model ``inputs`` and the model's
        ``labels``, use it at once and store it (other processes load it at
        their next worker tick). ``source`` says where it came from: a
        reference fitted from ``MODELGUARD_REFERENCE`` is ``config:<digest>``
        and gives way to one an operator fits."""
        X = np.stack([self.featurizer(x) for x in inputs])
        reference = Reference.fit(X, list(labels), **options)
        reference.space = self.space
        self.monitor.reference, self.reference_source = reference, source
        try:
            self.repository.save_reference({**reference.to_dict(), "source": source})
            self._reference_version = self.repository.reference_version()
        except SQLAlchemyError as exc:
            if not source.startswith("config:"):
                raise
            log.warning("modelguard: the reference fitted from MODELGUARD_REFERENCE is used but not stored (%s)",
                        exc.__class__.__name__)
        return reference

    def load_reference(self, quiet: bool = False) -> None:
        """Use the stored reference (``load_configured_reference`` then fits
        ``MODELGUARD_REFERENCE`` when the stored one did not come from it)."""
        try:
            data = self.repository.load_reference()
            self._reference_version = self.repository.reference_version()
        except SQLAlchemyError as exc:
            (log.debug if quiet else log.warning)("modelguard: could not load the reference (%s)", exc.__class__.__name__)
            data = None
        self._use_reference(data)

    def load_configured_reference(self) -> None:
        """At start-up: fit ``MODELGUARD_REFERENCE`` unless the stored reference
        was fitted on the same data (or by an operator)."""
        spec = self.settings.reference
        if spec is None:
            return
        inputs, labels = read_source(spec)
        source = "config:" + digest(inputs, labels, self.space)
        stored = self.reference_source
        if self.monitor.reference is not None and (stored == source or not stored.startswith("config:")):
            return
        began = time.perf_counter()
        self.fit_reference(inputs, labels, source=source)
        log.info("modelguard: ADD reference fitted from MODELGUARD_REFERENCE (%d inputs, %.1f s)",
                 len(inputs), time.perf_counter() - began)

    def detection_status(self) -> dict[str, Any]:
        """Which detectors are live and why the others are not (see readiness.py)."""
        return detection_status(self.monitor, self.settings, self.reference_source)

    def _use_reference(self, data: dict[str, Any] | None) -> None:
        reference = None if data is None else Reference.from_dict(data)
        if reference is not None and reference.space and reference.space != self.space:
            self._same_space({"space": reference.space}, "reference")
            reference = None
        self.monitor.reference = reference
        self.reference_source = "" if reference is None or data is None else str(data.get("source") or "operator")

    def _reload_changed(self) -> None:
        """The worker's tick: load a reference or a training set another
        process stored since (a version read, the data only when it changed)."""
        version = self.repository.reference_version()
        if version != self._reference_version:
            self._reference_version = version
            self._use_reference(self.repository.load_reference())
            log.info("modelguard: reference reloaded (stored by another process)")
        version = self.repository.training_version()
        if version != self._training_version:
            self.load_training(quiet=True)

    def _replay_spilled(self) -> None:
        """Events an earlier process spilled at shutdown: written with the next batch."""
        if self.spill is None:
            return
        rows = self.spill.claim()
        if rows:
            self.worker.replay(rows)
            log.warning("modelguard: %d events spilled by an earlier process are being written", len(rows))
        states = self.spill.claim("states")
        if states:
            with self.monitor.lock:  # merged into the stored states with this process's own, at the next merge
                self.monitor.evicted.extend((int(r["account_id"]), AccountState.from_dict(r["state"])) for r in states)
            log.warning("modelguard: %d account states spilled by an earlier process are being merged", len(states))

    def create_tables(self) -> bool:
        """``MODELGUARD_CREATE_TABLES``: create the tables, or, when the
        database is unreachable, say so once and leave it to the worker's
        tick (the server starts and serves per its fail mode meanwhile)."""
        try:
            self.repository.create_all()
        except SQLAlchemyError as exc:
            if not self.tables_pending:
                log.warning("modelguard: could not create the tables (%s: is the database reachable?); serving "
                            "meanwhile and retrying every %.0f s", exc.__class__.__name__, self.settings.key_cache_ttl)
            self.tables_pending = True
            self.worker.start()  # its tick retries, traffic or not
            return False
        if self.tables_pending:
            log.warning("modelguard: database reachable again: tables created")
            self.tables_pending = False
            self.refresh_canaries(quiet=True)
            self.load_training(quiet=True)
        return True

    def refresh_canaries(self, quiet: bool = False) -> None:
        """Reload the honey-trap fingerprints (the worker does it every key-cache TTL)."""
        try:
            self.protector.canaries = self.repository.canary_fingerprints()
        except SQLAlchemyError as exc:  # tables not created yet, database away
            (log.debug if quiet else log.warning)("modelguard: could not load canaries (%s)", exc.__class__.__name__)

    # -- the request path -------------------------------------------------------

    def guarded_call(self, view: Callable[..., Any], options: RouteOptions, args: Any, kwargs: Any) -> Any:
        if not self.settings.enabled:
            return view(*args, **kwargs)
        started = time.perf_counter()
        req = request._get_current_object()  # type: ignore[attr-defined]
        if not self._served_once:
            self._first_request(req.environ)
        route = options.name or req.endpoint or req.path
        now = self.clock()
        try:
            principal = self.auth.authenticate(req.headers)
        except Problem as problem:
            if problem.principal is not None:  # a known account refused: logged
                self._record(problem.principal, route, now, problem.status, started, 0, None, None)
            elif self.telemetry is not None:
                self.telemetry.request(problem.status, time.perf_counter() - started)
            return problem_response(problem)
        body, unreadable = self._read_body(req)
        if unreadable is not None:
            return self._refuse(unreadable, principal, route, now, started, 1, None)
        limits = self.enforcer.limits_for(principal.tier, principal.limits)
        try:
            cost = options.cost_of(body)
        except Exception as exc:
            return self._refuse(BadRequest(f"Cannot work out the cost of this request ({exc.__class__.__name__})."),
                                principal, route, now, started, 1, body)
        max_cost = limits.max_cost
        if max_cost is not None and cost > max_cost:
            return self._refuse(CostExceedsLimit(
                f"This request costs {cost} and the account's smallest limit allows {max_cost}"
                " per window; send smaller batches.", cost=cost, max_cost=max_cost,
            ), principal, route, now, started, cost, body)
        verdict = self.enforcer.hit(principal.account_id, limits, cost)
        # The verdict the headers show and its limits; the route's own verdict, if it has limits.
        shown, shown_limits, scoped = verdict, limits, None
        if verdict.allowed and options.limits:
            shown, shown_limits, scoped = self._hit_route(principal.account_id, route, options.limits, limits,
                                                          cost, verdict)
        wall = self.enforcer.clock()  # limit windows run on the storage's clock
        headers = self._headers(shown, shown_limits, wall)
        verdict = verdict if shown.allowed else shown
        if not verdict.allowed:
            if quota_exceeded.receivers and verdict.limit is not None:
                self._send(quota_exceeded, account_id=principal.account_id, limit=str(verdict.limit), cost=cost)
            return self._refuse(self._refusal(verdict, cost, wall, headers), principal, route, now, started, cost, body)
        if verdict.failed_open:
            self.failed_open += 1
        marks: list[Any] = []
        canary = False
        model_rv: Any = None
        view_started = time.perf_counter()
        view_ended = 0.0
        try:
            rv = model_rv = view(*args, **kwargs)
            view_ended = time.perf_counter()
            rv, marks, canary = self._protect(rv, body, principal, options, route)
            response = current_app.make_response(rv)
        except (Problem, HTTPException) as exc:
            view_ended = view_ended or time.perf_counter()
            if isinstance(exc, HTTPException):
                if exc.code is None or exc.code < 400:
                    raise
                refusal: Problem = HTTPProblem(exc.code, exc.name, exc.description or exc.name)
            else:
                refusal = exc
            refusal.headers = {**dict(headers), **refusal.headers}
            response, rv = problem_response(refusal), None
        except BaseException:
            self._record(principal, route, now, 500, started, cost, body, None,
                         view_seconds=(view_ended or time.perf_counter()) - view_started)
            raise
        else:
            if headers:
                add_headers(response, headers)
            if isinstance(rv, tuple):
                rv = rv[0]
            if not isinstance(rv, (dict, list)):
                rv = response.get_data() if response.is_json and not response.is_streamed else None
        model_answer = None
        if model_rv is not None and model_rv is not rv and self.settings.detection:
            model_answer = model_rv[0] if isinstance(model_rv, tuple) else model_rv
            if not isinstance(model_answer, (dict, list)):
                model_answer = None
        if 400 <= response.status_code < 500 and self.settings.deduct_when == "success":
            self.enforcer.refund(principal.account_id, limits, cost, verdict)  # the view refused it: free
            if scoped is not None and options.limits:
                self.enforcer.refund(f"{principal.account_id}@{route}", limit_set(options.limits), cost, scoped)
        self._record(principal, route, now, response.status_code, started, cost, body, rv, marks, canary, model_answer,
                     view_ended - view_started, options.adapter)
        return response

    def _protect(self, rv: Any, body: Any, principal: Principal, options: RouteOptions,
                 route: str = "") -> tuple[Any, list[Any], bool]:
        """Apply the route's output policy to a successful JSON answer."""
        policy = self.protector.policy(options, principal.tier)
        extra: tuple[Any, ...] = ()
        if isinstance(rv, tuple):
            rv, extra = rv[0], rv[1:]
            if extra and isinstance(extra[0], int) and not 200 <= extra[0] < 300:
                return (rv, *extra), [], False
        if isinstance(rv, Response):
            if not (rv.is_json and 200 <= rv.status_code < 300) or rv.is_streamed:
                return rv, [], False
            payload = rv.get_json(silent=True)
            if payload is None:
                return rv, [], False
            new, marks, canary = self.protector.protect(
                payload, body, principal.account_id, principal.flagged, principal.score, policy, options, route)
            if new is not payload:
                rv.set_data(current_app.json.dumps(new))
            return rv, marks, canary
        new, marks, canary = self.protector.protect(
            rv, body, principal.account_id, principal.flagged, principal.score, policy, options, route)
        return ((new, *extra) if extra else new), marks, canary

    def _refuse(
        self, problem: Problem, principal: Principal, route: str, now: float,
        started: float, cost: int, body: Any,
    ) -> Response:
        self._record(principal, route, now, problem.status, started, cost, body, None)
        return problem_response(problem)

    def _record(
        self, principal: Principal, route: str, now: float, status: int,
        started: float, cost: int, body: Any, answer: Any,
        marks: list[Any] | None = None, canary: bool = False, model_answer: Any = None,
        view_seconds: float = 0.0, adapter: Any = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        self.worker.submit(
            QueryEvent(
                principal.account_id, principal.key_id, route, now, status,
                elapsed * 1000.0, cost, body, answer, marks, canary, model_answer, adapter,
            ),
            request.content_length or 0,  # the body it holds, for the queue's byte bound
        )
        telemetry = self.telemetry
        if telemetry is not None:  # poisoned: answered under the suspicious-account policy
            telemetry.request(status, elapsed - view_seconds, bool(marks),
                              principal.flagged or canary or principal.account_id in self.protector.caught)

    def _hit_route(self, account_id: int, route: str, spec: str, limits: LimitSet, cost: int,
                   verdict: Verdict) -> tuple[Verdict, LimitSet, Verdict]:
        """The route's own limits (``@protect(limits=...)``) after the account's:
        the verdict to show and its limits (the one that binds; a refusal by
        the route gives the account's count back), and the route's own verdict."""
        own = limit_set(spec)
        scoped = self.enforcer.hit(f"{account_id}@{route}", own, cost)
        if not scoped.allowed:
            self.enforcer.refund(account_id, limits, cost, verdict)
            return scoped, own, scoped
        if scoped.limit is not None and (verdict.limit is None or scoped.remaining < verdict.remaining):
            return scoped, own, scoped
        return verdict, limits, scoped

    def _first_request(self, environ: Any) -> None:
        """Checks only a request can make: several processes serving one app
        (``wsgi.multiprocess``, e.g. gunicorn with 2+ workers) with limits in
        process memory count each process's share apart: say so, once."""
        self._served_once = True
        if environ.get("wsgi.multiprocess") and self.settings.storage_uri.startswith("memory://"):
            log.warning("modelguard: several processes serve this app but MODELGUARD_STORAGE_URI is memory://: "
                        "each process counts its own limits, so an account gets its limits once per process. "
                        "Share them: MODELGUARD_STORAGE_URI = \"redis://host:6379/0\" (docs/deployment.md).")

    def _read_body(self, req: Any) -> tuple[Any, Problem | None]:
        """The JSON body (None unless one; cached for the view), or the problem
        that refuses it: larger than ``MODELGUARD_MAX_BODY`` (413, before
        anything is read, chunked bodies cut off at the bound), nested too
        deeply, or unreadable (a broken chunked encoding, a client gone)."""
        limit = self.settings.max_body
        if req.max_content_length is not None:  # the app's MAX_CONTENT_LENGTH, when smaller
            limit = min(limit, req.max_content_length)
        if req.content_length is not None and req.content_length > limit:
            return None, _too_large(limit)
        try:  # Flask >= 3.1: a chunked body is read up to one byte past the bound, no further
            req.max_content_length = limit + 1
        except AttributeError:
            pass
        try:
            # Read here: get_json(silent=True) would hide a broken stream.
            if req.is_json and len(req.get_data(cache=True)) > limit:
                return None, _too_large(limit)
            return req.get_json(silent=True), None
        except RecursionError:
            return None, BadRequest("The JSON body is nested too deeply.")
        except RequestEntityTooLarge:
            return None, _too_large(limit)
        except (HTTPException, ValueError, OSError) as exc:
            return None, BadRequest(f"The request body could not be read ({exc.__class__.__name__}).")

    def _headers(self, verdict: Verdict, limits: LimitSet, now: float) -> list[tuple[str, str]]:
        if not self.settings.headers_enabled or verdict.limit is None:
            return []
        return QuotaEnforcer.headers(verdict, limits, now)

    @staticmethod
    def _refusal(verdict: Verdict, cost: int, now: float, headers: list[tuple[str, str]]) -> Problem:
        retry_after = str(max(1, int(-(-(verdict.reset - now) // 1))))
        if verdict.unavailable:
            return StorageUnavailable(
                "The rate-limit storage is unreachable; try again shortly.",
                headers={"Retry-After": retry_after},
            )
        item = verdict.limit
        assert item is not None
        return RateLimitExceeded(
            f"Over the limit of {item.amount} per {item.multiples} {item.GRANULARITY.name}"
            f" (this request costs {cost}).",
            headers={**dict(headers), "Retry-After": retry_after},
            limit=str(item), cost=cost, retry_after=int(retry_after),
        )

    def close(self) -> None:
        self.worker.stop()
        self._persist_quietly()
        if self.webhook is not None:
            self.webhook.flush(self.settings.shutdown_timeout)
        self.repository.engine.dispose()

    def _persist_quietly(self) -> None:
        """Merge the account deltas at exit; when storage refuses, spill them
        (the next process merges them) or count them, with one log line."""
        try:
            self.persist_states()
        except SQLAlchemyError as exc:
            with self.monitor.lock:
                pending = self.monitor.deltas()
                for account in self.monitor.accounts.values():
                    account.delta = None  # handed over below: never merged twice
            rows = [{"account_id": account_id, "state": delta.to_dict()} for account_id, delta in pending]
            if self.spill is not None and rows:
                try:
                    self.spill.write(rows, kind="states")
                    log.error("modelguard: account states not stored (%s): %d accounts' spilled, to be merged at "
                              "the next start", exc.__class__.__name__, len(rows))
                    return
                except OSError:
                    pass
            self.states_lost += len(rows)
            log.error("modelguard: account states not stored (%s): %d accounts' queries lost from their statistics",
                      exc.__class__.__name__, len(rows))
