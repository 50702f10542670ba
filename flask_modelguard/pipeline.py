"""The worker's pipeline for query events: prepare (the event's row) →
account state and detectors (the monitor) → the flag policy, in the
transaction that writes the batch → alerts. Framework-free; runs in the
worker thread, never in a request."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .alerting import Alerter
from .events import QueryEvent, client_hash, fingerprint
from .features import Featurizer, flatten
from .monitor import _UNREAD, Monitor
from .payload import instances, predictions
from .policy import FlagPolicy
from .repository import Repository
from .state import Observation

log = logging.getLogger("flask_modelguard")


class Pipeline:
    """Turns query events into stored rows and judgements.

    ``featurizer`` maps inputs to the detectors' feature space and ``raw``
    to PRADA's (the inputs themselves); with ``detection`` off, events are
    only written.
    """

    def __init__(self, fingerprint_key: bytes, monitor: Monitor, repository: Repository, policy: FlagPolicy,
                 alerter: Alerter, featurizer: Featurizer, raw: Featurizer, *, detection: bool = True,
                 store_inputs: bool = False, telemetry: Any = None) -> None:
        self.fingerprint_key = fingerprint_key
        self.monitor = monitor
        self.repository = repository
        self.policy = policy
        self.alerter = alerter
        self.featurizer = featurizer
        self.raw = raw
        self.detection = detection
        self.store_inputs = store_inputs
        self.telemetry = telemetry
        #: Events the detectors failed on (logged; the event itself is still written).
        self.errors = 0
        #: Events the detectors could not judge (inputs and answers do not pair up).
        self.skipped = 0

    def prepare(self, event: QueryEvent) -> dict[str, Any]:
        """The event's row; detection runs here, once per event."""
        row = event.to_row(self.fingerprint_key, self.store_inputs)
        if self.detection and 200 <= event.status < 300 and row["labels"]:
            try:
                self._detect(event, row)
            except Exception:  # detection must never cost the query log its row
                self.errors += 1
                if self.errors == 1 or self.errors % 1000 == 0:
                    log.exception("modelguard: detection failed on an event (%d so far)", self.errors)
        return row

    def _observation(self, event: QueryEvent, row: dict[str, Any]) -> Observation | None:
        """What the monitor sees of an event (None: inputs and answers do not pair up)."""
        inputs = instances(event.request_json)
        if event.model_json is not None:
            found = predictions(event.model_json, event.adapter)
            labels, confidences = [p.label for p in found], [p.confidence for p in found]
        else:
            labels, confidences = row["labels"], row["top_confidences"]
        if len(inputs) != len(labels):
            return None
        features = np.stack([self.featurizer(x) for x in inputs])
        raw = features if self.featurizer.function is flatten else np.stack([self.raw(x) for x in inputs])
        fingerprints = event.fingerprints
        if fingerprints is None or len(fingerprints) != len(inputs):  # not computed by output protection
            fingerprints = [fingerprint(x, self.fingerprint_key) for x in inputs]
        client = None if event.client is None else client_hash(event.client, self.fingerprint_key)
        return Observation(event.ts, fingerprints, features, labels, confidences, raw, client=client)

    def _detect(self, event: QueryEvent, row: dict[str, Any]) -> None:
        """Feed the monitor; attach its evaluation, when one is due, to the row."""
        obs = self._observation(event, row)
        if obs is None:
            self.skipped += 1  # counted, not judged
            return
        monitor = self.monitor
        stored: Any = _UNREAD
        if monitor.loader is not None and event.account_id not in monitor.accounts:
            stored = monitor.loader(event.account_id)  # a database read: not under the lock
        with monitor.lock:
            began = time.perf_counter()
            evaluation = monitor.observe(event.account_id, obs, stored)
            took = time.perf_counter() - began
        if self.telemetry is not None:
            self.telemetry.detector(took, evaluation is not None)
        if evaluation is not None:
            row["evaluation"] = {
                "account_id": evaluation.account_id, "ts": evaluation.ts, "queries": evaluation.queries,
                "scores": evaluation.scores, "reasons": evaluation.reasons,
            }

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store a batch of rows with the policy's catches; announce the catches."""
        catches = self.repository.insert_events(rows, self.policy)
        if self.telemetry is not None:
            self.telemetry.sync(written=len(rows))
        self.alerter.announce(catches)
