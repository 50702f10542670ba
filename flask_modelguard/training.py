"""The detectors' fitted parts: ADD's reference, the population reference, the
anomaly models, the random forest and the stacked ensemble: fitted, stored,
loaded at start-up and reloaded when another process stores new ones.
Framework-free; runs at start-up and in the worker, never in a request."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy.exc import SQLAlchemyError

from . import sealing
from .config import Settings
from .detectors.add import Reference
from .detectors.anomaly import AnomalyModel
from .detectors.population import PopulationSample, fit_population
from .detectors.supervised import SupervisedModel, Trained, train
from .features import FeatureSpace, Featurizer
from .monitor import Monitor
from .readiness import detection_status
from .reference_data import digest, read_source
from .repository import Repository
from .state import AccountState

log = logging.getLogger("flask_modelguard")


class Training:
    """What the monitor's detectors were fitted on, and when to refit."""

    def __init__(self, settings: Settings, monitor: Monitor, repository: Repository,
                 featurizer: Featurizer, space: FeatureSpace, key: bytes = b"") -> None:
        self.settings = settings
        self._key = key  # signs the stored fitted models
        self.monitor = monitor
        self.repository = repository
        self.featurizer = featurizer
        self.space = space
        #: Where the reference in use came from ("" none, "config:<digest>", "operator", "cli", "api").
        self.reference_source = ""
        self._reference_version: Any = None
        self._training_version: Any = None
        self._next_refit = 0.0
        self._next_population = 0.0

    # -- ADD's reference ---------------------------------------------------------

    def fit_reference(self, inputs: Any, labels: Any, source: str = "api", **options: Any) -> Reference:
        """Fit ADD's reference on known-good model ``inputs`` and the model's
        ``labels``, use it at once and store it (other processes load it at
        their next worker tick). ``source`` says where it came from: a
        reference fitted from ``MODELGUARD_REFERENCE`` is ``config:<digest>``
        and gives way to one an operator fits."""
        X = np.stack([self.featurizer(x) for x in inputs])
        reference = Reference.fit(X, list(labels), **options)
        reference.space = self.space.name
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
        source = "config:" + digest(inputs, labels, self.space.name)
        stored = self.reference_source
        if self.monitor.reference is not None and (stored == source or not stored.startswith("config:")):
            return
        began = time.perf_counter()
        self.fit_reference(inputs, labels, source=source)
        log.info("modelguard: ADD reference fitted from MODELGUARD_REFERENCE (%d inputs, %.1f s)",
                 len(inputs), time.perf_counter() - began)

    def _use_reference(self, data: dict[str, Any] | None) -> None:
        reference = None if data is None else Reference.from_dict(data)
        if reference is not None and reference.space and not self.space.holds({"space": reference.space}, "reference"):
            reference = None
        self.monitor.reference = reference
        self.reference_source = "" if reference is None or data is None else str(data.get("source") or "operator")

    # -- the models ----------------------------------------------------------------

    def fit_detectors(self, data: dict[str, Any], store: bool = True) -> Trained:
        """Train the anomaly models, the random forest and the stacked
        ensemble on a labelled set ``{"rows": [scores...], "labels": [bool...],
        "groups": [account...]}`` (what ``flask modelguard evaluate`` exports),
        use them at once and store the set and the fitted models (other
        processes load them at start-up)."""
        trained = train(data["rows"], data["labels"], data["groups"],
                        anomaly_kinds=list(self.settings.anomaly_models), fpr=self.settings.ensemble_fpr,
                        prada_threshold=self.settings.prada_threshold)
        self._use(trained)
        if store:
            self.repository.save_training(data)
            self._training_version = self.repository.training_version()
            self._store_models(trained, data)
        return trained

    def _use(self, trained: Trained) -> None:
        with self.monitor.lock:
            self.monitor.anomaly = [*trained.anomaly, *([trained.supervised] if trained.supervised else [])]
            self.monitor.ensemble = trained.ensemble
        # a schedule refit would replace the anomaly models fitted with the ensemble
        self._next_refit = time.monotonic() + self.settings.anomaly_refit

    def _store_models(self, trained: Trained, data: dict[str, Any]) -> None:
        """Store the fitted models for the other processes (they fit their own when this fails)."""
        try:
            self.repository.save_detector_models(*sealing.seal(trained, self._key, sealing.digest(data)))
        except SQLAlchemyError as exc:
            log.warning("modelguard: the fitted detectors are used but not stored (%s; does the database have "
                        "every table? flask modelguard init-db); other processes fit their own",
                        exc.__class__.__name__)

    def load_training(self, quiet: bool = False) -> None:
        """At start-up and when another process stored a new training set: use
        the fitted models stored with it, or fit them (and store them) when
        none can be used (another set, library version or secret)."""
        try:
            self._training_version = self.repository.training_version()
            data = self.repository.load_training()
        except SQLAlchemyError as exc:
            (log.debug if quiet else log.warning)("modelguard: could not load the training set (%s)",
                                                  exc.__class__.__name__)
            return
        if data is not None:
            self._load_or_fit(data)
        if self.monitor.ensemble is None and self.settings.verdict == "ensemble" and self.settings.detection:
            log.warning("modelguard: MODELGUARD_VERDICT is 'ensemble' but no ensemble is trained "
                        "(flask modelguard fit-detectors); any detector flags until then")

    def _load_or_fit(self, data: dict[str, Any]) -> None:
        try:
            stored = self.repository.load_detector_models()
        except SQLAlchemyError as exc:
            log.info("modelguard: no stored fitted detectors readable (%s); fitting them", exc.__class__.__name__)
            stored = None
        trained = None if stored is None else sealing.unseal(*stored, self._key, sealing.digest(data))
        if isinstance(trained, Trained):
            self._use(trained)
            return
        try:
            trained = self.fit_detectors(data, store=False)
        except ValueError as exc:
            log.warning("modelguard: stored training set not usable (%s)", exc)
            return
        self._store_models(trained, data)

    def refit_anomaly_models(self, kinds: Sequence[str] | None = None,
                             vectors: list[dict[str, Any]] | None = None) -> int:
        """Fit the anomaly models on benign behaviour ``vectors`` (default: the
        stored states of active, unflagged accounts, each scored as the
        monitor scores accounts). Runs in the worker on a schedule; returns how
        many accounts it was fitted on (0: too few, models left as they were)."""
        kinds = list(kinds or self.settings.anomaly_models)
        if vectors is None:
            vectors = [self.monitor.score_state(AccountState.from_dict(data))
                       for data in self.repository.benign_states(self.settings.detection_min_queries)
                       if self.space.holds(data)]
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

    # -- the worker's schedule -----------------------------------------------------

    def tick(self, refit: bool = True) -> None:
        """Reload what another process stored; refit what is due (unless not ``refit``)."""
        self._reload_changed()
        if not refit:
            return
        now = time.monotonic()
        if self.monitor.population is not None and now >= self._next_population:
            self._next_population = now + self.settings.population_refit
            self.refit_population()
        if self.settings.anomaly_models and now >= self._next_refit:
            self._next_refit = now + self.settings.anomaly_refit
            self.refit_anomaly_models()

    def _reload_changed(self) -> None:
        """A reference or a training set another process stored since (a version
        read, the data only when it changed)."""
        version = self.repository.reference_version()
        if version != self._reference_version:
            self._reference_version = version
            self._use_reference(self.repository.load_reference())
            log.info("modelguard: reference reloaded (stored by another process)")
        version = self.repository.training_version()
        if version != self._training_version:
            self.load_training(quiet=True)

    def status(self) -> dict[str, Any]:
        """Which detectors are live and why the others are not (see readiness.py)."""
        return detection_status(self.monitor, self.settings, self.reference_source)
