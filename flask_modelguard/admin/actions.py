"""The dashboard's actions: each a POST (its CSRF token checked before it
runs), each going through :class:`~.service.AdminService`, which writes its
audit entry. A new key is shown in the response only, once."""

from __future__ import annotations

import json
from typing import Any

from flask import flash, g, redirect, render_template, request, url_for

from ..exc import InvalidValue
from .session import PageError, admin_service, dashboard, safe_next

#: Bytes of predictions an uploaded file may hold (the request as a whole: session.MAX_BODY).
MAX_UPLOAD = 4 * 1024 * 1024


def _back(name: str) -> Any:
    return redirect(url_for(".account", name=name))


def _new_key(issued: Any, created: bool = False) -> Any:
    # Shown in this response only (never stored, never in a URL; Cache-Control: no-store).
    return render_template("modelguard/new_key.html", key=issued.token, account=issued.account,
                           replaces=issued.replaces, grace=issued.grace, created=created)


@dashboard.post("/accounts")
def create_account() -> Any:
    form = request.form
    name = form.get("name", "").strip()
    if not name or len(name) > 128 or not name.isprintable():
        raise InvalidValue("An account's name is 1 to 128 printable characters.")
    service = admin_service()
    service.create_account(g.modelguard_admin, name, tier=form.get("tier") or None,
                           limits=form.get("limits", "").strip() or None)
    if form.get("issue_key"):
        return _new_key(service.issue_key(g.modelguard_admin, name), created=True)
    flash(f"Account {name} created.")
    return _back(name)


@dashboard.post("/accounts/<path:name>/status")
def set_status(name: str) -> Any:
    change = admin_service().update_account(g.modelguard_admin, name, status=request.form.get("status", ""))
    flash(f"{name}: {change.before['status']} → {change.after['status']}.")
    return _back(name)


@dashboard.post("/accounts/<path:name>/unflag")
def unflag(name: str) -> Any:
    """Clear the flag: answers go back to the normal policy; the detectors
    need new evidence (queries after this) before they flag again."""
    admin_service().update_account(g.modelguard_admin, name, flagged=False)
    flash(f"{name} unflagged: the detectors judge its queries from now on.")
    return _back(name)


@dashboard.post("/accounts/<path:name>/allowlist")
def allowlist(name: str) -> Any:
    """Allow-list (``on=1``; it also clears the flag) or take the account off the list."""
    on = request.form.get("on") == "1"
    admin_service().update_account(g.modelguard_admin, name, allowlisted=on)
    flash(f"{name} allow-listed: the detectors never flag it." if on
          else f"{name} is no longer allow-listed.")
    return _back(name)


@dashboard.post("/accounts/<path:name>/plan")
def set_plan(name: str) -> Any:
    """Change the tier, and the account's own limits (empty: the tier's)."""
    form = request.form
    change = admin_service().update_account(g.modelguard_admin, name, tier=form.get("tier", ""),
                                            limits=form.get("limits", "").strip() or None)
    after = change.after
    flash(f"{name}: tier {after['tier']}, " + (f"own limits {after['limits']}." if after["limits"]
                                                else "the tier's limits."))
    return _back(name)


@dashboard.post("/accounts/<path:name>/keys")
def issue_key(name: str) -> Any:
    return _new_key(admin_service().issue_key(g.modelguard_admin, name))


@dashboard.post("/keys/<prefix>/rotate")
def rotate(prefix: str) -> Any:
    raw = request.form.get("grace", "").strip()
    try:
        grace = float(raw) if raw else None
    except ValueError:
        raise PageError(400, "Not possible", "The grace period must be a number of seconds.") from None
    return _new_key(admin_service().rotate_key(g.modelguard_admin, prefix, grace))


@dashboard.post("/keys/<prefix>/revoke")
def revoke(prefix: str) -> Any:
    row = admin_service().revoke_key(g.modelguard_admin, prefix)
    flash(f"Key mg_{prefix}_… revoked: its next request is refused.")
    return _back(row["account"])


@dashboard.post("/alerts/<int(max=999999999999999999):alert_id>/ack")
def acknowledge(alert_id: int) -> Any:
    row = admin_service().acknowledge_alert(g.modelguard_admin, alert_id)
    flash(f"Alert #{alert_id} acknowledged." if row["changed"] else f"Alert #{alert_id} was already acknowledged.")
    return redirect(safe_next(request.form.get("next")))


def _uploaded_predictions() -> Any:
    """The suspect's labels from the uploaded JSON file: a list, or {"predictions": [...]}."""
    upload = request.files.get("predictions")
    if upload is None or not upload.filename:
        return None
    data = upload.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        raise InvalidValue(f"The predictions file is larger than {MAX_UPLOAD // 1024 // 1024} MiB.")
    try:
        found = json.loads(data)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise InvalidValue("The predictions file is not JSON (or nests too deep).") from None
    return found.get("predictions") if isinstance(found, dict) else found


@dashboard.post("/accounts/<path:name>/verify")
def verify(name: str) -> Any:
    """Test a suspect model for the account's watermarks: at its URL, or from
    its uploaded labels for the watermark inputs (``watermark-inputs``)."""
    url = request.form.get("url", "").strip() or None
    predictions = _uploaded_predictions()
    if (url is None) == (predictions is None):
        raise InvalidValue("Give the suspect's prediction URL or upload its predictions, one of the two.")
    result = admin_service().verify_watermark(g.modelguard_admin, name, url=url, predictions=predictions)
    return render_template("modelguard/verified.html", result=result, account=name, source=url or "uploaded labels")
