"""The admin JSON API: accounts, keys, scores, alerts, audit log, query-log
export, watermark verification and health, under ``MODELGUARD_ADMIN_PREFIX``
(default ``/modelguard``) + ``/api``. Authenticated by admin tokens
(``Authorization: Bearer mga_...``, created with ``flask modelguard
create-admin-token``) or the app's own hook (``MODELGUARD_ADMIN_AUTH``), never
by a customer's API key. Every change is written to the audit log."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, g, request, stream_with_context
from sqlalchemy.exc import SQLAlchemyError

from ..exc import (
    AdminAuthRequired,
    AdminForbidden,
    AlreadyExists,
    BadRequest,
    Conflict,
    DatabaseUnavailable,
    HTTPProblem,
    InvalidValue,
    NotFound,
    Problem,
    ResourceNotFound,
)
from ..ownership import DEFAULT_PROBES
from ..reference_data import MIN_INPUTS
from ..repository import STATUSES
from ..responses import problem_response
from ..runtime import state_of
from .openapi import openapi_document
from .params import body, choice, number, paging
from .service import ACCOUNT_FIELDS, AdminService
from .store import attachment, export_columns, export_csv, export_jsonl

api = Blueprint("modelguard_admin_api", __name__)

#: Most inputs a reference may be fitted on through the API.
MAX_REFERENCE_INPUTS = 100_000


def _state() -> Any:
    return state_of(current_app)


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
    "list_accounts": {"status", "flagged", "tier", "q", "sort", "limit", "offset"},
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


def _http_problem(exc: Any) -> Response:
    allow = getattr(exc, "valid_methods", None)
    headers = {"Allow": ", ".join(sorted(allow))} if allow else {}
    return problem_response(HTTPProblem(exc.code, exc.name, exc.description or exc.name, headers=headers))


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
    return _http_problem(exc)


#: The library's typed errors as problems (the first class that matches).
_AS_PROBLEM: tuple[tuple[type[Exception], type[Problem]], ...] = (
    (NotFound, ResourceNotFound), (AlreadyExists, Conflict), (InvalidValue, BadRequest))


def _typed_error(exc: Exception) -> Response:
    if isinstance(exc, Problem):
        return problem_response(exc)
    for kind, problem in _AS_PROBLEM:
        if isinstance(exc, kind):
            return problem_response(problem(str(exc)))
    return problem_response(DatabaseUnavailable(f"Database error ({exc.__class__.__name__})."))


for _kind in (Problem, NotFound, InvalidValue, SQLAlchemyError):
    api.register_error_handler(_kind, _typed_error)
api.register_error_handler(404, _http_problem)
api.register_error_handler(405, _http_problem)


def _view(row: dict[str, Any]) -> dict[str, Any]:
    """A row as JSON: datetimes as ISO strings."""
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


def _service() -> AdminService:
    return AdminService.of(_state())


def _actor() -> str:
    return str(g.modelguard_admin)


_SHOWN_ONCE = "Store the key now: it is shown only once."


# -- accounts ------------------------------------------------------------------------

@api.get("/accounts")
def list_accounts() -> Any:
    status = choice("status", STATUSES, f"one of {', '.join(STATUSES)}")
    flagged = choice("flagged", ("true", "false"), "true or false")
    sort = choice("sort", ("score", "name", "created_at"), "score, name or created_at", "score")
    tiers = tuple(_state().enforcer.tiers)
    tier = choice("tier", tiers, f"one of {', '.join(tiers)}")
    limit, offset = paging()
    page = _service().accounts(status=status, flagged=None if flagged is None else flagged == "true", tier=tier,
                               search=request.args.get("q"), sort=sort or "score", limit=limit, offset=offset)
    return {"items": [_view(r) for r in page.items], "total": page.total, "limit": limit, "offset": offset}


@api.post("/accounts")
def create_account() -> Any:
    data = body("name", "tier", "limits")
    if not isinstance(data.get("name"), str) or not 1 <= len(data["name"]) <= 128:
        raise BadRequest("name must be a string of 1 to 128 characters.")
    account = _service().create_account(_actor(), data["name"], tier=data.get("tier"), limits=data.get("limits"))
    return _view(account), 201


@api.get("/accounts/<path:name>")
def show_account(name: str) -> Any:
    state = _state()
    account = state.repository.get_account(name)
    view = _view(account)
    view["keys"] = [_view(k) for k in state.repository.list_keys(name)]
    view["limits_effective"] = [str(item) for item in state.enforcer.limits_for(account["tier"], account["limits"]).items]
    return view


@api.patch("/accounts/<path:name>")
def update_account(name: str) -> Any:
    data = body(*ACCOUNT_FIELDS)
    return _view(_service().update_account(_actor(), name, **data).after)


# -- keys -----------------------------------------------------------------------------

@api.get("/accounts/<path:name>/keys")
def list_keys(name: str) -> Any:
    return {"items": [_view(k) for k in _state().repository.list_keys(name)]}


@api.post("/accounts/<path:name>/keys")
def issue_key(name: str) -> Any:
    issued = _service().issue_key(_actor(), name)
    return {"key": issued.token, "prefix": issued.prefix, "note": _SHOWN_ONCE}, 201


@api.post("/keys/<prefix>/rotate")
def rotate_key(prefix: str) -> Any:
    issued = _service().rotate_key(_actor(), prefix, body("grace", optional=True).get("grace"))
    return {"key": issued.token, "prefix": issued.prefix, "replaces": issued.replaces, "note": _SHOWN_ONCE}, 201


@api.post("/keys/<prefix>/revoke")
def revoke_key(prefix: str) -> Any:
    return _view(_service().revoke_key(_actor(), prefix))  # audited under the prefix: the path may be a whole key


# -- scores, alerts, audit ---------------------------------------------------------------

def _evaluation(h: dict[str, Any]) -> dict[str, Any]:
    return {"ts": h["ts"], "queries": h["queries"], "scores": h["scores"], "reasons": h["reasons"]}


@api.get("/accounts/<path:name>/scores")
def scores(name: str) -> Any:
    state = _state()
    account = state.repository.get_account(name)
    history = state.repository.score_history(name)
    limit = number("limit", int, 200, 1, 10_000)
    return {"account": name, "score": account["score"], "flagged": account["flagged"],
            "current": _evaluation(history[-1]) if history else None,
            "history": [_evaluation(h) for h in history[-limit:]]}


@api.get("/alerts")
def alerts() -> Any:
    state = _state()
    open_only = choice("open", ("true", "false"), "true or false", "false")
    account = request.args.get("account")
    account_id = state.repository.get_account(account)["id"] if account else None
    limit, offset = paging()
    items, total = state.admin.alerts(open_only=open_only == "true", account_id=account_id, limit=limit, offset=offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


@api.get("/groups")
def groups() -> Any:
    """Colluding groups the group detector found (docs/detection.md), newest first."""
    repository = _state().repository
    limit, offset = paging()
    return {"items": repository.list_groups(limit, offset), "total": repository.count_groups(),
            "limit": limit, "offset": offset}


@api.post("/alerts/<alert_id>/ack")
def acknowledge(alert_id: str) -> Any:
    if not (alert_id.isascii() and alert_id.isdigit()) or len(alert_id) > 18:
        raise ResourceNotFound(f"No alert {alert_id!r}.")
    return _service().acknowledge_alert(_actor(), int(alert_id))


@api.get("/audit")
def audit() -> Any:
    limit, offset = paging()
    items, total = _state().admin.audit_entries(limit, offset)
    return {"items": items, "total": total, "limit": limit, "offset": offset}


# -- query-log export --------------------------------------------------------------------

@api.get("/accounts/<path:name>/events")
def export_events(name: str) -> Any:
    fmt = choice("format", ("jsonl", "csv"), "jsonl or csv", "jsonl")
    since, until = number("since", float, None), number("until", float, None)
    service = _service()
    rows = service.export_events(_actor(), name, since=since, until=until, fmt=fmt or "jsonl")
    columns = export_columns(service.store_inputs)
    body = export_jsonl(rows, columns) if fmt == "jsonl" else export_csv(rows, columns)
    return Response(stream_with_context(body), mimetype="application/x-ndjson" if fmt == "jsonl" else "text/csv",
                    headers={"Content-Disposition": attachment(f"{name}-events.{fmt}")})


# -- watermark verification ------------------------------------------------------------------

@api.post("/accounts/<path:name>/verify-watermark")
def verify_watermark(name: str) -> Any:
    """Test a suspect model: ``{"url": ...}`` (its prediction API) or
    ``{"predictions": [labels...]}`` for the account's watermark inputs, in the
    order of ``GET .../watermark-inputs``."""
    data = body("url", "predictions", "max_probes")
    if ("url" in data) == ("predictions" in data):
        raise BadRequest("Give either url or predictions.")
    result = _service().verify_watermark(_actor(), name, **data)
    return {"account": result.account, "probes": result.probes, "matches": result.matches,
            "null_rate": result.null_rate, "log2_p": result.log2_p, "claimed": result.claimed,
            "summary": result.summary()}


@api.post("/verify-mark")
def verify_mark() -> Any:
    """Test a suspect's probabilities for an account's probability mark:
    ``{"owner": [[...]], "suspect": [[...]], "account": optional}`` (the
    owner's model's own answers and the suspect's, for the same probe inputs)."""
    data = body("owner", "suspect", "account")
    if "owner" not in data or "suspect" not in data:
        raise BadRequest("Give owner and suspect: lists of probability vectors for the same inputs.")
    account = data.get("account")
    if account is not None and not isinstance(account, str):
        raise BadRequest("account must be an account's name.")
    results = _service().verify_probability_mark(_actor(), data["owner"], data["suspect"], account)
    return {"items": [{"account": r.account, "probes": r.probes, "groups": r.groups, "statistic": r.statistic,
                       "log2_p": r.log2_p, "claimed": r.claimed, "summary": r.summary()} for r in results[:10]],
            "accounts": len(results)}


@api.get("/accounts/<path:name>/watermark-inputs")
def watermark_inputs(name: str) -> Any:
    limit = number("limit", int, DEFAULT_PROBES, 1, 10_000)
    records = _state().repository.watermark_records(name, limit)
    return {"items": [r["input"] for r in records], "total": len(records)}


# -- detection set-up ------------------------------------------------------------------------

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
def fit_reference() -> Any:
    data = body("inputs", "labels")
    inputs, labels = data.get("inputs"), data.get("labels")
    if not isinstance(inputs, list) or not isinstance(labels, list) or len(inputs) != len(labels) \
            or not MIN_INPUTS <= len(inputs) <= MAX_REFERENCE_INPUTS:
        raise BadRequest(f"Send inputs and as many labels, {MIN_INPUTS} to {MAX_REFERENCE_INPUTS} of each.")
    if any(isinstance(label, bool) or not isinstance(label, (str, int)) for label in labels):
        raise BadRequest("labels must be strings or integers (the model's labels for the inputs).")
    try:
        _service().fit_reference(_actor(), inputs, labels, source="api", target="reference")
    except (TypeError, ValueError, ArithmeticError) as exc:  # inputs the feature function cannot take
        raise BadRequest(f"Cannot fit a reference on these inputs ({exc.__class__.__name__}: {exc}).") from None
    return _reference_view(_state())


# -- health and description ------------------------------------------------------------------

@api.get("/health")
def health() -> Any:
    state = _state()
    stats = state.guard.stats(current_app)
    try:
        database = state.repository.ping()
    except SQLAlchemyError:
        database = False
    try:
        limits_ok = bool(state.enforcer.storage.check())
    except Exception:
        limits_ok = False
    problem = state.repository.file_problem()
    database = database and problem is None
    detection = state.detection_status()
    events_problem = state.publishes and detection["enabled"] and state.publisher.problem
    ok = database and limits_ok and not stats.get("limits_storage_down") and not events_problem
    body = {"status": "ok" if ok else "degraded", "database": database, "limits_storage": limits_ok,
            **({"database_problem": problem} if problem else {}),
            **({"events_problem": events_problem} if events_problem else {}),
            "worker": {k: v for k, v in stats.items() if isinstance(v, (int, float, bool, str)) or v is None},
            "detection": detection}
    return body, 200 if ok else 503


@api.get("/openapi.json")
def openapi() -> Any:
    state = _state()
    return openapi_document(state.settings.admin_prefix + "/api", tiers=list(state.enforcer.tiers))
