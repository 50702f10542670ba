"""The admin dashboard: server-rendered pages under ``MODELGUARD_ADMIN_PREFIX``
(default ``/modelguard/``): accounts ranked by malicious score, an account's
score timeline and detector evidence, alerts, and buttons to block, unblock,
rotate keys and acknowledge alerts.

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
import math
import secrets
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session, url_for
from markupsafe import Markup
from sqlalchemy.exc import SQLAlchemyError

from ..exc import InvalidValue, NotFound
from ..runtime import state_of
from . import charts
from .api import hooked_admin
from .service import AdminService

log = logging.getLogger("flask_modelguard")

dashboard = Blueprint("modelguard_dashboard", __name__, template_folder="templates",
                      static_folder="static", static_url_path="/static")

#: Session keys (namespaced: the session is the app's).
ADMIN_KEY, SESSION_KEY, CSRF_KEY = "modelguard_admin", "modelguard_session", "modelguard_csrf"
#: Accounts listed on the index page, highest scores first.
INDEX_ROWS = 100
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


def _state() -> Any:
    return state_of(current_app)


def _service() -> AdminService:
    return AdminService.of(_state())


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
    state = _state()
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


def _safe_next(value: str | None) -> str:
    """``value`` if it is a path of this dashboard (no open redirect), else the index."""
    home = url_for(".index")
    if not value or "\\" in value:
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
            "when": _when}


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
    target = _safe_next(request.values.get("next"))
    if request.method == "GET":
        return redirect(target) if _current_admin() else render_template("modelguard/login.html", next=target)
    token = request.form.get("token", "").strip()
    who = _state().admin.verify_token(token) if token.startswith("mga_") else None
    if who is None:
        log.warning("modelguard: dashboard sign-in refused from %s", request.remote_addr)
        error = ("A customer API key is not an admin credential." if token.startswith("mg_")
                 else "Unknown or revoked admin token.")
        return render_template("modelguard/login.html", next=target, error=error), 401
    _forget()  # nothing of ours from before sign-in carries over (the rest of the session is the app's)
    session[ADMIN_KEY], session[SESSION_KEY] = who, _service().sign_in(who, token.split("_")[1])
    session[CSRF_KEY] = secrets.token_urlsafe(32)  # a fresh token for the signed-in session
    return redirect(target)


@dashboard.post("/logout")
def logout() -> Any:
    sid = session.get(SESSION_KEY)
    if sid:
        _service().sign_out(str(sid))  # a copy of the cookie no longer signs anyone in
    _forget()
    flash("Signed out.")
    return redirect(url_for(".login"))


# -- pages --------------------------------------------------------------------------------

def _when(value: Any) -> str:
    """A datetime or epoch seconds as UTC text ('' for None)."""
    if value is None:
        return ""
    if isinstance(value, (int, float)):
        value = dt.datetime.fromtimestamp(value, dt.timezone.utc)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)  # SQLite gives back naive UTC
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _quota(state: Any, account: dict[str, Any]) -> list[dict[str, Any]]:
    """An account's use of each of its limits in the current window."""
    limits = state.enforcer.limits_for(account["tier"], account["limits"])
    out = []
    for item, used in state.enforcer.usage(account["id"], limits):
        unit = item.GRANULARITY.name
        window = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
        out.append({"used": used, "amount": item.amount, "window": window, "full": used >= item.amount})
    return out


def _key_view(key: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    expires = key["expires_at"]
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.timezone.utc)
    state = "revoked" if key["revoked_at"] else "expired" if expires and expires <= now else \
        "expiring" if expires else "live"
    return {**key, "state": state}


@dashboard.get("/")
def index() -> Any:
    state = _state()
    page = _service().accounts(sort="rank", limit=INDEX_ROWS)
    shown = [{**a, "quota": _quota(state, a)} for a in page.items]
    alerts, open_total = state.admin.alerts(open_only=True, limit=20)
    return render_template("modelguard/index.html", accounts=shown, total=page.total, alerts=alerts,
                           open_total=open_total, storage_down=state.enforcer.storage_down,
                           detection=state.detection_status())


@dashboard.get("/accounts/<path:name>")
def account(name: str) -> Any:
    state = _state()
    account = state.repository.get_account(name)
    history = state.guard.score_history(name)
    points = [charts.Point(int(h["queries"]), float(s), bool(h["reasons"]), "; ".join(h["reasons"]))
              for h in history
              if isinstance(s := (h["scores"] or {}).get("malicious"), (int, float)) and math.isfinite(s)]
    latest = history[-1] if history else None
    evidence = charts.evidence(latest["scores"] or {}, state.settings.prada_threshold) if latest else []
    alerts, alert_total = state.admin.alerts(account_id=account["id"], limit=20)
    now = state.admin.now()
    return render_template(
        "modelguard/account.html", account=account, quota=_quota(state, account),
        keys=[_key_view(k, now) for k in state.repository.list_keys(name)],
        timeline=charts.timeline(points) if points else None,
        breakdown=charts.breakdown(evidence) if evidence else None,
        latest=latest, evaluations=len(history), first_flag=next((h for h in history if h["reasons"]), None),
        alerts=alerts, alert_total=alert_total, grace=state.settings.rotation_grace,
    )


# -- actions (POST, CSRF-checked in _before, audited) ----------------------------------------

@dashboard.post("/accounts/<path:name>/status")
def set_status(name: str) -> Any:
    change = _service().update_account(g.modelguard_admin, name, status=request.form.get("status", ""))
    flash(f"{name}: {change.before['status']} → {change.after['status']}.")
    return redirect(url_for(".account", name=name))


@dashboard.post("/keys/<prefix>/rotate")
def rotate(prefix: str) -> Any:
    raw = request.form.get("grace", "").strip()
    try:
        grace = float(raw) if raw else None
    except ValueError:
        raise PageError(400, "Not possible", "The grace period must be a number of seconds.") from None
    issued = _service().rotate_key(g.modelguard_admin, prefix, grace)
    # Shown in this response only (never stored, never in a URL; Cache-Control: no-store).
    return render_template("modelguard/new_key.html", key=issued.token, account=issued.account,
                           replaces=issued.replaces, grace=issued.grace)


@dashboard.post("/alerts/<int(max=999999999999999999):alert_id>/ack")
def acknowledge(alert_id: int) -> Any:
    row = _service().acknowledge_alert(g.modelguard_admin, alert_id)
    flash(f"Alert #{alert_id} acknowledged." if row["changed"] else f"Alert #{alert_id} was already acknowledged.")
    return redirect(_safe_next(request.form.get("next")))
