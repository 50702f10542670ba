"""Prometheus metrics of the guard, and the endpoint that exposes them.

Optional: without ``prometheus_client`` the guard runs without metrics (one
warning). Each app has its own registry. In multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before ``prometheus_client`` is imported)
the metric objects are shared by the apps of a process, as its files are, and
the endpoint reads every process's files. No label names an account.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, request

from .exc import HTTPProblem
from .responses import problem_response

try:
    import prometheus_client
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    prometheus_client = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .config import Settings
    from .worker import EventWorker

log = logging.getLogger("flask_modelguard")

#: Values of ``modelguard_requests_total``'s ``outcome`` label.
OUTCOMES = ("allowed", "unauthorized", "forbidden", "rate_limited", "bad_request", "error", "poisoned", "watermarked")
#: Values of ``modelguard_accounts_flagged_total``'s ``action`` label.
ACTIONS = ("observe", "degrade", "throttle", "block", "canary")
#: The guard's own time is tens to hundreds of microseconds (milliseconds with Redis).
LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1, 1.0)
#: One monitor update is ~0.1 ms; an evaluation (every detector) up to tens of ms.
DETECTOR_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
ENDPOINT = "modelguard_metrics"

_warned = False
_shared: _Metrics | None = None  # multiprocess mode: one set per process
_shared_lock = threading.Lock()


def outcome_of(status: int) -> str:
    """The outcome label of a response status."""
    if status < 400:
        return "allowed"
    if status in (401, 403, 429):
        return {401: "unauthorized", 403: "forbidden", 429: "rate_limited"}[status]
    return "bad_request" if status < 500 else "error"


def multiprocess_mode() -> bool:
    """Whether ``prometheus_client`` writes its values to ``PROMETHEUS_MULTIPROC_DIR``."""
    from prometheus_client import values

    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Metrics:
    """The metric objects, registered on ``registry`` (None in multiprocess mode)."""

    def __init__(self, registry: Any, multiprocess: bool) -> None:
        p = prometheus_client
        requests = p.Counter("modelguard_requests", "Guarded requests by outcome; poisoned and watermarked"
                             " answers are also counted as allowed.", ["outcome"], registry=registry)
        self.outcomes = {name: requests.labels(outcome=name) for name in OUTCOMES}
        self.latency = p.Histogram("modelguard_guard_latency_seconds", "Time the guard adds to a request,"
                                   " the view's own time excluded.", buckets=LATENCY_BUCKETS, registry=registry)
        flagged = p.Counter("modelguard_accounts_flagged", "Accounts flagged, by action.", ["action"],
                            registry=registry)
        self.flagged = {name: flagged.labels(action=name) for name in ACTIONS}
        detector = p.Histogram("modelguard_detector_seconds", "Time of one monitor step in the worker: update"
                               " (state only) or evaluate (state and every detector).", ["stage"],
                               buckets=DETECTOR_BUCKETS, registry=registry)
        self.detector = {name: detector.labels(stage=name) for name in ("update", "evaluate")}
        self.unprotected = p.Counter("modelguard_answers_unprotected", "Answers of a protected route that could"
                                     " not be protected (shape unknown, labels not rewritable), by route.",
                                     ["route"], registry=registry)
        if multiprocess:  # no scrape-time collector sees other processes: the worker copies its counts
            self.queue_depth = p.Gauge("modelguard_queue_depth", _DEPTH_HELP, multiprocess_mode="livesum",
                                       registry=None)
            self.dropped = p.Counter("modelguard_events_dropped", _DROPPED_HELP, registry=None)


_DEPTH_HELP = "Query events waiting for the worker."
_DROPPED_HELP = "Query events dropped (queue full, or refused by the database)."


class _WorkerCollector:
    """Reads the worker's queue depth and drop count at scrape time."""

    def __init__(self, worker: EventWorker[Any]) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily("modelguard_queue_depth", _DEPTH_HELP, value=self._worker.depth)
        yield CounterMetricFamily("modelguard_events_dropped", _DROPPED_HELP, value=self._worker.dropped)


_LIVE_HELP = "1 when the detector is live in this process, 0 when it is not (see the admin API's health)."


class _DetectionCollector:
    """Reads which detectors are live at scrape time (``modelguard_detector_live``)."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("modelguard_detector_live", _LIVE_HELP, labels=["detector"])
        for name, detector in self._status()["detectors"].items():
            family.add_metric([name], 1.0 if detector["live"] else 0.0)
        yield family


class Telemetry:
    """The metrics of one app's guard; the request path calls :meth:`request`."""

    def __init__(self, worker: EventWorker[Any], token: str | None = None,
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        global _shared
        self._worker = worker
        self._token = None if token is None else token.encode()
        self.multiprocess = multiprocess_mode()
        #: What the endpoint exposes (also usable with ``prometheus_client.make_wsgi_app``).
        self.registry = prometheus_client.CollectorRegistry()
        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            with _shared_lock:
                metrics = _shared = _shared or _Metrics(None, True)
            MultiProcessCollector(self.registry)
        else:
            metrics = _Metrics(self.registry, False)
            self.registry.register(_WorkerCollector(worker))
            if status is not None:
                self.registry.register(_DetectionCollector(status))
        self.metrics = metrics
        # Status code → its outcome's counter, so that a request costs one index.
        by_outcome = metrics.outcomes
        self._by_status = [by_outcome[outcome_of(status)] for status in range(600)]
        self._latency = metrics.latency
        self._poisoned = by_outcome["poisoned"]
        self._watermarked = by_outcome["watermarked"]
        self._sync_lock = threading.Lock()
        self._synced: tuple[int, int, int] = (os.getpid(), 0, worker.dropped)

    def request(self, status: int, seconds: float, marked: bool = False, flagged: bool = False) -> None:
        """Count one guarded request and the guard's ``seconds`` in it."""
        (self._by_status[status] if 0 <= status < 600 else self._by_status[599]).inc()
        self._latency.observe(seconds)
        if 200 <= status < 300:
            if flagged:
                self._poisoned.inc()
            if marked:
                self._watermarked.inc()

    def flagged(self, action: str) -> None:
        child = self.metrics.flagged.get(action)
        if child is not None:
            child.inc()

    def unprotected(self, route: str) -> None:
        self.metrics.unprotected.labels(route=route).inc()

    def detector(self, seconds: float, evaluated: bool) -> None:
        self.metrics.detector["evaluate" if evaluated else "update"].observe(seconds)

    def sync(self, written: int = 0) -> None:
        """Multiprocess mode: copy the worker's queue depth (less ``written``
        rows still counted in it) and drops into the shared files; the worker
        calls it after each batch and on each tick."""
        if not self.multiprocess:
            return
        with self._sync_lock:
            pid, depth_seen, dropped_seen = self._synced
            if pid != os.getpid():  # a forked child: its own queue, and its own file
                depth_seen = 0
            depth, dropped = max(0, self._worker.depth - written), self._worker.dropped
            self.metrics.queue_depth.inc(depth - depth_seen)
            if dropped > dropped_seen:
                self.metrics.dropped.inc(dropped - dropped_seen)
            self._synced = (os.getpid(), depth, dropped)

    def view(self) -> Response:
        """The endpoint: the text exposition format, behind the token if one is set."""
        if self._token is not None:
            scheme, _, given = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._token):
                return problem_response(HTTPProblem(
                    401, "Unauthorized", "The metrics need the bearer token of MODELGUARD_METRICS_TOKEN.",
                    headers={"WWW-Authenticate": 'Bearer realm="modelguard-metrics"'},
                ))
        self.sync()
        return Response(prometheus_client.generate_latest(self.registry),
                        content_type=prometheus_client.CONTENT_TYPE_LATEST)


def install(app: Flask, settings: Settings, worker: EventWorker[Any],
            status: Callable[[], dict[str, Any]] | None = None) -> Telemetry | None:
    """The metrics of ``app``'s guard, with their endpoint at ``MODELGUARD_METRICS_PATH``;
    None when metrics are off or ``prometheus_client`` is not installed."""
    global _warned
    if not settings.metrics_enabled:
        return None
    if prometheus_client is None:
        if not _warned:
            _warned = True
            log.warning("modelguard: prometheus_client is not installed; running without metrics"
                        " (pip install prometheus_client, or set MODELGUARD_METRICS_ENABLED=False)")
        return None
    telemetry = Telemetry(worker, settings.metrics_token, status)
    if settings.metrics_path is not None:
        if ENDPOINT in app.view_functions:  # init_app again on the same app
            app.view_functions[ENDPOINT] = telemetry.view
        else:
            app.add_url_rule(settings.metrics_path, ENDPOINT, telemetry.view, methods=["GET"])
    return telemetry
