"""The request path of a protected route: authenticate the key, read the body,
charge the account's (and the route's) limits, call the view, protect its
answer, and hand the query to the worker. No database round trip and no
model fitting happen here.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from .auth import Authenticator
from .config import Settings
from .events import QueryEvent
from .exc import (
    BadRequest,
    CostExceedsLimit,
    HTTPProblem,
    PayloadTooLarge,
    Problem,
    RateLimitExceeded,
    StorageUnavailable,
)
from .keys import Principal
from .limitset import LimitSet, Verdict, limit_set, rate_limit_headers
from .protection import OutputProtector, RouteOptions
from .quotas import QuotaEnforcer
from .responses import add_headers, problem_response
from .signals import quota_exceeded, send
from .worker import EventWorker

log = logging.getLogger("flask_modelguard")


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The body is larger than this API takes ({limit} bytes).")


@dataclass
class _Call:
    """One protected request on its way through."""

    principal: Principal
    route: str
    now: float  # the guard's clock (events are stamped with it)
    started: float  # perf_counter at arrival
    body: Any = None
    cost: int = 1


@dataclass
class _Admission:
    """What the limits said of an admitted request."""

    limits: LimitSet
    verdict: Verdict
    scoped: Verdict | None  # the route's own limits' verdict, if it has limits
    headers: list[tuple[str, str]]


@dataclass
class _Answer:
    """What the view answered, before and after protection."""

    response: Response
    served: Any  # the JSON sent (None when it was not JSON)
    model: Any  # the model's own answer, when protection changed it
    marks: list[Any]
    canary: bool
    view_seconds: float
    fingerprints: list[str] | None = None  # the inputs' fingerprints, when protection computed them


class RequestPath:
    """The guarded call of every protected view of one app."""

    def __init__(self, settings: Settings, auth: Authenticator, enforcer: QuotaEnforcer,
                 protector: OutputProtector, worker: EventWorker[QueryEvent], clock: Callable[[], float],
                 app: Callable[[], Any], telemetry: Any = None) -> None:
        self.settings = settings
        self.auth = auth
        self.enforcer = enforcer
        self.protector = protector
        self.worker = worker
        self.clock = clock
        self._app = app
        self.telemetry = telemetry
        self._served_once = False
        self._counts = threading.Lock()
        #: Requests served without a rate-limit check because the storage was down.
        self.failed_open = 0
        #: Requests whose MODELGUARD_CLIENT_ID function raised (their client is unknown).
        self.client_id_errors = 0
        #: Events carry the request body's bytes (an out-of-process worker is sent them).
        self.ships_bodies = False
        #: Called at the first request of each process (the change feed's thread starts).
        self.on_first_request: Callable[[], None] | None = None

    @property
    def served(self) -> bool:
        """This process has served a protected request."""
        return self._served_once

    def reset_in_child(self) -> None:
        self._served_once = False  # a forked worker checks its first request again
        self._counts = threading.Lock()

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
                self._record(_Call(problem.principal, route, now, started, cost=0), problem.status)
            elif self.telemetry is not None:
                self.telemetry.request(problem.status, time.perf_counter() - started)
            return problem_response(problem)
        call = _Call(principal, route, now, started)
        admitted = self._admit(call, req, options)
        if isinstance(admitted, Response):
            return admitted
        answer = self._answer(call, view, options, args, kwargs, admitted.headers)
        status = answer.response.status_code
        if 400 <= status < 500 and self.settings.deduct_when == "success":
            self._refund(call, options, admitted)  # the view refused it: free
        self._record(call, status, answer.served, answer, options.adapter)
        return answer.response

    # -- admission ------------------------------------------------------------------

    def _admit(self, call: _Call, req: Any, options: RouteOptions) -> Response | _Admission:
        """Read the body and charge the limits: an admission, or the refusal."""
        call.body, unreadable = self._read_body(req)
        if unreadable is not None:
            return self._refuse(unreadable, call)
        principal = call.principal
        limits = self.enforcer.limits_for(principal.tier, principal.limits)
        try:
            call.cost = options.cost_of(call.body)
        except Exception as exc:
            return self._refuse(BadRequest(f"Cannot work out the cost of this request ({exc.__class__.__name__})."),
                                call)
        if limits.max_cost is not None and call.cost > limits.max_cost:
            return self._refuse(CostExceedsLimit(
                f"This request costs {call.cost} and the account's smallest limit allows {limits.max_cost}"
                " per window; send smaller batches.", cost=call.cost, max_cost=limits.max_cost,
            ), call)
        verdict = self.enforcer.hit(principal.account_id, limits, call.cost)
        # The verdict the headers show and its limits; the route's own verdict, if it has limits.
        shown, shown_limits, scoped = verdict, limits, None
        if verdict.allowed and options.limits:
            shown, shown_limits, scoped = self._hit_route(call, options.limits, limits, verdict)
        wall = self.enforcer.clock()  # limit windows run on the storage's clock
        headers = self._headers(shown, shown_limits, wall)
        verdict = verdict if shown.allowed else shown
        if not verdict.allowed:
            if quota_exceeded.receivers and verdict.limit is not None:
                send(quota_exceeded, self._app(), account_id=principal.account_id, limit=str(verdict.limit),
                     cost=call.cost)
            return self._refuse(self._refusal(verdict, call.cost, wall, headers), call)
        if verdict.failed_open:
            with self._counts:
                self.failed_open += 1
        return _Admission(limits, verdict, scoped, headers)

    def _hit_route(self, call: _Call, spec: str, limits: LimitSet,
                   verdict: Verdict) -> tuple[Verdict, LimitSet, Verdict]:
        """The route's own limits (``@protect(limits=...)``) after the account's:
        the verdict to show and its limits (the one that binds; a refusal by
        the route gives the account's count back), and the route's own verdict."""
        account_id = call.principal.account_id
        own = limit_set(spec)
        scoped = self.enforcer.hit(f"{account_id}@{call.route}", own, call.cost)
        if not scoped.allowed:
            self.enforcer.refund(account_id, limits, call.cost, verdict)
            return scoped, own, scoped
        if scoped.limit is not None and (verdict.limit is None or scoped.remaining < verdict.remaining):
            return scoped, own, scoped
        return verdict, limits, scoped

    def _refund(self, call: _Call, options: RouteOptions, admitted: _Admission) -> None:
        account_id = call.principal.account_id
        self.enforcer.refund(account_id, admitted.limits, call.cost, admitted.verdict)
        if admitted.scoped is not None and options.limits:
            self.enforcer.refund(f"{account_id}@{call.route}", limit_set(options.limits), call.cost, admitted.scoped)

    # -- the view and its answer -------------------------------------------------------

    def _answer(self, call: _Call, view: Callable[..., Any], options: RouteOptions, args: Any, kwargs: Any,
                headers: list[tuple[str, str]]) -> _Answer:
        """Call the view and protect its answer; a problem it raises becomes problem+json."""
        model_rv: Any = None
        view_started = time.perf_counter()
        view_ended = 0.0
        try:
            rv = model_rv = view(*args, **kwargs)
            view_ended = time.perf_counter()
            rv, marks, canary, fingerprints = self._protect(rv, call, options)
            response = current_app.make_response(rv)
        except (Problem, HTTPException) as exc:
            view_ended = view_ended or time.perf_counter()
            refusal = self._problem_of(exc)
            refusal.headers = {**dict(headers), **refusal.headers}
            return _Answer(problem_response(refusal), None, None, [], False, view_ended - view_started)
        except BaseException:
            self._record(call, 500, None, None, None, (view_ended or time.perf_counter()) - view_started)
            raise
        if headers:
            add_headers(response, headers)
        if isinstance(rv, tuple):
            rv = rv[0]
        model = self._model_answer(model_rv, rv)
        if self.ships_bodies or not isinstance(rv, (dict, list)):  # the bytes sent: not encoded again
            rv = response.get_data() if response.is_json and not response.is_streamed else None
        if options.inputs is not None:  # the worker reads the inputs of the body itself
            fingerprints = None
        return _Answer(response, rv, model, marks, canary, view_ended - view_started, fingerprints)

    @staticmethod
    def _problem_of(exc: Problem | HTTPException) -> Problem:
        if isinstance(exc, Problem):
            return exc
        if exc.code is None or exc.code < 400:
            raise exc
        return HTTPProblem(exc.code, exc.name, exc.description or exc.name)

    def _model_answer(self, model_rv: Any, served: Any) -> Any:
        """The model's own JSON answer when protection changed it (the detectors judge it)."""
        answer = model_rv[0] if isinstance(model_rv, tuple) else model_rv
        if answer is served or not self.settings.detection:
            return None
        return answer if isinstance(answer, (dict, list)) else None

    def _protect(self, rv: Any, call: _Call, options: RouteOptions) -> tuple[Any, list[Any], bool, list[str] | None]:
        """Apply the route's output policy to a successful JSON answer."""
        principal = call.principal
        policy = self.protector.policy(options, principal.tier)
        extra: tuple[Any, ...] = ()
        if isinstance(rv, tuple):
            rv, extra = rv[0], rv[1:]
            if extra and isinstance(extra[0], int) and not 200 <= extra[0] < 300:
                return (rv, *extra), [], False, None
        if isinstance(rv, Response):
            if not (rv.is_json and 200 <= rv.status_code < 300) or rv.is_streamed:
                return rv, [], False, None
            payload = rv.get_json(silent=True)
            if payload is None:
                return rv, [], False, None
            new, marks, canary, fingerprints = self.protector.protect(
                payload, call.body, principal.account_id, principal.flagged, principal.score, policy, options,
                call.route)
            if new is not payload:
                rv.set_data(current_app.json.dumps(new))
            return rv, marks, canary, fingerprints
        new, marks, canary, fingerprints = self.protector.protect(
            rv, call.body, principal.account_id, principal.flagged, principal.score, policy, options, call.route)
        return ((new, *extra) if extra else new), marks, canary, fingerprints

    # -- refusals and the event -----------------------------------------------------------

    def _refuse(self, problem: Problem, call: _Call) -> Response:
        self._record(call, problem.status)
        return problem_response(problem)

    def _record(self, call: _Call, status: int, served: Any = None, answer: _Answer | None = None,
                adapter: Any = None, view_seconds: float | None = None) -> None:
        """Queue the query's event for the worker; count it in the metrics."""
        principal = call.principal
        elapsed = time.perf_counter() - call.started
        marks = answer.marks if answer is not None else []
        canary = answer.canary if answer is not None else False
        self.worker.submit(
            QueryEvent(
                principal.account_id, principal.key_id, call.route, call.now, status,
                elapsed * 1000.0, call.cost, call.body, served, marks, canary,
                answer.model if answer is not None else None, adapter,
                answer.fingerprints if answer is not None else None,
                request.get_data(cache=True) if self.ships_bodies and call.body is not None else None,
                self._client(),
            ),
            request.content_length or 0,  # the body it holds, for the queue's byte bound
        )
        if self.telemetry is not None:  # poisoned: answered under the suspicious-account policy
            view = view_seconds if view_seconds is not None else (answer.view_seconds if answer else 0.0)
            self.telemetry.request(status, elapsed - view, any(mark[5] == "watermark" for mark in marks),
                                   canary or self.protector.treats_as_flagged(principal.account_id, principal.flagged))

    def _client(self) -> str | None:
        """``MODELGUARD_CLIENT_ID`` of this request (None when unset, or when it fails: counted)."""
        name_client = self.settings.client_id
        if name_client is None:
            return None
        try:
            found = name_client(request)
            name = "" if found is None else str(found)
        except Exception:
            self.client_id_errors += 1
            return None
        if len(name) > 256:  # a long token: its digest (it is hashed with the key in the worker)
            name = hashlib.blake2b(name.encode(errors="replace"), digest_size=16).hexdigest()
        return name or None

    def _first_request(self, environ: Any) -> None:
        """Checks only a request can make: several processes serving one app
        (``wsgi.multiprocess``, e.g. gunicorn with 2+ workers) with limits in
        process memory count each process's share apart: say so, once."""
        self._served_once = True
        if self.on_first_request is not None:
            try:
                self.on_first_request()
            except Exception:  # (the worker's tick tries again)
                log.exception("modelguard: could not start reading the change feed")
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
        return rate_limit_headers(verdict, limits, now)

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
