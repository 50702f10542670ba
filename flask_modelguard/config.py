"""Configuration: every ``MODELGUARD_*`` key, its default, and how it is resolved.

Values come, in order of precedence, from keyword arguments of
:class:`~flask_modelguard.ModelGuard` (lower-case names without the prefix:
``ModelGuard(app, storage_uri="redis://...")``), then ``app.config``, then
the defaults below.

Each setting is typed once, by its annotation: :meth:`Settings.validate`
checks every value against it, then against the rule declared with the field
(``field(metadata=...)``: a range, a set of choices, a predicate), then the
settings that depend on each other.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import secrets
import types
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from .detectors.window import resolve_rules
from .exc import InvalidValue
from .limitset import DEFAULT_TIERS, FAIL_MODES

log = logging.getLogger("flask_modelguard")

PREFIX = "MODELGUARD_"

# Rules: field metadata. Messages are templates of ``key`` (``MODELGUARD_...``)
# and ``value``.

#: The message of a value whose type is not its setting's annotation.
WRONG_TYPE = "{key} has the wrong type: {value!r}"


def _rule(check: Callable[[Any], bool], error: str, *, type_error: str = WRONG_TYPE) -> dict[str, Any]:
    """A value of the annotated type must also pass ``check`` (which may raise
    :class:`InvalidValue` itself, with a message of its own), else ``error``;
    a value of another type fails with ``type_error``."""
    return {"check": check, "error": error, "type_error": type_error}


def _strict(check: Callable[[Any], bool], error: str) -> dict[str, Any]:
    """A rule whose one message covers a value of the wrong type too."""
    return _rule(check, error, type_error=error)


def _choices(*options: Any, error: str) -> dict[str, Any]:
    """The value must equal one of ``options``; they, not the annotation,
    say what is accepted (compared with ``==``, as ``in`` does)."""
    return {"check": lambda value: value in options, "error": error, "typed": False}


def _function(error: str) -> dict[str, Any]:
    return _rule(lambda value: value is None or callable(value), error)


_SECONDS = _strict(lambda value: value >= 0, "{key} must be a number >= 0, not {value!r}")
_COUNT = _strict(lambda value: value >= 1, "{key} must be an integer >= 1, not {value!r}")
_RATE = _strict(lambda value: 0 < value < 1, "{key} must be a fraction in (0, 1)")
_FRACTION = _strict(lambda value: 0 <= value <= 1, "{key} must be a fraction in [0, 1], not {value!r}")


# Checks that raise InvalidValue with a message of their own (a rule of just ``{"check": ...}``).
def _anomaly_models(value: Any) -> bool:
    from .detectors.registry import ANOMALY_KINDS as KINDS

    if not isinstance(value, (list, tuple)) or not set(value) <= set(KINDS):
        raise InvalidValue(f"{PREFIX}ANOMALY_MODELS must list some of {', '.join(KINDS)}")
    return True


def _rules(value: Any) -> bool:
    resolve_rules(value, PREFIX)  # raises
    return True


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
    fail_mode: str = field(
        default="open", metadata=_rule(lambda value: value in FAIL_MODES, "{key} must be 'open' or 'closed', not {value!r}"))
    #: Seconds before a down rate-limit storage is tried again.
    storage_retry: float = field(default=5.0, metadata=_SECONDS)
    #: Header read as ``Bearer <key>``; None to disable.
    auth_header: str | None = "Authorization"
    #: Header read as a bare key; None to disable.
    api_key_header: str | None = "X-API-Key"
    #: Seconds a key look-up is cached in each process (revocation delay elsewhere).
    key_cache_ttl: float = field(default=30.0, metadata=_SECONDS)
    #: Keys the key cache holds (about 0.8 KB each): the keys used at once, so
    #: that no request waits for a database read (least recently used go first).
    key_cache_size: int = field(default=100_000, metadata=_COUNT)
    #: Seconds an old key stays valid after rotation.
    rotation_grace: float = field(default=86_400.0, metadata=_SECONDS)
    #: Secret of the input fingerprints (keyed hash); default derived from ``SECRET_KEY``.
    secret: str | bytes | None = None
    #: Store raw request bodies in the query log.
    store_inputs: bool = False
    #: Seconds the query log keeps an event (the worker purges older ones hourly,
    #: as ``flask modelguard purge-events`` does); None keeps every event.
    retention: float | None = field(default=None, metadata=_rule(
        lambda value: value is None or value > 0, "{key} must be a number of seconds > 0, or None, not {value!r}"))
    #: Where query events are judged: "thread" (a worker thread in each serving process) or a
    #: Redis URL: a stream ``flask modelguard worker`` consumes, off the serving processes.
    events: str = field(default="thread", metadata=_rule(
        lambda value: value == "thread" or value.startswith(("redis://", "rediss://", "unix://")),
        "{key} must be 'thread' or a Redis URL (redis://host:6379/0), not {value!r}"))
    #: Events the Redis stream holds unconsumed at most (beyond, publishers drop and count them).
    events_backlog: int = field(default=1_000_000, metadata=_COUNT)
    #: Bound of the event queue; events beyond it are dropped and counted.
    queue_size: int = field(default=10_000, metadata=_COUNT)
    #: Largest request body a protected route reads, in bytes (larger: 413 problem, nothing read).
    max_body: int = field(default=2**20, metadata=_COUNT)
    #: Bytes of request bodies the event queue holds at most (beyond, events are dropped and counted).
    queue_bytes: int = field(default=64 * 2**20, metadata=_COUNT)
    #: Where events that storage refused at shutdown are kept for the next process: a
    #: directory; None: ``<instance folder>/modelguard-spill``; False: nowhere (counted in ``dropped``).
    spill: Any = field(default=None, metadata=_rule(
        lambda value: value is None or value is False or isinstance(value, (str, os.PathLike)),
        "{key} must be a directory, None or False, not {value!r}"))
    #: Events written per database transaction.
    batch_size: int = field(default=500, metadata=_COUNT)
    #: Seconds between worker flushes.
    flush_interval: float = field(default=0.5, metadata=_SECONDS)
    #: Seconds spent flushing at shutdown.
    shutdown_timeout: float = field(default=5.0, metadata=_SECONDS)
    #: Send rate-limit headers on protected responses.
    headers_enabled: bool = True
    #: Output transforms of protected routes, in order (``["round(2)"]``); see docs/output-protection.md.
    output: Any = field(default_factory=list)
    #: Tier name → output transforms, replacing ``output`` for that tier.
    tier_output: Mapping[str, Any] = field(default_factory=dict)
    #: Output transforms for flagged accounts (instead of the others).
    suspicious_output: Any = field(default_factory=lambda: ["misinformation"])
    #: When a request's cost is kept: "success" (a 4xx answer of the view gives it
    #: back; fixed window only) or "always" (Flask-Limiter's ``deduct_when`` default).
    deduct_when: str = field(
        default="success", metadata=_choices("success", "always", error="{key} must be 'success' or 'always', not {value!r}"))
    #: An answer of a protected route that cannot be protected (shape unknown, labels not
    #: rewritable): "pass" (sent as the model gave it) or "withhold" (502), for every
    #: account alike; counted and logged once per route either way.
    unrecognised: str = field(
        default="pass", metadata=_choices("pass", "withhold", error="{key} must be 'pass' or 'withhold', not {value!r}"))
    #: Fraction of inputs per account answered with a watermark (deliberately wrong) label.
    watermark: float = field(default=0.0025, metadata=_FRACTION)
    #: The watermark fraction at a malicious score of 0.5 (the flag threshold), risen
    #: linearly from ``watermark`` at score ``watermark_from``; None: no rise.
    watermark_raised: float | None = field(default=0.1, metadata=_strict(
        lambda value: value is None or 0 <= value <= 1, "{key} must be a fraction in [0, 1] or None, not {value!r}"))
    watermark_from: float = field(
        default=0.35, metadata=_strict(lambda value: 0 <= value <= 0.5, "{key} must be a score in [0, 0.5], not {value!r}"))
    #: Strength in [0, 0.5] of the probability mark, for every account (docs/output-protection.md); 0: off.
    probability_mark: float = field(default=0.0, metadata=_strict(lambda v: 0 <= v <= 0.5, "{key} must be in [0, 0.5]"))
    #: Poison and misinformation answers kept as ownership evidence per account (one an input); 0: none.
    evidence_limit: int = field(default=1000, metadata=_SECONDS)
    #: Run the detectors in the worker and flag the accounts they find.
    detection: bool = True
    #: Function of one model input returning its feature vector; default its numbers, flattened.
    features: Any = field(default=None, metadata=_function("{key} must be a function of one model input"))
    #: Feature dimension cap (a fixed random projection beyond it).
    feature_dim: int = field(default=64, metadata=_COUNT)
    #: Name of the feature space (stored with account states and the reference;
    #: states of another space are not merged). Default: the feature function's
    #: qualified name and the dimension. Change it when the function changes
    #: what it computes under the same name (a retrained embedding, say).
    feature_space: str | None = field(
        default=None, metadata=_strict(lambda value: value != "", "{key} must be a non-empty string, not {value!r}"))
    #: Known-good model inputs and the model's labels for them, ADD's
    #: reference: a path to ``.npz`` (``X``, ``y``) or ``.json``
    #: (``{"inputs", "labels"}``), or a function returning ``(inputs, labels)``.
    #: Fitted at start-up unless the stored reference was fitted on the same
    #: data (or by an operator, with ``fit-reference``); see docs/detection.md.
    reference: Any = field(default=None, metadata=_rule(
        lambda value: value is None or callable(value) or isinstance(value, (str, os.PathLike)),
        "{key} must be a path (.npz, .json) or a function returning (inputs, labels)"))
    #: Where input features may lie, ``[low, high]``: features beyond are
    #: clipped before any statistic sees them (hostile numbers such as 1e308
    #: cannot overflow an account's moments). None: the reference's range,
    #: widened on each side by its widest feature's range; always within ±1e12.
    input_range: Any = field(default=None, metadata=_rule(
        lambda value: value is None or _is_range(value), "{key} must be [low, high] with low < high, not {value!r}"))
    #: The reference-free detector (ADD against the pooled recent traffic of
    #: all accounts, robust to a minority of thieves): "auto" (on while there
    #: is no reference), True or False.
    population: Any = field(
        default="auto", metadata=_choices("auto", True, False, error="{key} must be 'auto', true or false, not {value!r}"))
    #: Seconds between refits of the population reference in the worker.
    population_refit: float = field(default=60.0, metadata=_SECONDS)
    #: PRADA flags an account when the Shapiro-Wilk W of its distances falls below this.
    prada_threshold: float = 0.9
    #: Accounts a process keeps in memory for the detectors (the least recently
    #: active leave first, their unmerged queries stored at the next merge).
    max_accounts: int = field(default=10_000, metadata=_COUNT)
    #: Queries an account sends before the detectors judge it.
    detection_min_queries: int = field(default=20, metadata=_COUNT)
    #: Detectors run after every this many queries of an account (and every 5% of its size).
    detection_every: int = field(default=25, metadata=_COUNT)
    #: What a detector verdict does: "observe" (record and alert only, answers
    #: untouched), "degrade" (flag: the suspicious-account output policy),
    #: "throttle" (flag and move to ``throttle_tier``), "block" (flag and block: 403).
    action: str = field(default="degrade", metadata=_choices(
        "observe", "degrade", "throttle", "block", error="{key} must be observe, degrade, throttle or block, not {value!r}"))
    #: Tier of throttled accounts.
    throttle_tier: str = "free"
    #: Behaviour anomaly models to fit on benign accounts' stored states:
    #: any of "isolation_forest", "one_class_svm", "lof" (none by default).
    anomaly_models: Any = field(default_factory=list, metadata={"check": _anomaly_models})
    #: Seconds between refits of the anomaly models in the worker.
    anomaly_refit: float = field(default=3600.0, metadata=_SECONDS)
    #: Benign false-positive rate the anomaly models' thresholds are set for.
    anomaly_fpr: float = field(default=0.005, metadata=_RATE)
    #: Opt-in rules on windowed statistics: names (``["unique_per_hour",
    #: "label_entropy"]``) or name → parameters; see docs/detection.md.
    rules: Any = field(default_factory=list, metadata={"check": _rules})
    #: How detectors become a flag: "any" (any detector over its own
    #: threshold), "ensemble" (the trained stacked ensemble's score >= 0.5;
    #: needs ``flask modelguard fit-detectors``) or "auto" (the ensemble when
    #: one is trained, else any).
    verdict: str = field(default="auto", metadata=_choices(
        "any", "auto", "ensemble", error="{key} must be 'any', 'auto' or 'ensemble', not {value!r}"))
    #: Benign false-positive rate (per account) the random forest and the
    #: stacked ensemble are calibrated for when trained.
    ensemble_fpr: float = field(default=0.005, metadata=_RATE)
    #: Look for colluding accounts (docs/detection.md) every ``groups_interval`` seconds:
    #: "observe" (one alert per group, nothing flagged), "flag" (``action`` applies) or False.
    groups: Any = field(default="flag", metadata=_choices(
        "observe", "flag", False, error="{key} must be 'observe', 'flag' or false, not {value!r}"))
    groups_interval: float = field(default=60.0, metadata=_SECONDS)
    #: Function of the request naming the client behind it (an address, a device
    #: id) or None: accounts sharing one are searched as a likely group (kept hashed).
    client_id: Any = field(default=None, metadata=_function("{key} must be a function of the request"))
    #: Register the admin API (and dashboard) under ``admin_prefix``.
    admin_enabled: bool = True
    #: URL prefix of the admin API (``<prefix>/api``) and dashboard (``<prefix>/``).
    admin_prefix: str = field(default="/modelguard", metadata=_rule(
        lambda value: value.startswith("/") and not value.endswith("/"),
        "{key} must start with '/' and not end with one: {value!r}"))
    #: Optional ``fn(request) -> admin name or None``: the app's own admin
    #: authentication, tried before admin tokens.
    admin_auth: Any = field(default=None, metadata=_function("{key} must be a function of the request"))
    #: The session cookie the dashboard signs in with is ``Secure`` (sent over
    #: HTTPS only): None: outside debug and testing; True or False. Its
    #: ``SameSite`` is ``Lax`` unless the app set one.
    secure_cookies: bool | None = field(
        default=None, metadata=_choices(None, True, False, error="{key} must be None, true or false, not {value!r}"))
    #: URL that receives a JSON POST for every flagged account (retried; see docs/detection.md).
    alert_webhook: str | None = field(default=None, metadata=_rule(
        lambda value: value is None or value.startswith(("http://", "https://")),
        "{key} must be an http(s) URL, not {value!r}"))
    #: Extra headers of the webhook requests (e.g. an ``Authorization`` token).
    alert_webhook_headers: Mapping[str, str] = field(default_factory=dict)
    #: Collect Prometheus metrics (needs ``prometheus_client``; see docs/metrics.md).
    metrics_enabled: bool = True
    #: Path of the metrics endpoint (no API key needed); None collects without exposing.
    metrics_path: str | None = field(default="/modelguard/metrics", metadata=_rule(
        lambda value: value is None or value.startswith("/"), "{key} must start with '/', not {value!r}"))
    #: Bearer token the metrics endpoint requires, if set.
    metrics_token: str | None = field(
        default=None, metadata=_rule(lambda value: value != "", "{key} must not be empty (None turns it off)"))
    #: Function returning the time in epoch seconds (event times, key expiry);
    #: default the guard's ``clock`` argument, ``time.time``. Simulations pass
    #: a :class:`~flask_modelguard.simulate.SimulatedClock`.
    clock: Any = field(default=None, metadata=_function("{key} must be a function returning epoch seconds"))

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
        """Raise :class:`InvalidValue` naming the first setting that is wrong:
        each one (in the order above) against its annotation and its rule,
        then the settings that depend on each other."""
        hints = _annotations()
        for f in fields(self):
            _check_setting(f, hints[f.name], getattr(self, f.name))
        if self.action == "throttle" and self.throttle_tier not in self.tiers:
            raise InvalidValue(f"{PREFIX}THROTTLE_TIER {self.throttle_tier!r} is not in MODELGUARD_TIERS")
        if self.default_tier not in self.tiers:
            raise InvalidValue(f"MODELGUARD_DEFAULT_TIER {self.default_tier!r} is not in MODELGUARD_TIERS")
        if not (self.auth_header or self.api_key_header):
            raise InvalidValue("At least one of MODELGUARD_AUTH_HEADER and MODELGUARD_API_KEY_HEADER must be set")

    def resolved_rules(self) -> dict[str, dict[str, float]]:
        """``rules`` as name → parameters, the defaults filled in."""
        return resolve_rules(self.rules, PREFIX)

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


@functools.cache
def _annotations() -> dict[str, Any]:
    """Each setting's annotation, evaluated (once: they are strings here)."""
    return get_type_hints(Settings)


def _conforms(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the annotated type: ``bool`` is not a number,
    an ``int`` is a ``float``, a generic is its origin (``Mapping[str, Any]``:
    any mapping)."""
    if hint is Any:
        return True
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return any(_conforms(value, option) for option in get_args(hint))
    if hint is type(None):
        return value is None
    if hint is int or hint is float:
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def _check_setting(f: Field[Any], hint: Any, value: Any) -> None:
    """Raise :class:`InvalidValue` when ``value`` is not of ``f``'s annotated
    type, or fails the rule of its metadata."""
    rule, key = f.metadata, PREFIX + f.name.upper()
    if rule.get("typed", True) and not _conforms(value, hint):
        raise InvalidValue(rule.get("type_error", WRONG_TYPE).format(key=key, value=value))
    check = rule.get("check")
    if check is not None and not check(value):
        raise InvalidValue(rule.get("error", "{key} is not valid: {value!r}").format(key=key, value=value))


def _is_range(value: Any) -> bool:
    """``[low, high]``: two finite numbers, low < high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        return False
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in value):
        return False
    return bool(value[0] < value[1])
