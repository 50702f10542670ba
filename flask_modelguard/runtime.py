"""What ``init_app`` builds for one application, wired together: the request
path (:mod:`.serving`), the worker and its pipeline (:mod:`.pipeline`,
:mod:`.policy`, :mod:`.alerting`), account states (:mod:`.persistence`), the
detectors' fitted parts (:mod:`.training`), and their life across forks and
exit (:mod:`.lifecycle`). This module only builds and schedules; each part
does its own job.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app
from sqlalchemy.exc import SQLAlchemyError

from . import lifecycle
from .alerting import Alerter
from .alerts import Webhook
from .auth import Authenticator
from .changes import ChangeFeed
from .config import Settings
from .detectors.add import Reference
from .detectors.supervised import Trained
from .events import QueryEvent
from .features import FeatureSpace, Featurizer, space_name
from .keycache import FeedWatch
from .parts import bad_data, enforcer_of, groups_of, monitor_of, protector_of, spill_directory
from .persistence import EARLY_MERGE, StateStore
from .pipeline import Pipeline
from .policy import FlagPolicy
from .publishing import Publisher
from .readiness import warn_if_degraded
from .repository import Repository
from .serving import RequestPath
from .stream import EventStream
from .telemetry import install as install_telemetry
from .training import Training
from .worker import EventWorker

if TYPE_CHECKING:
    import threading

    from .admin.store import AdminStore
    from .consumer import StreamConsumer
    from .extension import ModelGuard

log = logging.getLogger("flask_modelguard")

#: Seconds between the worker's purges of old query events (MODELGUARD_RETENTION).
PURGE_EVERY = 3600.0

#: Where ``init_app`` keeps the app's :class:`GuardState`: ``app.extensions[EXTENSION_KEY]``.
EXTENSION_KEY = "modelguard"


def state_of(app: Flask | None = None) -> GuardState:
    """The guard's state of ``app`` (default: the current app)."""
    app = app or current_app
    try:
        return app.extensions[EXTENSION_KEY]
    except KeyError:
        raise RuntimeError(
            "ModelGuard is not initialised on this app; call ModelGuard(app) or guard.init_app(app)."
        ) from None


def _repository_of(settings: Settings, instance_path: str, clock: Any) -> Repository:
    """The repository of ``MODELGUARD_DATABASE_URL`` (default a SQLite file in the instance folder)."""
    url = settings.database_url or "sqlite:///" + os.path.join(instance_path, "modelguard.db")
    return Repository(lifecycle.make_engine(url, settings.engine_options), clock=clock,
                      evidence_limit=settings.evidence_limit)


class GuardState:
    """Everything the guard keeps for one application."""

    def __init__(self, guard: ModelGuard, app: Flask, settings: Settings) -> None:
        self.guard = guard
        self._app = weakref.ref(app)  # signals name their app; the state does not keep it alive
        self.settings = settings
        self.clock = settings.clock or guard.clock
        self.repository = _repository_of(settings, app.instance_path, self.clock)
        self.enforcer = enforcer_of(settings)
        self.auth = Authenticator(
            self.repository, auth_header=settings.auth_header, api_key_header=settings.api_key_header,
            ttl=settings.key_cache_ttl, maxsize=settings.key_cache_size, clock=self.clock, feed=FeedWatch(),
        )
        self.fingerprint_key = settings.fingerprint_key(
            app.config.get("SECRET_KEY"), required=settings.enabled and not (app.debug or app.testing))
        self.protector = protector_of(settings, self.fingerprint_key)
        #: The detectors' feature space, named in stored states and the reference.
        self.space = FeatureSpace(settings.feature_space or space_name(settings.features, settings.feature_dim),
                                  settings.feature_dim)
        self.monitor = monitor_of(settings, self.space.name)
        #: Where a final flush that storage refuses leaves its events (MODELGUARD_SPILL).
        self.spill = spill_directory(settings.spill, app.instance_path)
        self.states = StateStore(self.monitor, self.repository, self.space, self.spill)
        self.monitor.loader = self.states.load
        #: Maps model inputs to the detectors' feature space.
        self.featurizer = featurizer = Featurizer(settings.features, settings.feature_dim)
        self.training = Training(settings, self.monitor, self.repository, featurizer, self.space,
                                 self.fingerprint_key)
        self.publisher = self._publisher()  # MODELGUARD_EVENTS = redis://...: for `flask modelguard worker`
        self.worker = self._event_worker() if self.publisher is None else self.publisher.worker
        #: In `flask modelguard worker`: what reads the stream (see :meth:`consume`).
        self.consumer: StreamConsumer | None = None
        #: Prometheus metrics (docs/metrics.md); None when off or prometheus_client is missing.
        self.telemetry = install_telemetry(app, settings, self.worker, self.detection_status)
        if self.telemetry is not None:
            self.protector.on_unprotected = self.telemetry.unprotected
        #: Where flag alerts are POSTed (MODELGUARD_ALERT_WEBHOOK), if anywhere.
        self.webhook = None if not settings.alert_webhook else Webhook(
            settings.alert_webhook, headers=dict(settings.alert_webhook_headers))
        self.pipeline = Pipeline(
            self.fingerprint_key, self.monitor, self.repository,
            FlagPolicy(settings.action, settings.throttle_tier), self._alerter(), featurizer,
            Featurizer(None, settings.feature_dim), detection=settings.detection,
            store_inputs=settings.store_inputs, telemetry=self.telemetry,
        )
        #: The colluding-accounts detector, run by the worker after its merges.
        self.groups = groups_of(settings, self.pipeline, self.states)
        #: Flags, blocks and key changes made by other processes, applied here within a second.
        self.changes = ChangeFeed(self.repository, self._forget, self.auth.feed)
        self.serving = RequestPath(settings, self.auth, self.enforcer, self.protector, self.worker,
                                   self.clock, self._app, self.telemetry)
        self.serving.ships_bodies, self.serving.on_first_request = self.publisher is not None, self.changes.start
        #: MODELGUARD_CREATE_TABLES could not create the tables yet (the worker retries).
        self.tables_pending = False
        self._file_problem: str | None = None
        self._next_purge = 0.0
        #: The admin tokens, alerts and audit log (set by ``init_app``).
        self.admin: AdminStore
        self._pid = os.getpid()
        lifecycle.after_fork(self._reset_in_child)
        lifecycle.at_exit(self._close_at_exit)

    def _alerter(self) -> Alerter:
        return Alerter(self.repository.account_name, lambda a: self.auth.invalidate(account_id=a),
                       self._app, self.clock, self.webhook, self.telemetry)

    def _worker_options(self) -> dict[str, Any]:
        settings = self.settings
        return dict(max_queue=settings.queue_size, max_bytes=settings.queue_bytes, batch_size=settings.batch_size,
                    flush_interval=settings.flush_interval, shutdown_timeout=settings.shutdown_timeout,
                    on_tick=self._tick, tick_interval=settings.key_cache_ttl)

    def _event_worker(self) -> EventWorker[QueryEvent]:
        return EventWorker(self._prepare, self._write, probe=self.repository.ping, permanent=bad_data,
                           spill=None if self.spill is None else self.spill.write, **self._worker_options())

    def _publisher(self) -> Publisher | None:
        settings = self.settings
        if settings.events == "thread":
            return None
        stream = EventStream(settings.events, f"{settings.namespace}:events", max_backlog=settings.events_backlog)
        return Publisher(stream, self.spill, **self._worker_options())

    def consume(self, stop: threading.Event, consumer: str | None = None, limit: int | None = None) -> int:
        """``flask modelguard worker``: judge and write the events every serving
        process publishes, until ``stop`` is set; returns the events read."""
        from .consumer import StreamConsumer
        from .stream import consumer_name, route_adapters

        if self.publisher is None:
            raise RuntimeError("MODELGUARD_EVENTS is 'thread': each serving process judges its own events; set it "
                               "to a Redis URL to run them here (docs/deployment.md)")
        app = self._app()
        self.publisher.worker.stop()  # this process publishes nothing: one tick, the consumer's
        self.consumer = StreamConsumer(
            self.publisher.stream, self._prepare, self._write, route_adapters(app.view_functions if app else {}),
            consumer=consumer or consumer_name(), probe=self.repository.ping, permanent=bad_data,
            **self._worker_options())
        try:
            return self.consumer.run(stop, limit)
        finally:
            self.states.persist_or_spill()

    # -- start, fork, exit ------------------------------------------------------------

    def start(self) -> None:
        """At ``init_app``: tables, canaries, the reference and the trained models."""
        settings = self.settings
        if settings.create_tables:
            self.create_tables()  # never blocks the boot: retried by the worker while the database is away
        self.refresh_canaries(quiet=True)
        self.changes.poll()  # where the feed ends: changes from now on reach this process
        self.training.load_reference(quiet=True)
        if settings.enabled and settings.detection:
            self.training.load_configured_reference()
        self.training.load_training(quiet=True)
        if self.spill is not None and self.spill.waiting():
            self.worker.start()  # its first tick writes what an earlier process spilled
        if settings.enabled:
            warn_if_degraded(self.detection_status())

    def _reset_in_child(self) -> None:
        self.monitor.reset()  # the parent merges what it saw; the child starts afresh
        self.states.reset_in_child()
        self.groups.reset_in_child()
        self.changes.reset_in_child()
        self.auth.reset_in_child()
        self.serving.reset_in_child()
        self._pid = os.getpid()
        if self.tables_pending:  # its worker's tick creates them once the database is back
            self.worker.start()

    def _close_at_exit(self) -> None:
        """Write queued events, then merge the account states they fed."""
        if self._pid == os.getpid():
            self.worker.final_flush()
            self.states.persist_or_spill()

    def close(self) -> None:
        self.changes.stop()
        self.worker.stop()
        self.states.persist_or_spill()
        if self.webhook is not None:
            self.webhook.flush(self.settings.shutdown_timeout)
        self.repository.engine.dispose()

    # -- the worker ------------------------------------------------------------------

    def _prepare(self, event: QueryEvent) -> dict[str, Any]:
        return self.pipeline.prepare(event)

    def _write(self, rows: Any) -> None:
        self.pipeline.write(rows)
        if len(self.monitor.evicted) >= EARLY_MERGE:  # more active accounts than MODELGUARD_MAX_ACCOUNTS
            try:  # the rows are written: a failure here must not make the worker write them again
                self.states.persist_evicted()
            except Exception as exc:
                log.debug("modelguard: early merge of evicted accounts failed (%s); kept for the next",
                          exc.__class__.__name__)

    def _forget(self, account_id: int | None, prefix: str | None) -> None:
        """A change to an account (or a key) elsewhere: its cached look-ups go."""
        if prefix is not None:
            self.auth.invalidate(prefix=prefix)
        if account_id is not None:
            self.auth.invalidate(account_id=account_id)
            self.protector.caught.discard(account_id)

    def _tick(self) -> None:
        """Every key-cache TTL in the worker: tables, spilled events, canaries,
        state merges, reloads and refits."""
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
        if self.serving.served and not self.changes.running:  # a serving process reads the change feed
            self.changes.start()
        if self.publishes:  # a serving process: `flask modelguard worker` merges, refits and purges
            self.publisher.check_readers()  # type: ignore[union-attr]
        try:
            if self.publishes:
                self.training.tick(refit=False)
                return
            self.states.persist(now=self.clock())
            self.groups.tick(self.clock())
            self.training.tick()
            self.changes.purge(self.clock)
            self._purge_due()
        except Exception as exc:
            log.warning("modelguard: could not store account states, refit or purge (%s); retrying later",
                        exc.__class__.__name__)

    def _purge_due(self) -> None:
        """MODELGUARD_RETENTION: the query log's old events deleted, hourly."""
        retention = self.settings.retention
        if retention is None or time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + PURGE_EVERY
        purged = self.repository.purge_events(self.clock() - retention)
        if purged:
            log.info("modelguard: %d query events older than %.0f s purged", purged, retention)

    def _replay_spilled(self) -> None:
        """Events and states an earlier process spilled at shutdown: written with
        the next batch, merged at the next merge."""
        if self.publishes:
            self.publisher.replay_spilled()  # type: ignore[union-attr]
        elif self.spill is not None and (rows := self.spill.claim()):
            (self.consumer.worker if self.consumer is not None else self.worker).replay(rows)
            log.warning("modelguard: %d events spilled by an earlier process are being written", len(rows))
        self.states.replay_spilled()

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
            self.training.load_training(quiet=True)
        return True

    def refresh_canaries(self, quiet: bool = False) -> None:
        """Reload the honey-trap fingerprints (the worker does it every key-cache TTL)."""
        try:
            self.protector.canaries = self.repository.canary_fingerprints()
        except SQLAlchemyError as exc:  # tables not created yet, database away
            (log.debug if quiet else log.warning)("modelguard: could not load canaries (%s)", exc.__class__.__name__)

    # -- what the extension, the admin API and the CLI ask -------------------------------

    @property
    def reference_source(self) -> str:
        return self.training.reference_source

    @property
    def publishes(self) -> bool:
        """A serving process whose events are judged by `flask modelguard worker`."""
        return self.publisher is not None and self.consumer is None

    def detection_status(self) -> dict[str, Any]:
        status = self.training.status()
        if self.publisher is None:
            status["events"] = {"mode": "thread", "why": "judged by a worker thread in each serving process"}
        else:
            status["events"] = self.publisher.status()
            status["degraded"] = status["degraded"] or (
                status["enabled"] and self.publishes and self.publisher.problem is not None)
        return status

    def fit_reference(self, inputs: Any, labels: Any, source: str = "api", **options: Any) -> Reference:
        return self.training.fit_reference(inputs, labels, source=source, **options)

    def fit_detectors(self, data: dict[str, Any], store: bool = True) -> Trained:
        return self.training.fit_detectors(data, store=store)

    def persist_states(self, batch: int = 200) -> int:
        """Merge every unmerged delta now; then look for colluding groups, when due."""
        merged = self.states.persist(batch)
        self.groups.tick(self.clock())
        return merged

    def stats(self) -> dict[str, Any]:
        """Worker, storage and detection counters of this process."""
        return {
            **self.worker.stats(),
            "limits_storage_errors": self.enforcer.storage_errors,
            "limits_storage_down": self.enforcer.storage_down,
            "failed_open": self.serving.failed_open,
            "client_id_errors": self.serving.client_id_errors,
            "answers_unprotected": self.protector.unrecognised,
            "answers_unprotected_by_route": dict(self.protector.unrecognised_routes),
            "protection_errors": self.protector.errors,
            "evidence_capped": self.repository.evidence_capped,
            "states_lost": self.states.lost,
            "change_feed_running": self.changes.running,
            "detection_errors": self.pipeline.errors,
            "detection_skipped": self.pipeline.skipped,
            **self.monitor.stats(),
            **self.groups.stats(),
            **(self.publisher.stats() if self.publisher is not None else {}),
            **(self.consumer.stats() if self.consumer is not None else {}),
        }
