"""The parts a guard is built of, each from the settings: the monitor, the
group detector, the quota enforcer, the output protector, the spill directory; and which write
errors are the data's fault. Framework-free (the app is only asked for its
instance folder)."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.exc import InterfaceError, OperationalError, StatementError

from .collusion import GroupWatch
from .config import Settings
from .detectors.population import PopulationSample
from .monitor import Monitor
from .persistence import StateStore
from .pipeline import Pipeline
from .policy import FlagPolicy
from .protection import OutputProtector
from .quotas import QuotaEnforcer
from .spill import SpillDirectory


def bad_data(exc: BaseException) -> bool:
    """A write error retrying cannot fix: the rows are at fault, not the database."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return False  # connection lost, database down, locked: transient
    return isinstance(exc, (StatementError, TypeError, ValueError))


def spill_directory(setting: Any, instance_path: str) -> SpillDirectory | None:
    """MODELGUARD_SPILL: a directory, None for the app's instance folder, False for none."""
    if setting is False:
        return None
    return SpillDirectory(setting if setting else os.path.join(instance_path, "modelguard-spill"))


def monitor_of(settings: Settings, space: str) -> Monitor:
    monitor = Monitor(
        settings.feature_dim, space=space, prada_threshold=settings.prada_threshold,
        min_queries=settings.detection_min_queries, every=settings.detection_every,
        max_accounts=settings.max_accounts,
    )
    monitor.verdict = settings.verdict
    monitor.rules = settings.resolved_rules()
    if settings.input_range is not None:
        monitor.input_range = (float(settings.input_range[0]), float(settings.input_range[1]))
    if settings.detection and settings.population is not False:
        monitor.population = PopulationSample(space=space)
        monitor.population_auto = settings.population == "auto"
        monitor.population_reason = "no population fitted yet"
    else:
        monitor.population_reason = "off (MODELGUARD_POPULATION)"
    return monitor


def enforcer_of(settings: Settings) -> QuotaEnforcer:
    return QuotaEnforcer(
        settings.storage_uri, tiers=settings.tiers, default_tier=settings.default_tier,
        strategy=settings.strategy, namespace=settings.namespace, fail_mode=settings.fail_mode,
        retry_interval=settings.storage_retry, storage_options=settings.storage_options,
    )


def protector_of(settings: Settings, key: bytes) -> OutputProtector:
    return OutputProtector(
        key, output=settings.output, tier_output=settings.tier_output,
        suspicious_output=settings.suspicious_output, watermark=settings.watermark,
        watermark_raised=settings.watermark_raised, watermark_from=settings.watermark_from,
        probability_mark=settings.probability_mark, unrecognised=settings.unrecognised,
    )


def groups_of(settings: Settings, pipeline: Pipeline, states: StateStore) -> GroupWatch:
    """MODELGUARD_GROUPS: "observe" alerts on groups and flags nothing; "flag" applies MODELGUARD_ACTION."""
    policy = pipeline.policy if settings.groups == "flag" else FlagPolicy("observe")
    return GroupWatch(pipeline.monitor, states, pipeline.repository, policy, pipeline.alerter,
                      interval=settings.groups_interval, enabled=settings.enabled and settings.detection
                      and settings.groups)
