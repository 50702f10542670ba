"""The admin JSON API: accounts, keys, scores, alerts, audit log, query-log
export, watermark verification and health, under ``MODELGUARD_ADMIN_PREFIX``
(default ``/modelguard``) + ``/api``. Authenticated by admin tokens
(``Authorization: Bearer mga_...``, created with ``flask modelguard
create-admin-token``) or the app's own hook (``MODELGUARD_ADMIN_AUTH``), never
by a customer's API key. Every change is written to the audit log."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Callable, Iterator
from functools import wraps
from typing import Any
from urllib.parse import quote, urlsplit

from flask import Blueprint, Response, current_app, g, request, stream_with_context
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from ..exc import (
    AdminAuthRequired,
    AdminForbidden,
    BadRequest,
    Conflict,
    InvalidValue,
    NotFound,
    Problem,
    ResourceNotFound,
)
from ..ownership import http_suspect, verify
from ..reference_data import MIN_INPUTS
from ..repository import STATUSES
from ..responses import problem_response
from .openapi import openapi_document

api = Blueprint("modelguard_admin_api", __name__)

EXPORT_COLUMNS = ("id", "ts", "route", "status", "latency_ms", "n_instances", "fingerprint", "labels",
                  "top_confidences", "canary", "key_id")


def _state() -> Any:
    from ..extension import ModelGuard

    return ModelGuard.state(current_app)


def hooked_admin(state: Any) -> str | None:
    """The admin the app's own authentication (``MODELGUARD_ADMIN_AUTH``) names for this request, if any."""
    hook = state.settings.admin_auth
    who = hook(request) if hook is not None else None
    return str(who) if who else None


def _same_origin() -> bool:
    """True unless a browser says the request comes from another site."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    return origin is None or urlsplit(origin).netloc == request.host


def _admin() -> str:
    """The admin behind this request, or a 401/403 problem."""
    state = _state()
    who = hooked_admin(state) if "Authorization" not in request.headers else None
    if who:
        # The app's hook may trust a cookie, which a browser also sends with a
        # forged cross-site form: changes need a JSON body (a form cannot send
        # one without a CORS preflight) or a same-origin request.
        if request.method not in ("GET", "HEAD", "OPTIONS") and not (request.is_json or _same_origin()):
            raise AdminForbidden("Cross-site request refused: send Content-Type: application/json.")
        return who
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AdminAuthRequired("Send an admin token: 'Authorization: Bearer mga_...'.",
                                headers={"WWW-Authenticate": 'Bearer realm="modelguard-admin"'})
    if token.strip().startswith("mg_"):
        raise AdminForbidden("A customer API key is not an admin credential.")
    who = state.admin.verify_token(token.strip())
    if who is None:
        raise AdminAuthRequired("Unknown or revoked admin token.",
                                headers={"WWW-Authenticate": 'Bearer realm="modelguard-admin", error="invalid_token"'})
    return who


#: Query parameters each operation takes; any other is refused (a typo such
#: as ``?stauts=blocked`` must not silently list every account).
_QUERY = {
    "list_accounts": {"status", "flagged", "sort", "limit", "offset"},
    "scores": {"limit"}, "alerts": {"open", "account", "limit", "offset"}, "audit": {"limit", "offset"},
    "export_events": {"format", "since", "until"}, "watermark_inputs": {"limit"},
}


@api.before_request
def _authenticate() -> None:
    endpoint = (request.endpoint or "").rpartition(".")[2]
    if endpoint == "openapi":
        return  # the API's description is public; the API is not
    g.modelguard_admin = _admin()
    unknown = set(request.args) - _QUERY.get(endpoint, set())
    if unknown:
        raise BadRequest(f"Unknown query parameter(s): {', '.join(sorted(unknown))}.")


@api.before_app_request
def _unrouted() -> Response | None:
    """A path under the API that matches no route (e.g. a name with a newline)
    gets a problem+json 404/405 too, not the app's HTML page."""
    exc = request.routing_exception
    if exc is None or exc.code is None or exc.code < 400:
        return None
    state = current_app.extensions.get("modelguard")
    if state is None or not request.path.startswith(state.settings.admin_prefix + "/api/"):
        return None
    from ..exc import HTTPProblem

    allow = getattr(exc, "valid_methods", None)
    headers = {"Allow": ", ".join(sorted(allow))} if allow else {}
    return problem_response(HTTPProblem(exc.code, exc.name, exc.description or exc.name, headers=headers))


@api.errorhandler(Problem)
def _problem(exc: Problem) -> Response:
    return problem_response(exc)


@api.errorhandler(NotFound)
def _not_found(exc: NotFound) -> Response:
    return problem_response(ResourceNotFound(str(exc)))


@api.errorhandler(InvalidValue)
def _invalid(exc: InvalidValue) -> Response:
    return problem_response(BadRequest(str(exc)))


@api.errorhandler(SQLAlchemyError)
def _database(exc: SQLAlchemyError) -> Response:
    from ..exc import DatabaseUnavailable

    return problem_response(DatabaseUnavailable(f"Database error ({exc.__class__.__name__})."))


@api.errorhandler(404)
@api.errorhandler(405)
def _http(exc: Any) -> Response:
    from ..exc import HTTPProblem

    allow = getattr(exc, "valid_methods", None)
    headers = {"Allow": ", ".join(sorted(allow))} if allow else {}
    return problem_response(HTTPProblem(exc.code, exc.name, exc.description, headers=headers))


def _body(*allowed: str) -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("Send a JSON object.")
    unknown = set(data) - set(allowed)
    if unknown:
        raise BadRequest(f"Unknown field(s): {', '.join(sorted(unknown))}; allowed: {', '.join(allowed)}.")
    return data


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be an integer.") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}.")
    return value


def _float_arg(name: str) -> float | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number (epoch seconds).") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be finite.")
    return value


def _audited(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Record the decorated change in the audit log: ``fn`` returns (response, target, before, after)."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            response, target, before, after = fn(*args, **kwargs)
            _state().admin.audit(g.modelguard_admin, action, target, before, after)
            return response

        return wrapper

    return decorate


def _account_view(account: dict[str, Any]) -> dict[str, Any]:
    out = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in account.items()}
    return out


def _guard() -> Any:
    return _state().guard


# -- accounts ------------------------------------------------------------------------

@api.get("/accounts")
def list_accounts() -> Any:
    status = request.args.get("status")
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}.")
    flagged = request.args.get("flagged")
    if flagged not in (None, "true", "false"):
        raise BadRequest("flagged must be true or false.")
    sort = request.args.get("sort", "score")
    if sort not in ("score", "name", "created_at"):
        raise BadRequest("sort must be score, name or created_at.")
    limit, offset = _int_arg("limit", 50, 1, 1000), _int_arg("offset", 0, 0, 10**9)
    rows = _guard().list_accounts(status)
    if flagged is not None:
        rows = [r for r in rows if bool(r["flagged"]) == (flagged == "true")]
    reverse = sort != "name"
    rows.sort(key=lambda r: (r[sort], r["name"]) if sort != "name" else r["name"], reverse=reverse)
    page = rows[offset: offset + limit]
    return {"items": [_account_view(r) for r in page], "total": len(rows), "limit": limit, "offset": offset}


@api.post("/accounts")
@_audited("create-account")
def create_account() -> Any:
    data = _body("name", "tier", "limits")
    name = data.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 128:
        raise BadRequest("name must be a string of 1 to 128 characters.")
    for field in ("tier", "limits"):
        if field in data and not isinstance(data[field], str):
            raise BadRequest(f"{field} must be a string.")
    try:
        account = _guard().create_account(name, tier=data.get("tier"), limits=data.get("limits"))
    except InvalidValue as exc:
        if "already exists" in str(exc):
            raise Conflict(str(exc)) from None
        raise
    view = _account_view(account)
    return (view, 201), name, None, view


@api.get("/accounts/<path:name>")
def show_account(name: str) -> Any:
    state = _state()
    account = state.repository.get_account(name)
    view = _account_view(account)
    view["keys"] = [_account_view(k) for k in state.repository.list_keys(name)]
    view["limits_effective"] = [str(item) for item in state.enforcer.limits_for(account["tier"], account["limits"]).items]
    return view


@api.patch("/accounts/<path:name>")
@_audited("update-account")
def update_account(name: str) -> Any:
    data = _body("status", "tier", "limits", "flagged", "allowlisted")
    if not data:
        raise BadRequest("Give at least one of status, tier, limits, flagged, allowlisted.")
    before = _account_view(_state().repository.get_account(name))
    changes: dict[str, Any] = {}
    if "status" in data:
        if data["status"] not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}.")
        changes["status"] = data["status"]
    if "tier" in data:
        if not isinstance(data["tier"], str):
            raise BadRequest("tier must be a string.")
        changes["tier"] = data["tier"]
    if "limits" in data:
        if data["limits"] is not None and not isinstance(data["limits"], str):
            raise BadRequest("limits must be a string such as '10/second;1000/day', or null.")
        changes["limits"] = data["limits"]
    for flag in ("flagged", "allowlisted"):
        if flag in data:
            if not isinstance(data[flag], bool):
                raise BadRequest(f"{flag} must be true or false.")
            changes[flag] = data[flag]
    after = _account_view(_guard().update_account(name, **changes))
    return after, name, before, after


# -- keys -----------------------------------------------------------------------------

@api.get("/accounts/<path:name>/keys")
def list_keys(name: str) -> Any:
    return {"items": [_account_view(k) for k in _guard().list_keys(name)]}


@api.post("/accounts/<path:name>/keys")
@_audited("issue-key")
def issue_key(name: str) -> Any:
    token = _guard().issue_key(name)
    prefix = token.split("_")[1]
    return ({"key": token, "prefix": prefix, "note": "Store the key now: it is shown only once."}, 201), \
        name, None, {"prefix": prefix}


@api.post("/keys/<prefix>/rotate")
@_audited("rotate-key")
def rotate_key(prefix: str) -> Any:
    data = request.get_json(silent=True) or {}
    if not isinstance(data, dict) or set(data) - {"grace"}:
        raise BadRequest("The body may hold only {\"grace\": seconds}.")
    grace = data.get("grace")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= 10**8):
        raise BadRequest("grace must be a number of seconds >= 0.")
    _state().repository.get_key(prefix)
    token = _guard().rotate_key(prefix, grace=grace)
    new_prefix = token.split("_")[1]
    return ({"key": token, "prefix": new_prefix, "replaces": prefix,
             "note": "Store the key now: it is shown only once."}, 201), prefix, {"prefix": prefix}, \
        {"prefix": new_prefix, "grace": grace}


@api.post("/keys/<prefix>/revoke")
@_audited("revoke-key")
def revoke_key(prefix: str) -> Any:
    row = _account_view(_guard().revoke_key(prefix))
    return row, row["prefix"], None, {"revoked_at": row.get("revoked_at")}  # never the path: it may be a whole key


# -- scores, alerts, audit ---------------------------------------------------------------

@api.get("/accounts/<path:name>/scores")
def scores(name: str) -> Any:
    account = _state().repository.get_account(name)
    history = _guard().score_history(name)
    limit = _int_arg("limit", 200, 1, 10_000)
    latest = history[-1] if history else None
    return {
        "account": name, "score": account["score"], "flagged": account["flagged"],
        "current": None if latest is None else {"ts": latest["ts"], "queries": latest["queries"],
                                                  "scores": latest["scores"], "reasons": latest["reasons"]},
        "history": [{"ts": h["ts"], "queries": h["queries"], "scores": h["scores"], "reasons": h["reasons"]}
                    for h in history[-limit:]],
    }


@api.get("/alerts")
def alerts() -> Any:
    state = _state()
    open_only = request.args.get("open", "false")
    if open_only not in ("true", "false"):
        raise BadRequest("open must be true or false.")
    account = request.args.get("account")
    account_id = state.repository.get_account(account)["id"] if account else None
    limit, offset = _int_arg("limit", 50, 1, 1000), _int_arg("offset", 0, 0, 10**9)
    items, total = state.admin.alerts(open_only=open_only == "true", account_id=account_id, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@api.post("/alerts/<alert_id>/ack")
@_audited("acknowledge-alert")
def acknowledge(alert_id: str) -> Any:
    if not (alert_id.isascii() and alert_id.isdigit()) or len(alert_id) > 18:
        raise ResourceNotFound(f"No alert {alert_id!r}.")
    row = _state().admin.acknowledge(int(alert_id), g.modelguard_admin)
    return row, alert_id, None, {"acknowledged_by": row["acknowledged_by"]}


@api.get("/audit")
def audit() -> Any:
    limit, offset = _int_arg("limit", 50, 1, 1000), _int_arg("offset", 0, 0, 10**9)
    items, total = _state().admin.audit_entries(limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


# -- query-log export --------------------------------------------------------------------

@api.get("/accounts/<path:name>/events")
def export_events(name: str) -> Any:
    state = _state()
    fmt = request.args.get("format", "jsonl")
    if fmt not in ("jsonl", "csv"):
        raise BadRequest("format must be jsonl or csv.")
    since, until = _float_arg("since"), _float_arg("until")
    account = state.repository.get_account(name)
    with_inputs = state.settings.store_inputs
    columns = EXPORT_COLUMNS + (("input",) if with_inputs else ())
    rows = state.admin.events(account["id"], since, until, with_inputs)
    _state().admin.audit(g.modelguard_admin, "export-events", name, None,
                         {"format": fmt, "since": since, "until": until})

    def jsonl() -> Iterator[str]:
        for row in rows:
            yield json.dumps({c: row.get(c) for c in columns}) + "\n"

    def as_csv() -> Iterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(columns)
        for n, row in enumerate(rows):
            writer.writerow([_csv_cell(row.get(c)) for c in columns])
            if n % 200 == 0:
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
        yield buffer.getvalue()

    mimetype = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    filename = f"{name}-events.{fmt}"
    ascii_name = re.sub(r"[^A-Za-z0-9._-]", "_", filename)
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
    return Response(stream_with_context(jsonl() if fmt == "jsonl" else as_csv()), mimetype=mimetype,
                    headers={"Content-Disposition": disposition})


def _csv_cell(value: Any) -> Any:
    """A CSV cell; text a spreadsheet would run as a formula is quoted with a leading '."""
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


# -- watermark verification ------------------------------------------------------------------

@api.post("/accounts/<path:name>/verify-watermark")
@_audited("verify-watermark")
def verify_watermark(name: str) -> Any:
    """Test a suspect model: ``{"url": ...}`` (its prediction API) or
    ``{"predictions": [labels...]}`` for the account's watermark inputs, in the
    order of ``GET .../watermark-inputs``."""
    data = _body("url", "predictions", "max_probes")
    max_probes = data.get("max_probes", 250)
    if isinstance(max_probes, bool) or not isinstance(max_probes, int) or not 1 <= max_probes <= 10_000:
        raise BadRequest("max_probes must be an integer from 1 to 10000.")
    guard = _guard()
    if ("url" in data) == ("predictions" in data):
        raise BadRequest("Give either url or predictions.")
    if "url" in data:
        url = data["url"]
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise BadRequest("url must be an http(s) URL.")
        try:
            result = guard.verify_watermark(name, http_suspect(url), max_probes=max_probes)
        except (OSError, ValueError) as exc:  # unreachable, or an answer that is not one
            raise BadRequest(f"Could not query the suspect ({exc.__class__.__name__}).") from None
    else:
        labels = data["predictions"]
        records = guard.watermark_records(name, max_probes)
        if not isinstance(labels, list) or len(labels) != len(records):
            raise BadRequest(f"predictions must list {len(records)} labels, one per watermark input.")
        result = verify(name, records, labels)
    out = {"account": result.account, "probes": result.probes, "matches": result.matches,
           "null_rate": result.null_rate, "log2_p": result.log2_p, "claimed": result.claimed,
           "summary": result.summary()}
    return out, name, None, {"claimed": result.claimed, "log2_p": result.log2_p}


@api.get("/accounts/<path:name>/watermark-inputs")
def watermark_inputs(name: str) -> Any:
    limit = _int_arg("limit", 250, 1, 10_000)
    records = _guard().watermark_records(name, limit)
    return {"items": [r["input"] for r in records], "total": len(records)}


# -- detection set-up ------------------------------------------------------------------------

#: Most inputs a reference may be fitted on through the API.
MAX_REFERENCE_INPUTS = 100_000


def _reference_view(state: Any) -> dict[str, Any]:
    reference = state.monitor.reference
    return {"source": state.reference_source, "space": reference.space, "classes": sorted(reference.classes),
            "thresholds": [[n, t] for n, t in reference.thresholds]}


@api.get("/reference")
def show_reference() -> Any:
    state = _state()
    if state.monitor.reference is None:
        raise ResourceNotFound("No reference is fitted: PUT one here, or set MODELGUARD_REFERENCE.")
    return _reference_view(state)


@api.put("/reference")
@_audited("fit-reference")
def fit_reference() -> Any:
    data = _body("inputs", "labels")
    inputs, labels = data.get("inputs"), data.get("labels")
    if not isinstance(inputs, list) or not isinstance(labels, list) or len(inputs) != len(labels) \
            or not MIN_INPUTS <= len(inputs) <= MAX_REFERENCE_INPUTS:
        raise BadRequest(f"Send inputs and as many labels, {MIN_INPUTS} to {MAX_REFERENCE_INPUTS} of each.")
    if any(isinstance(label, bool) or not isinstance(label, (str, int)) for label in labels):
        raise BadRequest("labels must be strings or integers (the model's labels for the inputs).")
    state = _state()
    try:
        state.fit_reference(inputs, labels, source="api")
    except (TypeError, ValueError, ArithmeticError) as exc:  # inputs the feature function cannot take
        raise BadRequest(f"Cannot fit a reference on these inputs ({exc.__class__.__name__}: {exc}).") from None
    view = _reference_view(state)
    return view, "reference", None, {"inputs": len(inputs), "classes": len(view["classes"])}


# -- health and description ------------------------------------------------------------------

@api.get("/health")
def health() -> Any:
    state = _state()
    stats = state.guard.stats(current_app)
    database = True
    try:
        with state.repository.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        database = False
    try:
        limits_ok = bool(state.enforcer.storage.check())
    except Exception:
        limits_ok = False
    problem = state.repository.file_problem()
    database = database and problem is None
    ok = database and limits_ok and not stats.get("limits_storage_down")
    body = {"status": "ok" if ok else "degraded", "database": database, "limits_storage": limits_ok,
            **({"database_problem": problem} if problem else {}),
            "worker": {k: v for k, v in stats.items() if isinstance(v, (int, float, bool, str)) or v is None},
            "detection": state.detection_status()}
    return body, 200 if ok else 503


@api.get("/openapi.json")
def openapi() -> Any:
    state = _state()
    return openapi_document(state.settings.admin_prefix + "/api", tiers=list(state.enforcer.tiers))
