"""The Flask glue: :class:`ModelGuard`, :func:`protect` and problem responses.

The guard runs inside the wrapper of each protected view, not in global
``before_request`` hooks, so unprotected routes pay nothing and the view's
return value can be read before Flask serialises it.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException
from sqlalchemy import create_engine
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError, StatementError
from sqlalchemy.pool import StaticPool

from .auth import Authenticator
from .config import Settings
from .detectors.add import Reference
from .detectors.anomaly import AnomalyModel
from .events import QueryEvent, fingerprint
from .features import Featurizer, flatten
from .exc import (
    BadRequest,
    CostExceedsLimit,
    HTTPProblem,
    InvalidValue,
    Problem,
    RateLimitExceeded,
    StorageUnavailable,
)
from .keys import KEY_SCHEME, parse_key
from .ownership import DEFAULT_THRESHOLD_LOG2, Suspect, Verification, http_suspect, verify
from .monitor import Monitor
from .payload import instances, read_predictions
from .protection import OutputProtector, RouteOptions
from .quotas import LimitSet, QuotaEnforcer, Verdict
from .repository import Principal, Repository
from .state import AccountState, Observation
from .worker import EventWorker

log = logging.getLogger("flask_modelguard")

F = TypeVar("F", bound=Callable[..., Any])
EXTENSION_KEY = "modelguard"
PROBLEM_MIMETYPE = "application/problem+json"


def problem_response(problem: Problem) -> Response:
    """An RFC 9457 ``application/problem+json`` response for ``problem``."""
    return Response(
        json.dumps(problem.to_dict()),
        status=problem.status,
        mimetype=PROBLEM_MIMETYPE,
        headers=problem.headers,
    )


def _bad_data(exc: BaseException) -> bool:
    """A write error retrying cannot fix: the rows are at fault, not the database."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return False  # connection lost, database down, locked: transient
    return isinstance(exc, (StatementError, TypeError, ValueError))


_live_states: weakref.WeakSet[_GuardState] = weakref.WeakSet()


def _reset_in_child() -> None:
    for state in list(_live_states):
        state.monitor.reset()  # the parent merges what it saw; the child starts afresh
        state._pid = os.getpid()


def _persist_at_exit() -> None:
    """Write queued events, then merge the account states they fed."""
    for state in list(_live_states):
        if state._pid == os.getpid():
            state.worker.flush()
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


def _add_headers(response: Response, headers: list[tuple[str, str]]) -> None:
    """Append headers we built ourselves (ASCII names, digits and quoted policy
    names, never user input) without werkzeug's per-value validation, which
    costs more than building them."""
    raw = getattr(response.headers, "_list", None)
    if isinstance(raw, list):
        raw.extend(headers)
    else:  # pragma: no cover - a future werkzeug without _list
        response.headers.extend(headers)


class _GuardState:
    """Everything the guard keeps for one application."""

    def __init__(self, guard: ModelGuard, app: Flask, settings: Settings) -> None:
        self.guard = guard
        self.settings = settings
        self.clock = guard.clock
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
        fingerprint_key = settings.fingerprint_key(app.config.get("SECRET_KEY"))
        self.fingerprint_key = fingerprint_key
        self.protector = OutputProtector(
            fingerprint_key,
            output=settings.output,
            tier_output=settings.tier_output,
            suspicious_output=settings.suspicious_output,
            watermark=settings.watermark,
        )
        self.featurizer = Featurizer(settings.features, settings.feature_dim)
        self.raw = Featurizer(None, settings.feature_dim)  # PRADA's space: the inputs themselves
        self.monitor = Monitor(
            settings.feature_dim,
            prada_threshold=settings.prada_threshold,
            min_queries=settings.detection_min_queries,
            every=settings.detection_every,
            loader=self._load_state,
        )
        self.worker: EventWorker[QueryEvent] = EventWorker(
            self._prepare,
            self._write_events,
            max_queue=settings.queue_size,
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
        #: Events the detectors failed on (logged; the event itself is still written).
        self.detection_errors = 0
        #: Events the detectors could not judge (inputs and answers do not pair up).
        self.detection_skipped = 0
        self._next_refit = 0.0
        self._action: dict[str, Any] = {
            "observe": {"observe": True}, "degrade": {},
            "throttle": {"tier": settings.throttle_tier}, "block": {"status": "blocked"},
        }[settings.action]

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
            found = read_predictions(event.model_json)
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
            evaluation = self.monitor.observe(event.account_id, obs)
        if evaluation is not None:
            row["evaluation"] = {
                "account_id": evaluation.account_id, "ts": evaluation.ts, "queries": evaluation.queries,
                "scores": evaluation.scores, "reasons": evaluation.reasons,
            }

    def _write_events(self, rows: Any) -> None:
        flagged = self.repository.insert_events(rows, self._action)
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
            log.warning("modelguard: account %d flagged (%s): %s", account_id,
                        "canary" if why.get(account_id, "").startswith("sent a canary") else self.settings.action,
                        why.get(account_id, "?"))
            self.auth.invalidate(account_id=account_id)

    def _load_state(self, account_id: int) -> AccountState | None:
        try:
            data = self.repository.load_state(account_id)
        except SQLAlchemyError as exc:
            log.warning("modelguard: could not load the state of account %d (%s)", account_id, exc.__class__.__name__)
            return None
        if data is None or data.get("dim") != self.settings.feature_dim:
            return None  # nothing stored, or a state of another feature space
        return AccountState.from_dict(data)

    def persist_states(self) -> int:
        """Merge this process's account deltas into the stored states (the
        worker does it every key-cache TTL, and at flush and shutdown);
        returns how many accounts were merged."""
        done = 0
        with self.monitor.lock:
            pending = self.monitor.deltas()
            for n, (account_id, delta) in enumerate(pending):
                data = delta.to_dict()

                def merge(stored: dict[str, Any] | None, data: dict[str, Any] = data) -> dict[str, Any]:
                    if stored is None or stored.get("dim") != data["dim"]:
                        return data  # nothing stored, or another feature space: start over
                    return AccountState.from_dict(stored).merge(AccountState.from_dict(data)).to_dict()

                try:
                    merged = self.repository.merge_state(account_id, merge)
                except Exception:
                    # Keep every delta not merged yet, for the next attempt.
                    for later_id, later in pending[n:]:
                        if self.monitor.state(later_id) is None:
                            self.monitor.evicted.append((later_id, later))
                    raise
                self.monitor.merged(account_id, AccountState.from_dict(merged))
                done += 1
        return done

    def _tick(self) -> None:
        self.refresh_canaries()
        try:
            self.persist_states()
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
                vectors.append(self.monitor.score_state(AccountState.from_dict(data)))
        if len(vectors) < 10:
            log.info("modelguard: %d benign accounts, too few to fit anomaly models", len(vectors))
            return 0
        models = [AnomalyModel(kind, fpr=self.settings.anomaly_fpr).fit(vectors) for kind in kinds]
        with self.monitor.lock:
            self.monitor.anomaly = models
        return len(vectors)

    def load_reference(self, quiet: bool = False) -> None:
        try:
            data = self.repository.load_reference()
        except SQLAlchemyError as exc:
            (log.debug if quiet else log.warning)("modelguard: could not load the reference (%s)", exc.__class__.__name__)
            return
        self.monitor.reference = None if data is None else Reference.from_dict(data)

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
        route = options.name or req.endpoint or req.path
        now = self.clock()
        try:
            principal = self.auth.authenticate(req.headers)
        except Problem as problem:
            if problem.principal is not None:  # a known account refused: logged
                self._record(problem.principal, route, now, problem.status, started, 0, None, None)
            return problem_response(problem)
        try:
            body = req.get_json(silent=True)  # None unless a JSON body; cached for the view
        except RecursionError:
            return self._refuse(BadRequest("The JSON body is nested too deeply."), principal, route, now, started, 1, None)
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
        wall = time.time()  # limit windows run on the limits library's clock
        headers = self._headers(verdict, limits, wall)
        if not verdict.allowed:
            return self._refuse(self._refusal(verdict, cost, wall, headers), principal, route, now, started, cost, body)
        if verdict.failed_open:
            self.failed_open += 1
        marks: list[Any] = []
        canary = False
        model_rv: Any = None
        try:
            rv = model_rv = view(*args, **kwargs)
            rv, marks, canary = self._protect(rv, body, principal, options)
            response = current_app.make_response(rv)
        except (Problem, HTTPException) as exc:
            if isinstance(exc, HTTPException):
                if exc.code is None or exc.code < 400:
                    raise
                problem: Problem = HTTPProblem(exc.code, exc.name, exc.description or exc.name)
            else:
                problem = exc
            problem.headers = {**dict(headers), **problem.headers}
            response, rv = problem_response(problem), None
        except BaseException:
            self._record(principal, route, now, 500, started, cost, body, None)
            raise
        else:
            if headers:
                _add_headers(response, headers)
            if isinstance(rv, tuple):
                rv = rv[0]
            if not isinstance(rv, (dict, list)):
                rv = response.get_data() if response.is_json and not response.is_streamed else None
        model_answer = None
        if model_rv is not None and model_rv is not rv and self.settings.detection:
            model_answer = model_rv[0] if isinstance(model_rv, tuple) else model_rv
            if not isinstance(model_answer, (dict, list)):
                model_answer = None
        self._record(principal, route, now, response.status_code, started, cost, body, rv, marks, canary, model_answer)
        return response

    def _protect(self, rv: Any, body: Any, principal: Principal, options: RouteOptions) -> tuple[Any, list[Any], bool]:
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
                payload, body, principal.account_id, principal.flagged, principal.score, policy, options)
            if new is not payload:
                rv.set_data(current_app.json.dumps(new))
            return rv, marks, canary
        new, marks, canary = self.protector.protect(
            rv, body, principal.account_id, principal.flagged, principal.score, policy, options)
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
    ) -> None:
        self.worker.submit(
            QueryEvent(
                principal.account_id, principal.key_id, route, now, status,
                (time.perf_counter() - started) * 1000.0, cost, body, answer, marks, canary, model_answer,
            )
        )

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
        self.repository.engine.dispose()

    def _persist_quietly(self) -> None:
        try:
            self.persist_states()
        except SQLAlchemyError as exc:
            log.error("modelguard: account states not stored (%s)", exc.__class__.__name__)


class ModelGuard:
    """The extension. ``ModelGuard(app)`` or ``guard = ModelGuard(); guard.init_app(app)``.

    Keyword arguments override ``MODELGUARD_*`` configuration keys (see
    :class:`~flask_modelguard.config.Settings`); ``clock`` replaces
    ``time.time`` for event times and key expiry (simulations).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        clock: Callable[[], float] = time.time,
        **options: Any,
    ) -> None:
        Settings.check_names(options)  # a misspelt option fails here; values are checked in init_app
        self.options = options
        self.clock = clock
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        settings = Settings.resolve(app.config, self.options)
        state = _GuardState(self, app, settings)
        app.extensions[EXTENSION_KEY] = state
        app.register_error_handler(Problem, problem_response)
        if settings.create_tables:
            state.repository.create_all()
        state.refresh_canaries(quiet=True)
        state.load_reference(quiet=True)
        from .cli import modelguard_cli

        app.cli.add_command(modelguard_cli)

    # -- decorating views -------------------------------------------------------

    def protect(self, view: F | None = None, /, **options: Any) -> Any:
        """Protect a prediction view: ``@guard.protect`` or ``@guard.protect(cost=...)``."""
        return protect(view, **options)

    # -- per-app state ----------------------------------------------------------

    @staticmethod
    def state(app: Flask | None = None) -> _GuardState:
        app = app or current_app
        try:
            return app.extensions[EXTENSION_KEY]
        except KeyError:
            raise RuntimeError(
                "ModelGuard is not initialised on this app; call ModelGuard(app) or guard.init_app(app)."
            ) from None

    def init_db(self, app: Flask | None = None) -> None:
        """Create the guard's tables if they are missing."""
        self.state(app).repository.create_all()

    def flush(self, app: Flask | None = None, timeout: float | None = None) -> bool:
        """Write every queued event now, and merge account states into the
        database; True if no event is left."""
        state = self.state(app)
        done = state.worker.flush(timeout)
        state._persist_quietly()
        return done

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """Worker and storage counters of this process."""
        state = self.state(app)
        return {
            **state.worker.stats(),
            "limits_storage_errors": state.enforcer.storage_errors,
            "limits_storage_down": state.enforcer.storage_down,
            "failed_open": state.failed_open,
            "detection_errors": state.detection_errors,
            "detection_skipped": state.detection_skipped,
            **state.monitor.stats(),
        }

    def close(self, app: Flask | None = None) -> None:
        """Flush, stop the worker and release the database connections."""
        self.state(app).close()

    # -- accounts and keys (invalidate this process's cache at once) -----------

    def create_account(
        self, name: str, tier: str | None = None, limits: str | None = None, app: Flask | None = None
    ) -> dict[str, Any]:
        state = self.state(app)
        tier = tier or state.settings.default_tier
        state.enforcer.check_tier(tier)
        if limits is not None:
            state.enforcer.limits_for(tier, limits)  # validates
        return state.repository.create_account(name, tier, limits)

    def update_account(
        self,
        name: str,
        *,
        status: str | None = None,
        tier: str | None = None,
        limits: str | None | object = ...,
        flagged: bool | None = None,
        score: float | None = None,
        allowlisted: bool | None = None,
        app: Flask | None = None,
    ) -> dict[str, Any]:
        """Change status, tier, limits override (``limits=None`` removes it),
        the flag that selects the suspicious-account output policy, or the
        malicious score in [0, 1] (poisoning can grow with it)."""
        state = self.state(app)
        values: dict[str, Any] = {}
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= score <= 1.0:
                raise InvalidValue(f"score must be in [0, 1], not {score!r}")
            values["score"] = float(score)
        if status is not None:
            values["status"] = status
        if flagged is not None:
            values["flagged"] = bool(flagged)
            if not flagged:  # the detectors need new evidence to act again
                stored = state.repository.get_account(name)
                data = state.repository.load_state(stored["id"])
                values["reviewed_queries"] = int(data["queries"]) if data else 0
        if allowlisted is not None:
            values["allowlisted"] = bool(allowlisted)
            if allowlisted:
                values.setdefault("flagged", False)
        if tier is not None:
            state.enforcer.check_tier(tier)
            values["tier"] = tier
        if limits is not ...:
            if limits is not None:
                state.enforcer.limits_for("", str(limits))
            values["limits"] = limits
        account = state.repository.update_account(name, **values)
        if not account["flagged"]:
            state.protector.caught.discard(account["id"])
        state.auth.invalidate(account_id=account["id"])
        return account

    def issue_key(self, account: str, app: Flask | None = None) -> str:
        """A new key for ``account``. The returned token is the only copy: show it once."""
        new, _ = self.state(app).repository.issue_key(account)
        return new.token

    def rotate_key(self, key: str, grace: float | None = None, app: Flask | None = None) -> str:
        """A new key for the owner of ``key`` (a prefix or a whole key); the old
        one stays valid for ``grace`` seconds (default ``MODELGUARD_ROTATION_GRACE``)."""
        state = self.state(app)
        prefix = _prefix(key)
        grace = state.settings.rotation_grace if grace is None else grace
        new, _ = state.repository.rotate_key(prefix, grace)
        state.auth.invalidate(prefix=prefix)
        return new.token

    def revoke_key(self, key: str, app: Flask | None = None) -> dict[str, Any]:
        state = self.state(app)
        prefix = _prefix(key)
        row = state.repository.revoke_key(prefix)
        state.auth.invalidate(prefix=prefix)
        return row

    def list_accounts(self, status: str | None = None, app: Flask | None = None) -> list[dict[str, Any]]:
        return self.state(app).repository.list_accounts(status)

    def list_keys(self, account: str, app: Flask | None = None) -> list[dict[str, Any]]:
        return self.state(app).repository.list_keys(account)


    # -- detection --------------------------------------------------------------------

    def fit_reference(self, inputs: Any, labels: Any, app: Flask | None = None, **options: Any) -> Reference:
        """Fit ADD's reference from known-good model inputs (as requests carry
        them, e.g. the ``features`` lists) and the model's labels for them;
        stored in the database and used at once in this process (other
        processes load it at start-up)."""
        state = self.state(app)
        X = np.stack([state.featurizer(x) for x in inputs])
        reference = Reference.fit(X, list(labels), **options)
        state.repository.save_reference(reference.to_dict())
        state.monitor.reference = reference
        return reference

    def score_history(self, account: str, app: Flask | None = None) -> list[dict[str, Any]]:
        """Every detector evaluation of ``account``, oldest first."""
        return self.state(app).repository.score_history(account)

    # -- output protection: canaries and watermarks ------------------------------

    def add_canaries(self, inputs: list[Any], note: str | None = None, app: Flask | None = None) -> int:
        """Register honey-trap inputs (as a request's model inputs, e.g. the
        ``features`` lists); any account that sends one is flagged. Returns how
        many were new."""
        state = self.state(app)
        fingerprints = [fingerprint(x, state.fingerprint_key) for x in inputs]
        added = state.repository.add_canaries(fingerprints, note)
        state.protector.add_canaries(fingerprints)
        return added

    def watermark_records(self, account: str, limit: int | None = 250, app: Flask | None = None) -> list[dict[str, Any]]:
        """The watermark answers ``account`` received (one per distinct input, oldest first)."""
        return self.state(app).repository.watermark_records(account, limit)

    def verify_watermark(
        self,
        account: str,
        suspect: Suspect | str,
        *,
        max_probes: int = 250,
        null_rate: float | None = None,
        threshold_log2: float = DEFAULT_THRESHOLD_LOG2,
        app: Flask | None = None,
    ) -> Verification:
        """Test whether ``suspect`` (a function of a list of inputs returning
        labels, or the URL of a prediction API) was trained on ``account``'s
        answers, from at most ``max_probes`` watermark inputs."""
        records = self.watermark_records(account, max_probes, app=app)
        predict = http_suspect(suspect) if isinstance(suspect, str) else suspect
        labels = list(predict([r["input"] for r in records])) if records else []
        return verify(account, records, labels, null_rate=null_rate, threshold_log2=threshold_log2)

    def attribute(
        self, suspect: Suspect | str, *, max_probes: int = 250, app: Flask | None = None, **kwargs: Any
    ) -> list[Verification]:
        """Verify ``suspect`` against every account that received watermarks;
        most significant first. Claimed entries name the accounts it came from."""
        accounts = self.state(app).repository.accounts_with_watermarks()
        results = [self.verify_watermark(a, suspect, max_probes=max_probes, app=app, **kwargs) for a in accounts]
        return sorted(results, key=lambda v: v.log2_p)


def _prefix(key: str) -> str:
    """A key prefix from a prefix or a whole key."""
    return parse_key(key).prefix if key.startswith(KEY_SCHEME + "_") else key


def protect(view: F | None = None, /, **options: Any) -> Any:
    """Mark a view as a protected prediction route.

    Usable as ``@protect`` or ``@protect(cost=..., name=...)``, before or after
    the app's guard exists: the wrapper finds the guard of ``current_app`` at
    request time. See :class:`RouteOptions` for the options.
    """
    route_options = RouteOptions(**options)

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return ModelGuard.state().guarded_call(fn, route_options, args, kwargs)

        wrapper.__modelguard__ = route_options  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(view) if view is not None else decorate
