"""The dashboard's blueprint and what every page shares: the sign-in, the
CSRF check, the response headers, the error pages.

Signing in takes an admin token (``flask modelguard create-admin-token``) or
the app's own hook (``MODELGUARD_ADMIN_AUTH``); the admin's name, a random
session id (recorded in ``modelguard_admin_sessions``: signing out, expiry
after 12 hours or revoking the token ends it, so a copied cookie is worthless
after) and a random CSRF token live in Flask's signed session, so the app
needs a ``SECRET_KEY``. Every form posts
the CSRF token back; every action is written to the audit log. No JavaScript,
no external resources: charts are SVG drawn here (:mod:`.charts`)."""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from ..exc import InvalidValue, NotFound
from ..runtime import state_of
from .api import hooked_admin
from .service import AdminService

log = logging.getLogger("flask_modelguard")

dashboard = Blueprint("modelguard_dashboard", __name__, template_folder="templates",
                      static_folder="static", static_url_path="/static")

#: Bytes a dashboard form may post (the largest: a suspect's predictions file).
MAX_BODY = 4 * 1024 * 1024 + 64 * 1024
#: Session keys (namespaced: the session is the app's).
ADMIN_KEY, SESSION_KEY, CSRF_KEY = "modelguard_admin", "modelguard_session", "modelguard_csrf"
_STATIC = "modelguard_dashboard.static"
_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


class PageError(Exception):
    """A refusal shown as an HTML error page."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail


def guard_state() -> Any:
    """The guard's state of the current app."""
    return state_of(current_app)


def admin_service() -> AdminService:
    return AdminService.of(guard_state())


# -- sign-in and CSRF ---------------------------------------------------------------------

def csrf_token() -> str:
    """This session's CSRF token (created on first use)."""
    token = session.get(CSRF_KEY)
    if not token:
        token = session[CSRF_KEY] = secrets.token_urlsafe(32)
    return str(token)


def _csrf_field() -> Markup:
    return Markup('<input type="hidden" name="csrf_token" value="{}">').format(csrf_token())


def _check_csrf() -> None:
    sent, expected = request.form.get("csrf_token", ""), session.get(CSRF_KEY, "")
    if not sent or not expected or not hmac.compare_digest(sent.encode(), str(expected).encode()):
        raise PageError(400, "Invalid form", "The form's CSRF token is missing or stale: reload the page and try again.")


def _current_admin() -> str | None:
    """The admin behind this request: the app's hook, else a live signed-in session."""
    state = guard_state()
    hooked = hooked_admin(state)
    if hooked:
        return hooked
    sid = session.get(SESSION_KEY)
    if not sid:
        return None
    who = state.admin.session_admin(str(sid))
    if who is None:
        _forget()  # signed out elsewhere (a copied cookie), expired, or its token revoked
    return who


def _forget() -> None:
    for key in (ADMIN_KEY, SESSION_KEY, CSRF_KEY):
        session.pop(key, None)


def safe_next(value: str | None) -> str:
    """``value`` if it is a path of this dashboard (no open redirect), else the index."""
    home = url_for(".index")
    if not value or "\\" in value or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return home
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc and value.startswith(home) else home


@dashboard.before_request
def _before() -> Any:
    if request.endpoint == _STATIC:
        return None
    if not current_app.secret_key:
        raise PageError(500, "SECRET_KEY is not set",
                        "The dashboard keeps its sign-in and CSRF token in Flask's signed session: set the app's "
                        "SECRET_KEY (the same in every worker process) to use it.")
    if request.method == "POST":
        request.max_content_length = MAX_BODY  # before the form is parsed: even a sign-in's
        _check_csrf()
    if request.endpoint == "modelguard_dashboard.login":
        return None
    g.modelguard_admin = _current_admin()
    if g.modelguard_admin is None:
        return redirect(url_for(".login", next=request.script_root + request.full_path.rstrip("?")))
    return None


@dashboard.after_request
def _headers(response: Any) -> Any:
    if request.endpoint != _STATIC:
        response.headers.setdefault("Cache-Control", "no-store")
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@dashboard.context_processor
def _context() -> dict[str, Any]:
    return {"csrf_field": _csrf_field, "admin": g.get("modelguard_admin"), "signed_in": bool(session.get(ADMIN_KEY)),
            "when": when}


@dashboard.errorhandler(PageError)
def _page_error(exc: PageError) -> Any:
    return render_template("modelguard/error.html", title=exc.title, detail=exc.detail, status=exc.status), exc.status


@dashboard.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Any:
    return _page_error(PageError(404, "Not found", str(exc)))


@dashboard.errorhandler(InvalidValue)
def _invalid(exc: InvalidValue) -> Any:
    return _page_error(PageError(400, "Not possible", str(exc)))


@dashboard.errorhandler(SQLAlchemyError)
def _database(exc: SQLAlchemyError) -> Any:
    return _page_error(PageError(503, "Database unavailable", f"Database error ({exc.__class__.__name__})."))


@dashboard.route("/login", methods=["GET", "POST"])
def login() -> Any:
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        return redirect(target) if _current_admin() else render_template("modelguard/login.html", next=target)
    token = request.form.get("token", "").strip()
    who = guard_state().admin.verify_token(token) if token.startswith("mga_") else None
    if who is None:
        log.warning("modelguard: dashboard sign-in refused from %s", request.remote_addr)
        error = ("A customer API key is not an admin credential." if token.startswith("mg_")
                 else "Unknown or revoked admin token.")
        return render_template("modelguard/login.html", next=target, error=error), 401
    _forget()  # nothing of ours from before sign-in carries over (the rest of the session is the app's)
    session[ADMIN_KEY], session[SESSION_KEY] = who, admin_service().sign_in(who, token.split("_")[1])
    session[CSRF_KEY] = secrets.token_urlsafe(32)  # a fresh token for the signed-in session
    return redirect(target)


@dashboard.post("/logout")
def logout() -> Any:
    sid = session.get(SESSION_KEY)
    if sid:
        admin_service().sign_out(str(sid))  # a copy of the cookie no longer signs anyone in
    _forget()
    flash("Signed out.")
    return redirect(url_for(".login"))


def when(value: Any) -> str:
    """A datetime (or its ISO text) or epoch seconds as UTC text ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # SQLite gives back naive UTC
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

