"""The Flask glue: :class:`ModelGuard` and :func:`protect`.

The guard runs inside the wrapper of each protected view, not in global
``before_request`` hooks, so unprotected routes pay nothing and the view's
return value can be read before Flask serialises it. The per-app runtime is
:class:`~flask_modelguard.runtime.GuardState`.
"""

from __future__ import annotations

import functools
import time
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import probmark
from .config import Settings
from .detectors.add import Reference
from .events import fingerprint
from .exc import HTTPProblem, InvalidValue, Problem
from .keys import KEY_SCHEME, parse_key
from .ownership import DEFAULT_PROBES, DEFAULT_THRESHOLD_LOG2, Suspect, Verification, http_suspect, verify
from .protection import RouteOptions
from .responses import PROBLEM_MIMETYPE, problem_response
from .runtime import EXTENSION_KEY, GuardState, state_of
from .signals import account_blocked, send

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["EXTENSION_KEY", "PROBLEM_MIMETYPE", "ModelGuard", "RouteOptions", "problem_response", "protect"]


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
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("ModelGuard is already initialised on this app; call init_app once per app.")
        settings = Settings.resolve(app.config, self.options)
        state = GuardState(self, app, settings)
        app.extensions[EXTENSION_KEY] = state
        app.register_error_handler(Problem, problem_response)
        app.before_request(_method_not_allowed)
        state.start()
        from .admin.store import AdminStore

        state.admin = AdminStore(state.repository.engine, state.clock)
        if settings.admin_enabled and "modelguard_admin_api" not in app.blueprints:  # once per app
            from .admin.api import api
            from .admin.dashboard import dashboard

            app.register_blueprint(api, url_prefix=settings.admin_prefix + "/api")
            app.register_blueprint(dashboard, url_prefix=settings.admin_prefix)
            _harden_session_cookie(app, settings.secure_cookies)
        from .cli import modelguard_cli

        app.cli.add_command(modelguard_cli)

    # -- decorating views -------------------------------------------------------

    def protect(self, view: F | None = None, /, **options: Any) -> Any:
        """Protect a prediction view: ``@guard.protect`` or ``@guard.protect(cost=...)``."""
        return protect(view, **options)

    # -- per-app state ----------------------------------------------------------

    @staticmethod
    def state(app: Flask | None = None) -> GuardState:
        """The guard's per-app state (default: the current app's)."""
        return state_of(app)

    def init_db(self, app: Flask | None = None) -> None:
        """Create the guard's tables if they are missing, or migrate them to this release's schema."""
        self.state(app).repository.create_all()

    def flush(self, app: Flask | None = None, timeout: float | None = None) -> bool:
        """Write every queued event now, and merge account states into the
        database; True if no event is left."""
        state = self.state(app)
        done = state.worker.flush(timeout)
        state.states.persist_or_spill()
        return done

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """Worker and storage counters of this process."""
        return self.state(app).stats()

    def close(self, app: Flask | None = None) -> None:
        """Flush, stop the worker and release the database connections."""
        self.state(app).close()

    # -- accounts and keys (invalidate this process's cache at once) -----------

    def create_account(
        self, name: str, tier: str | None = None, limits: str | None = None, app: Flask | None = None
    ) -> dict[str, Any]:
        state = self.state(app)
        _check_name(name)
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
        blocking = values.get("status") == "blocked" and state.repository.get_account(name)["status"] != "blocked"
        account = state.repository.update_account(name, **values)
        if not account["flagged"]:
            state.protector.caught.discard(account["id"])
        state.auth.invalidate(account_id=account["id"])
        if blocking:
            send(account_blocked, app or current_app._get_current_object(), account_id=account["id"],  # type: ignore[attr-defined]
                 account=name, reason="blocked by an operator", by="operator")
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
        processes load it at their worker's next tick)."""
        return self.state(app).fit_reference(inputs, labels, source=options.pop("source", "api"), **options)

    def fit_detectors(self, data: dict[str, Any], app: Flask | None = None) -> Any:
        """Train the supervised detectors and the stacked ensemble on labelled
        accounts (see :meth:`GuardState.fit_detectors`); stored in the database."""
        return self.state(app).fit_detectors(data)

    def calibrate(self, app: Flask | None = None, **options: Any) -> Any:
        """Train the random forest and the stacked ensemble on the app's own
        model from simulated traffic, and store them; returns the
        :class:`~flask_modelguard.calibration.Calibration` (what to expect).
        See :func:`flask_modelguard.calibration.calibrate` for the options."""
        from .calibration import calibrate

        return calibrate(app or current_app._get_current_object(), **options)  # type: ignore[attr-defined]

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

    def watermark_records(self, account: str, limit: int | None = DEFAULT_PROBES, app: Flask | None = None) -> list[dict[str, Any]]:
        """The watermark answers ``account`` received (one per distinct input, oldest first)."""
        return self.state(app).repository.watermark_records(account, limit)

    def verify_watermark(
        self,
        account: str,
        suspect: Suspect | str,
        *,
        max_probes: int = DEFAULT_PROBES,
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
        self, suspect: Suspect | str, *, max_probes: int = DEFAULT_PROBES, app: Flask | None = None, **kwargs: Any
    ) -> list[Verification]:
        """Verify ``suspect`` against every account that received watermarks;
        most significant first. Claimed entries name the accounts it came from."""
        accounts = self.state(app).repository.accounts_with_watermarks()
        results = [self.verify_watermark(a, suspect, max_probes=max_probes, app=app, **kwargs) for a in accounts]
        return sorted(results, key=lambda v: v.log2_p)

    def verify_probability_mark(
        self, owner: Any, suspect: Any, account: str | None = None, *,
        threshold_log2: float = probmark.DEFAULT_THRESHOLD_LOG2, app: Flask | None = None,
    ) -> list[probmark.MarkTest]:
        """Test a suspect's probabilities for ``account``'s probability mark, or
        every account's (most significant first; each p-value is multiplied by
        the number of accounts tested). ``suspect`` and ``owner`` are ``(n, k)``
        probabilities of the same probe inputs (any inputs: the owner's data):
        the suspect's, and the owner's model's own, unmarked."""
        state = self.state(app)
        answers = probmark.SuspectAnswers(owner, suspect)  # ValueError when they do not pair up
        accounts = [state.repository.get_account(account)] if account is not None else state.repository.list_accounts()
        tests = [answers.test(probmark.account_key(state.fingerprint_key, a["id"]), account=a["name"],
                              threshold_log2=threshold_log2) for a in accounts]
        return probmark.ranked(tests, len(tests))


def _check_name(name: str) -> None:
    """Account names: 1 to 128 characters, no control characters and no "/"
    (the admin API's paths end in /keys, /events...: ``a/keys`` would be ambiguous)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 128 or "/" in name \
            or any(unicodedata.category(c) == "Cc" for c in name) or name != name.strip():
        raise InvalidValue(f"Account names are 1 to 128 characters, without '/', control characters or "
                           f"surrounding spaces: {name!r}")


def _prefix(key: str) -> str:
    """A key prefix from a prefix or a whole key."""
    return parse_key(key).prefix if key.startswith(KEY_SCHEME + "_") else key


def _harden_session_cookie(app: Flask, secure: bool | None) -> None:
    """The dashboard signs in through the app's session cookie: ``SameSite=Lax``
    unless the app chose, ``Secure`` outside debug and testing (or as set)."""
    if app.config.get("SESSION_COOKIE_SAMESITE") is None:
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
    if secure is None:
        secure = not (app.debug or app.testing)
    if secure:
        app.config["SESSION_COOKIE_SECURE"] = True


def _method_not_allowed() -> Response | None:
    """A protected route called with a method it does not take (GET on a POST
    route): a problem+json 405 with ``Allow``, like every error of a protected
    path, not the app's HTML page."""
    exc = request.routing_exception
    if not isinstance(exc, MethodNotAllowed) or not exc.valid_methods:
        return None
    try:
        adapter = current_app.url_map.bind_to_environ(request.environ)
        endpoint, _ = adapter.match(method=sorted(exc.valid_methods)[0])
    except HTTPException:
        return None
    view = current_app.view_functions.get(endpoint)
    if getattr(view, "__modelguard__", None) is None:
        return None
    allow = ", ".join(sorted(exc.valid_methods))
    return problem_response(HTTPProblem(405, "Method Not Allowed", f"This route takes {allow}.",
                                        headers={"Allow": allow}))


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
            return ModelGuard.state().serving.guarded_call(fn, route_options, args, kwargs)

        wrapper.__modelguard__ = route_options  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(view) if view is not None else decorate
