"""The dashboard's pages (GET only): the overview over a time range, the
accounts (searched, filtered, sorted and paged in the database), an
account's console, the alerts and an alert's detail, and an account's
query-log export."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from flask import Response, g, render_template, request, stream_with_context, url_for

from ..exc import InvalidValue
from ..ownership import DEFAULT_PROBES
from . import charts, traffic
from .session import PageError, admin_service, dashboard, guard_state
from .store import attachment, export_columns, export_csv, export_jsonl
from .traffic import REFUSAL_ORDER, TimeRange

#: Accounts a page of the accounts list, alerts a page of the alerts list.
ACCOUNTS_PAGE, ALERTS_PAGE = 25, 50
#: Series classes (colours in dashboard.css): answered first, then each refusal reason.
_REFUSAL_CLASSES = {reason: f"s{min(n + 1, 6)}" for n, reason in enumerate(REFUSAL_ORDER)}
_ALERT_CLASSES = {"observe": "s0", "degrade": "s4", "poison": "s5", "throttle": "s1", "block": "s2",
                  "canary": "s3"}
#: What the accounts list sorts by (labels of Repository.ACCOUNT_SORTS).
SORTS = {"rank": "malicious score, flagged first", "score": "malicious score", "name": "name",
         "created_at": "newest"}


def _range() -> TimeRange:
    args = request.args
    return traffic.resolve_range(args.get("range"), guard_state().repository.clock(), args.get("from"), args.get("to"))


def _page_number() -> int:
    raw = request.args.get("page", "1")
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10**6:
        raise InvalidValue("page must be a whole number from 1.")
    return int(raw)


def traffic_charts(found: traffic.Traffic) -> dict[str, Any]:
    """The three charts over time of :func:`traffic.traffic`'s series."""
    rng = found.range
    starts, until = rng.starts(), rng.until
    requests = [charts.Series("answered", found.answered, "s0")] + [
        charts.Series(reason, values, _REFUSAL_CLASSES[reason]) for reason, values in found.refused.items()]
    alerts = [charts.Series(action, values, _ALERT_CLASSES.get(action, "s6")) for action, values in found.alerts.items()]
    latency = [charts.Series("mean", found.latency_mean, "s0"), charts.Series("highest", found.latency_max, "s2")]
    return {
        "requests": charts.stacked_bars(starts, rng.bucket, until, requests, "Requests over time by outcome"),
        "alerts": charts.stacked_bars(starts, rng.bucket, until, alerts, "Alerts over time by action", "alerts"),
        "latency": charts.lines_over_time(starts, rng.bucket, until, latency, "Guarded request latency over time",
                                          "latency (ms)"),
    }


@dashboard.get("/")
def index() -> Any:
    state = guard_state()
    rng = _range()
    found = traffic.traffic(state.repository.engine, rng)
    flagged = admin_service().accounts(flagged=True, sort="rank", limit=10, with_reasons=True)
    alerts, open_total = state.admin.alerts(open_only=True, limit=10)
    return render_template("modelguard/overview.html", rng=rng, traffic=found, charts=traffic_charts(found),
                           flagged=flagged, alerts=alerts, open_total=open_total,
                           storage_down=state.enforcer.storage_down, detection=state.detection_status())


def quota_use(state: Any, account: dict[str, Any]) -> list[dict[str, Any]]:
    """An account's use of each of its limits in the current window."""
    limits = state.enforcer.limits_for(account["tier"], account["limits"])
    out = []
    for item, used in state.enforcer.usage(account["id"], limits):
        unit = item.GRANULARITY.name
        window = unit if item.multiples == 1 else f"{item.multiples} {unit}s"
        out.append({"used": used, "amount": item.amount, "window": window, "full": used >= item.amount})
    return out


def _filters() -> dict[str, Any]:
    """The accounts list's filters from the query string (empty: any)."""
    args = request.args
    flagged = {"": None, "yes": True, "no": False}.get(args.get("flagged", ""))
    if flagged is None and args.get("flagged"):
        raise InvalidValue("flagged must be yes, no or empty.")
    sort = args.get("sort") or "rank"
    if sort not in SORTS:
        raise InvalidValue(f"sort must be one of {', '.join(SORTS)}.")
    return {"search": args.get("q", "").strip() or None, "status": args.get("status") or None,
            "flagged": flagged, "tier": args.get("tier") or None, "sort": sort}


@dashboard.get("/accounts")
def accounts() -> Any:
    state = guard_state()
    filters, page = _filters(), _page_number()
    found = admin_service().accounts(**filters, limit=ACCOUNTS_PAGE, offset=(page - 1) * ACCOUNTS_PAGE)
    shown = [{**a, "quota": quota_use(state, a)} for a in found.items]
    pages = max(1, -(-found.total // ACCOUNTS_PAGE))
    args = {k: v for k, v in request.args.items() if k != "page" and v}
    return render_template("modelguard/accounts.html", accounts=shown, total=found.total, page=page, pages=pages,
                           first=found.offset + 1, args=args, sorts=SORTS, tiers=sorted(state.settings.tiers),
                           storage_down=state.enforcer.storage_down, default_tier=state.settings.default_tier)


def _key_view(key: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    expires = key["expires_at"]
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=dt.timezone.utc)
    state = "revoked" if key["revoked_at"] else "expired" if expires and expires <= now else \
        "expiring" if expires else "live"
    return {**key, "state": state}


def _evidence(state: Any, evaluation: dict[str, Any] | None) -> Any:
    if not evaluation:
        return None
    items = charts.evidence(evaluation["scores"] or {}, state.settings.prada_threshold)
    return charts.breakdown(items) if items else None


@dashboard.get("/accounts/<path:name>")
def account(name: str) -> Any:
    state = guard_state()
    account = state.repository.get_account(name)
    engine, rng = state.repository.engine, _range()
    history = state.guard.score_history(name)
    latest = history[-1] if history else None
    points = traffic.score_series(engine, account["id"], rng)
    alerts, alert_total = state.admin.alerts(account_id=account["id"], limit=20)
    mark_total, marks, head = state.repository.evidence_summary(name)
    return render_template(
        "modelguard/account.html", account=account, quota=quota_use(state, account), rng=rng,
        keys=[_key_view(k, state.admin.now()) for k in state.repository.list_keys(name)],
        charts=traffic_charts(traffic.traffic(engine, rng, account["id"])),
        scores=charts.scores_over_time(points, rng.since, rng.until), points=len(points),
        breakdown=_evidence(state, latest), latest=latest, evaluations=len(history),
        first_flag=next((h for h in history if h["reasons"]), None), alerts=alerts, alert_total=alert_total,
        grace=state.settings.rotation_grace, tiers=sorted(state.settings.tiers), marks=marks,
        mark_total=mark_total, head=head, events=traffic.recent_events(engine, account["id"]),
    )


@dashboard.get("/accounts/<path:name>/events.<fmt>")
def export(name: str, fmt: str) -> Any:
    """The account's query log as CSV or JSON Lines (audited; inputs only when stored)."""
    if fmt not in ("csv", "jsonl"):
        raise PageError(404, "Not found", "Exports are events.csv or events.jsonl.")
    service = admin_service()
    rows = service.export_events(g.modelguard_admin, name, fmt=fmt)
    columns = export_columns(service.store_inputs)
    body = export_csv(rows, columns) if fmt == "csv" else export_jsonl(rows, columns)
    mimetype = "text/csv" if fmt == "csv" else "application/x-ndjson"
    return Response(stream_with_context(body), mimetype=mimetype,
                    headers={"Content-Disposition": attachment(f"{name}-events.{fmt}")})


@dashboard.get("/alerts")
def alerts() -> Any:
    state, page = guard_state(), _page_number()
    show = request.args.get("show", "open")
    if show not in ("open", "all"):
        raise InvalidValue("show must be open or all.")
    found, total = state.admin.alerts(open_only=show == "open", limit=ALERTS_PAGE, offset=(page - 1) * ALERTS_PAGE)
    return render_template("modelguard/alerts.html", alerts=found, total=total, show=show, page=page,
                           pages=max(1, -(-total // ALERTS_PAGE)))


@dashboard.get("/alerts/<int(max=999999999999999999):alert_id>")
def alert(alert_id: int) -> Any:
    """One alert: why (the evaluation that crossed), its account's timeline around it."""
    state = guard_state()
    found = state.admin.alert(alert_id)
    engine = state.repository.engine
    account = state.repository.get_account(found["account"])
    evaluation = state.admin.evaluation_for(account["id"], found["ts"], found["reason"])
    around = TimeRange(found["ts"] - 43200.0, found["ts"] + 43200.0, 1800)
    points = traffic.score_series(engine, account["id"], around)
    return render_template("modelguard/alert.html", alert=found, account=account, evaluation=evaluation,
                           breakdown=_evidence(state, evaluation), around=around,
                           scores=charts.scores_over_time(points, around.since, around.until),
                           charts=traffic_charts(traffic.traffic(engine, around, account["id"])),
                           back=url_for(".alert", alert_id=alert_id))


@dashboard.get("/accounts/<path:name>/evidence.json")
def evidence(name: str) -> Any:
    """The account's hash-chained evidence bundle (audited): check it offline with
    ``python -m flask_modelguard.evidence``."""
    found = admin_service().export_evidence(g.modelguard_admin, name)
    return Response(json.dumps(found, indent=1), mimetype="application/json",
                    headers={"Content-Disposition": attachment(f"{name}-evidence.json")})


@dashboard.get("/accounts/<path:name>/watermark-inputs.json")
def watermark_inputs(name: str) -> Any:
    """The account's watermark inputs in order: run the suspect on them, upload its labels."""
    records = guard_state().repository.watermark_records(name, DEFAULT_PROBES)
    body = json.dumps({"account": name, "inputs": [r["input"] for r in records]})
    return Response(body, mimetype="application/json",
                    headers={"Content-Disposition": attachment(f"{name}-watermark-inputs.json")})
