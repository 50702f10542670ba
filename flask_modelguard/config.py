"""Configuration: every ``MODELGUARD_*`` key, its default, and how it is resolved.

Values come, in order of precedence, from keyword arguments of
:class:`~flask_modelguard.ModelGuard` (lower-case names without the prefix:
``ModelGuard(app, storage_uri="redis://...")``), then ``app.config``, then
the defaults below.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .exc import InvalidValue
from .quotas import DEFAULT_TIERS, FAIL_MODES

log = logging.getLogger("flask_modelguard")

PREFIX = "MODELGUARD_"


@dataclass
class Settings:
    #: Turn the guard off: protected views run as if undecorated.
    enabled: bool = True
    #: SQLAlchemy URL of the guard's tables; default a SQLite file in the instance folder.
    database_url: str | None = None
    #: Extra ``create_engine`` arguments.
    engine_options: Mapping[str, Any] = field(default_factory=dict)
    #: Create missing tables when the extension is initialised.
    create_tables: bool = False
    #: ``limits`` storage URI: ``memory://`` (one process) or ``redis://host:port`` (shared).
    storage_uri: str = "memory://"
    #: Extra arguments of the ``limits`` storage (e.g. ``socket_timeout`` for Redis).
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    #: ``limits`` strategy: ``fixed-window``, ``sliding-window-counter`` or ``moving-window``.
    strategy: str = "fixed-window"
    #: Prefix of every rate-limit key in the storage.
    namespace: str = "modelguard"
    #: Tier name → limits, as ``"10/second;1000/hour"`` or a list of strings.
    tiers: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_TIERS))
    #: Tier of new accounts.
    default_tier: str = "free"
    #: ``open``: serve (and count) when the rate-limit storage is down; ``closed``: 503.
    fail_mode: str = "open"
    #: Seconds before a down rate-limit storage is tried again.
    storage_retry: float = 5.0
    #: Header read as ``Bearer <key>``; None to disable.
    auth_header: str | None = "Authorization"
    #: Header read as a bare key; None to disable.
    api_key_header: str | None = "X-API-Key"
    #: Seconds a key look-up is cached in each process (revocation delay elsewhere).
    key_cache_ttl: float = 30.0
    #: Entries of the key cache.
    key_cache_size: int = 10_000
    #: Seconds an old key stays valid after rotation.
    rotation_grace: float = 86_400.0
    #: Secret of the input fingerprints (keyed hash); default derived from ``SECRET_KEY``.
    secret: str | bytes | None = None
    #: Store raw request bodies in the query log.
    store_inputs: bool = False
    #: Bound of the event queue; events beyond it are dropped and counted.
    queue_size: int = 10_000
    #: Largest request body a protected route reads, in bytes (larger: 413 problem, nothing read).
    max_body: int = 2**20
    #: Bytes of request bodies the event queue holds at most (beyond, events are dropped and counted).
    queue_bytes: int = 64 * 2**20
    #: Where events that storage refused at shutdown are kept, for the next
    #: process to write: a directory; None: ``<instance folder>/modelguard-spill``;
    #: False: nowhere (they are counted in ``dropped``).
    spill: Any = None
    #: Events written per database transaction.
    batch_size: int = 500
    #: Seconds between worker flushes.
    flush_interval: float = 0.5
    #: Seconds spent flushing at shutdown.
    shutdown_timeout: float = 5.0
    #: Send rate-limit headers on protected responses.
    headers_enabled: bool = True
    #: Output transforms of protected routes, in order (``["round(2)"]``); see docs/output-protection.md.
    output: Any = field(default_factory=list)
    #: Tier name → output transforms, replacing ``output`` for that tier.
    tier_output: Mapping[str, Any] = field(default_factory=dict)
    #: Output transforms for flagged accounts (instead of the others).
    suspicious_output: Any = field(default_factory=lambda: ["misinformation"])
    #: When a request's cost is kept: "success" (a request the view answers
    #: with a 4xx, a malformed body say, gives it back; the fixed window only)
    #: or "always" (Flask-Limiter's ``deduct_when`` default).
    deduct_when: str = "success"
    #: An answer of a protected route that cannot be protected (a shape no
    #: adapter knows, labels the adapter cannot rewrite): "pass" (sent as the
    #: model gave it) or "withhold" (a 502 problem). The same for every account;
    #: counted and logged once per route either way.
    unrecognised: str = "pass"
    #: Fraction of inputs per account answered with a watermark (deliberately wrong) label.
    watermark: float = 0.005
    #: Run the detectors in the worker and flag the accounts they find.
    detection: bool = True
    #: Function of one model input returning its feature vector; default its numbers, flattened.
    features: Any = None
    #: Feature dimension cap (a fixed random projection beyond it).
    feature_dim: int = 64
    #: Name of the feature space (stored with account states and the reference;
    #: states of another space are not merged). Default: the feature function's
    #: qualified name and the dimension. Change it when the function changes
    #: what it computes under the same name (a retrained embedding, say).
    feature_space: str | None = None
    #: Known-good model inputs and the model's labels for them, ADD's
    #: reference: a path to ``.npz`` (``X``, ``y``) or ``.json``
    #: (``{"inputs", "labels"}``), or a function returning ``(inputs, labels)``.
    #: Fitted at start-up unless the stored reference was fitted on the same
    #: data (or by an operator, with ``fit-reference``); see docs/detection.md.
    reference: Any = None
    #: Where input features may lie, ``[low, high]``: features beyond are
    #: clipped before any statistic sees them (hostile numbers such as 1e308
    #: cannot overflow an account's moments). None: the reference's range,
    #: widened on each side by its widest feature's range; always within ±1e12.
    input_range: Any = None
    #: The reference-free detector (ADD against the pooled recent traffic of
    #: all accounts, robust to a minority of thieves): "auto" (on while there
    #: is no reference), True or False.
    population: Any = "auto"
    #: Seconds between refits of the population reference in the worker.
    population_refit: float = 60.0
    #: PRADA flags an account when the Shapiro-Wilk W of its distances falls below this.
    prada_threshold: float = 0.9
    #: Accounts a process keeps in memory for the detectors (the least recently
    #: active leave first, their unmerged queries stored at the next merge).
    max_accounts: int = 10_000
    #: Queries an account sends before the detectors judge it.
    detection_min_queries: int = 20
    #: Detectors run after every this many queries of an account (and every 5% of its size).
    detection_every: int = 25
    #: What a detector verdict does: "observe" (record and alert only, answers
    #: untouched), "degrade" (flag: the suspicious-account output policy),
    #: "throttle" (flag and move to ``throttle_tier``), "block" (flag and block: 403).
    action: str = "degrade"
    #: Tier of throttled accounts.
    throttle_tier: str = "free"
    #: Behaviour anomaly models to fit on benign accounts' stored states:
    #: any of "isolation_forest", "one_class_svm", "lof" (none by default).
    anomaly_models: Any = field(default_factory=list)
    #: Seconds between refits of the anomaly models in the worker.
    anomaly_refit: float = 3600.0
    #: Benign false-positive rate the anomaly models' thresholds are set for.
    anomaly_fpr: float = 0.005
    #: Opt-in rules on windowed statistics: names (``["unique_per_hour",
    #: "label_entropy"]``) or name → parameters; see docs/detection.md.
    rules: Any = field(default_factory=list)
    #: How detectors become a flag: "any" (any detector over its own
    #: threshold), "ensemble" (the trained stacked ensemble's score >= 0.5;
    #: needs ``flask modelguard fit-detectors``) or "auto" (the ensemble when
    #: one is trained, else any).
    verdict: str = "auto"
    #: Benign false-positive rate (per account) the random forest and the
    #: stacked ensemble are calibrated for when trained.
    ensemble_fpr: float = 0.005
    #: Register the admin API (and dashboard) under ``admin_prefix``.
    admin_enabled: bool = True
    #: URL prefix of the admin API (``<prefix>/api``) and dashboard (``<prefix>/``).
    admin_prefix: str = "/modelguard"
    #: Optional ``fn(request) -> admin name or None``: the app's own admin
    #: authentication, tried before admin tokens.
    admin_auth: Any = None
    #: The session cookie the dashboard signs in with is ``Secure`` (sent over
    #: HTTPS only): None: outside debug and testing; True or False. Its
    #: ``SameSite`` is ``Lax`` unless the app set one.
    secure_cookies: bool | None = None
    #: URL that receives a JSON POST for every flagged account (retried; see docs/detection.md).
    alert_webhook: str | None = None
    #: Extra headers of the webhook requests (e.g. an ``Authorization`` token).
    alert_webhook_headers: Mapping[str, str] = field(default_factory=dict)
    #: Collect Prometheus metrics (needs ``prometheus_client``; see docs/metrics.md).
    metrics_enabled: bool = True
    #: Path of the metrics endpoint (no API key needed); None collects without exposing.
    metrics_path: str | None = "/modelguard/metrics"
    #: Bearer token the metrics endpoint requires, if set.
    metrics_token: str | None = None
    #: Function returning the time in epoch seconds (event times, key expiry);
    #: default the guard's ``clock`` argument, ``time.time``. Simulations pass
    #: a :class:`~flask_modelguard.simulate.SimulatedClock`.
    clock: Any = None

    @classmethod
    def keys(cls) -> list[str]:
        """Every configuration key."""
        return [PREFIX + f.name.upper() for f in fields(cls)]

    @classmethod
    def check_names(cls, overrides: Mapping[str, Any]) -> None:
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"Unknown ModelGuard option(s): {', '.join(sorted(unknown))}")

    @classmethod
    def resolve(cls, config: Mapping[str, Any], overrides: Mapping[str, Any]) -> Settings:
        cls.check_names(overrides)
        names = {f.name for f in fields(cls)}
        values = {}
        for name in names:
            if name in overrides:
                values[name] = overrides[name]
            elif PREFIX + name.upper() in config:
                values[name] = config[PREFIX + name.upper()]
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`InvalidValue` naming the first setting that is wrong."""
        self._check_types()
        self._check_values()
        self._check_choices()

    def _check_types(self) -> None:
        kinds: dict[str, Any] = {
            "enabled": bool, "metrics_enabled": bool, "create_tables": bool, "store_inputs": bool, "headers_enabled": bool, "detection": bool, "admin_enabled": bool, "admin_prefix": str,
            "storage_uri": str, "strategy": str, "namespace": str, "default_tier": str, "fail_mode": str,
            "database_url": (str, type(None)), "alert_webhook": (str, type(None)),
            "metrics_path": (str, type(None)), "metrics_token": (str, type(None)),
            "alert_webhook_headers": Mapping, "secret": (str, bytes, type(None)),
            "auth_header": (str, type(None)), "api_key_header": (str, type(None)),
            "engine_options": Mapping, "storage_options": Mapping, "tiers": Mapping, "tier_output": Mapping,
        }
        for name, kind in kinds.items():
            if not isinstance(getattr(self, name), kind):
                raise InvalidValue(f"{PREFIX}{name.upper()} has the wrong type: {getattr(self, name)!r}")
        if isinstance(self.watermark, bool) or not isinstance(self.watermark, (int, float)) or not 0 <= self.watermark <= 1:
            raise InvalidValue(f"{PREFIX}WATERMARK must be a fraction in [0, 1], not {self.watermark!r}")
        from .detectors.anomaly import KINDS

        if not isinstance(self.anomaly_models, (list, tuple)) or not set(self.anomaly_models) <= set(KINDS):
            raise InvalidValue(f"{PREFIX}ANOMALY_MODELS must list some of {', '.join(KINDS)}")
        if isinstance(self.anomaly_fpr, bool) or not isinstance(self.anomaly_fpr, float) or not 0 < self.anomaly_fpr < 1:
            raise InvalidValue(f"{PREFIX}ANOMALY_FPR must be a fraction in (0, 1)")
        for name in ("storage_retry", "key_cache_ttl", "rotation_grace", "flush_interval", "shutdown_timeout",
                     "anomaly_refit", "population_refit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidValue(f"{PREFIX}{name.upper()} must be a number >= 0, not {value!r}")
    def _check_values(self) -> None:
        if self.clock is not None and not callable(self.clock):
            raise InvalidValue(f"{PREFIX}CLOCK must be a function returning epoch seconds")
        if self.reference is not None and not (callable(self.reference) or isinstance(self.reference, (str, os.PathLike))):
            raise InvalidValue(f"{PREFIX}REFERENCE must be a path (.npz, .json) or a function returning (inputs, labels)")
        if self.input_range is not None and not _is_range(self.input_range):
            raise InvalidValue(f"{PREFIX}INPUT_RANGE must be [low, high] with low < high, not {self.input_range!r}")
        if self.population not in ("auto", True, False):
            raise InvalidValue(f"{PREFIX}POPULATION must be 'auto', true or false, not {self.population!r}")
        if self.features is not None and not callable(self.features):
            raise InvalidValue(f"{PREFIX}FEATURES must be a function of one model input")
        if self.spill is not None and self.spill is not False and not isinstance(self.spill, (str, os.PathLike)):
            raise InvalidValue(f"{PREFIX}SPILL must be a directory, None or False, not {self.spill!r}")
        for name in ("key_cache_size", "queue_size", "queue_bytes", "max_body", "batch_size", "feature_dim", "detection_min_queries", "detection_every",
                     "max_accounts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidValue(f"{PREFIX}{name.upper()} must be an integer >= 1, not {value!r}")
        if self.feature_space is not None and (not isinstance(self.feature_space, str) or not self.feature_space):
            raise InvalidValue(f"{PREFIX}FEATURE_SPACE must be a non-empty string, not {self.feature_space!r}")

    def _check_choices(self) -> None:
        if self.fail_mode not in FAIL_MODES:
            raise InvalidValue(f"MODELGUARD_FAIL_MODE must be 'open' or 'closed', not {self.fail_mode!r}")
        if not self.admin_prefix.startswith("/") or self.admin_prefix.endswith("/"):
            raise InvalidValue(f"{PREFIX}ADMIN_PREFIX must start with '/' and not end with one: {self.admin_prefix!r}")
        if self.secure_cookies not in (None, True, False):
            raise InvalidValue(f"{PREFIX}SECURE_COOKIES must be None, true or false, not {self.secure_cookies!r}")
        if self.admin_auth is not None and not callable(self.admin_auth):
            raise InvalidValue(f"{PREFIX}ADMIN_AUTH must be a function of the request")
        if self.alert_webhook is not None and not self.alert_webhook.startswith(("http://", "https://")):
            raise InvalidValue(f"{PREFIX}ALERT_WEBHOOK must be an http(s) URL, not {self.alert_webhook!r}")
        if self.metrics_path is not None and not self.metrics_path.startswith("/"):
            raise InvalidValue(f"{PREFIX}METRICS_PATH must start with '/', not {self.metrics_path!r}")
        if self.metrics_token == "":
            raise InvalidValue(f"{PREFIX}METRICS_TOKEN must not be empty (None turns it off)")
        self.resolved_rules()  # validates
        if self.deduct_when not in ("success", "always"):
            raise InvalidValue(f"{PREFIX}DEDUCT_WHEN must be 'success' or 'always', not {self.deduct_when!r}")
        if self.unrecognised not in ("pass", "withhold"):
            raise InvalidValue(f"{PREFIX}UNRECOGNISED must be 'pass' or 'withhold', not {self.unrecognised!r}")
        if self.verdict not in ("any", "auto", "ensemble"):
            raise InvalidValue(f"{PREFIX}VERDICT must be 'any', 'auto' or 'ensemble', not {self.verdict!r}")
        if isinstance(self.ensemble_fpr, bool) or not isinstance(self.ensemble_fpr, float) or not 0 < self.ensemble_fpr < 1:
            raise InvalidValue(f"{PREFIX}ENSEMBLE_FPR must be a fraction in (0, 1)")
        if self.action not in ("observe", "degrade", "throttle", "block"):
            raise InvalidValue(f"{PREFIX}ACTION must be observe, degrade, throttle or block, not {self.action!r}")
        if self.action == "throttle" and self.throttle_tier not in self.tiers:
            raise InvalidValue(f"{PREFIX}THROTTLE_TIER {self.throttle_tier!r} is not in MODELGUARD_TIERS")
        if self.default_tier not in self.tiers:
            raise InvalidValue(f"MODELGUARD_DEFAULT_TIER {self.default_tier!r} is not in MODELGUARD_TIERS")
        if not (self.auth_header or self.api_key_header):
            raise InvalidValue("At least one of MODELGUARD_AUTH_HEADER and MODELGUARD_API_KEY_HEADER must be set")

    def resolved_rules(self) -> dict[str, dict[str, float]]:
        """``rules`` as name → parameters, the defaults filled in."""
        from .detectors.window import RULES

        spec = self.rules
        if isinstance(spec, (list, tuple)):
            spec = {name: {} for name in spec}
        if not isinstance(spec, Mapping) or not set(spec) <= set(RULES):
            raise InvalidValue(f"{PREFIX}RULES must name some of {', '.join(RULES)}")
        out = {}
        for name, params in spec.items():
            if not isinstance(params, Mapping) or not set(params) <= set(RULES[name]):
                raise InvalidValue(f"{PREFIX}RULES[{name!r}] takes {', '.join(RULES[name])}")
            out[name] = {**RULES[name], **{k: float(v) for k, v in params.items()}}
        return out

    def fingerprint_key(self, app_secret_key: Any, required: bool = False) -> bytes:
        """The key of input fingerprints, watermarks and misinformation:
        ``secret``, else derived from the app's ``SECRET_KEY``. With neither,
        :class:`InvalidValue` when ``required`` (a served app: each process
        would answer the same question differently, and canaries registered
        from the CLI would never match), else random for this process, with a
        warning (debug and testing)."""
        if self.secret:
            raw = self.secret.encode() if isinstance(self.secret, str) else bytes(self.secret)
        elif app_secret_key:
            raw = app_secret_key.encode() if isinstance(app_secret_key, str) else bytes(app_secret_key)
        elif required:
            raise InvalidValue(
                "Set the app's SECRET_KEY (or MODELGUARD_SECRET), the same in every process: watermarks, "
                "misinformation and input fingerprints are keyed by it. Without one, each process would give "
                "a different answer to the same question. (Only debug and testing apps may run without.)")
        else:
            log.warning(
                "modelguard: neither MODELGUARD_SECRET nor SECRET_KEY is set; input "
                "fingerprints use a random key of process %d", os.getpid(),
            )
            raw = secrets.token_bytes(32)
        return hashlib.blake2b(raw, person=b"mg-fingerprint", digest_size=32).digest()


def _is_range(value: Any) -> bool:
    """``[low, high]``: two finite numbers, low < high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        return False
    return bool(value[0] < value[1])
