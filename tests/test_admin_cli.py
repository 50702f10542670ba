"""The admin commands of ``flask modelguard``."""

from __future__ import annotations

import json


def test_admin_commands(make_guarded, tmp_path):
    g = make_guarded()
    runner = g.app.test_cli_runner()
    state = g.guard.state(g.app)
    created = runner.invoke(args=["modelguard", "create-admin-token", "ops"])
    assert created.exit_code == 0, created.output
    token = created.output.split(": ", 1)[1].split()[0]
    assert token.startswith("mga_") and state.admin.verify_token(token) == "ops"
    assert runner.invoke(args=["modelguard", "create-admin-token", "ops"]).exit_code == 1  # name taken

    name, key = g.account(limits="1000/second")
    quiet, _ = g.account()
    with g.app.app_context():
        g.guard.add_canaries([[5.0, 5.0]])
    g.predict(key, {"features": [5.0, 5.0]})
    g.predict(key, {"features": [1.0, 5.0]})
    g.guard.flush(g.app)

    flagged = runner.invoke(args=["modelguard", "list-flagged"])
    assert name in flagged.output and quiet not in flagged.output
    shown = runner.invoke(args=["modelguard", "show-account", name])
    assert "flagged      True" in shown.output and "canary" in shown.output and "mg_" in shown.output
    assert key.split("_")[2] not in shown.output  # never the secret

    assert runner.invoke(args=["modelguard", "block", name]).exit_code == 0
    assert g.predict(key).status_code == 403
    assert "blocked -> active" in runner.invoke(args=["modelguard", "unblock", name]).output
    assert g.predict(key).status_code == 200

    alerts = runner.invoke(args=["modelguard", "alerts"])
    alert_id = int(alerts.output.split()[0].lstrip("#"))
    assert "acknowledged." in runner.invoke(args=["modelguard", "ack", str(alert_id)]).output
    assert "already" in runner.invoke(args=["modelguard", "ack", str(alert_id)]).output
    assert runner.invoke(args=["modelguard", "ack", "999999"]).exit_code == 1

    out = tmp_path / "log.jsonl"
    assert runner.invoke(args=["modelguard", "export-log", name, "-o", str(out)]).exit_code == 0
    g.guard.flush(g.app)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) >= 2 and {r["status"] for r in rows} >= {200} and all("input" not in r for r in rows)

    actions = [e["action"] for e in state.admin.audit_entries()[0]]
    assert {"create-admin-token", "update-account", "acknowledge-alert", "export-events"} <= set(actions)
    assert all(e["actor"].startswith("cli") for e in state.admin.audit_entries()[0])
    assert runner.invoke(args=["modelguard", "revoke-admin-token", "ops"]).exit_code == 0
    assert state.admin.verify_token(token) is None
