"""The OpenAPI 3.0 description of the admin API (served at
``<prefix>/api/openapi.json``; docs/admin-api.md is written from it)."""

from __future__ import annotations

from typing import Any

_PROBLEM = {"$ref": "#/components/schemas/Problem"}
_ERRORS = {
    "400": {"description": "Bad request", "content": {"application/problem+json": {"schema": _PROBLEM}}},
    "401": {"description": "No or invalid admin credential",
            "content": {"application/problem+json": {"schema": _PROBLEM}}},
    "403": {"description": "Not an admin credential", "content": {"application/problem+json": {"schema": _PROBLEM}}},
    "503": {"description": "Database unavailable", "content": {"application/problem+json": {"schema": _PROBLEM}}},
}
_NOT_FOUND = {"404": {"description": "No such resource", "content": {"application/problem+json": {"schema": _PROBLEM}}}}


def _json(schema: Any, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "total"],
            "properties": {"items": {"type": "array", "items": _ref(item)}, "total": {"type": "integer"},
                           "limit": {"type": "integer"}, "offset": {"type": "integer"}}}


def _path_param(name: str, kind: str = "string", pattern: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": kind}
    if pattern:
        schema["pattern"] = pattern
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
_OFFSET = _query("offset", {"type": "integer", "minimum": 0, "maximum": 1000000000})
_NAME = _path_param("name")
_PREFIX = _path_param("prefix")

SCHEMAS: dict[str, Any] = {
    "Problem": {"type": "object", "required": ["type", "title", "status", "detail"],
                "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                               "status": {"type": "integer"}, "detail": {"type": "string"}}},
    "Account": {"type": "object", "required": ["id", "name", "tier", "status", "flagged", "score", "allowlisted"],
                "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "tier": {"type": "string"},
                               "status": {"type": "string", "enum": ["active", "suspended", "blocked"]},
                               "limits": {"type": "string", "nullable": True}, "flagged": {"type": "boolean"},
                               "score": {"type": "number"}, "allowlisted": {"type": "boolean"},
                               "reviewed_queries": {"type": "integer"},
                               "created_at": {"type": "string"}, "updated_at": {"type": "string"},
                               "active_keys": {"type": "integer"}}},
    "Key": {"type": "object", "required": ["prefix"],
            "properties": {"prefix": {"type": "string"}, "hint": {"type": "string"},
                           "created_at": {"type": "string", "nullable": True},
                           "revoked_at": {"type": "string", "nullable": True},
                           "expires_at": {"type": "string", "nullable": True},
                           "account": {"type": "string"}, "id": {"type": "integer"},
                           "account_id": {"type": "integer"}}},
    "NewKey": {"type": "object", "required": ["key", "prefix"],
               "properties": {"key": {"type": "string"}, "prefix": {"type": "string"},
                              "replaces": {"type": "string"}, "note": {"type": "string"}}},
    "Evaluation": {"type": "object", "required": ["ts", "queries", "scores", "reasons"],
                   "properties": {"ts": {"type": "number"}, "queries": {"type": "integer"},
                                  "scores": {"type": "object", "nullable": True,
                                             "additionalProperties": {"type": "number", "nullable": True}},
                                  "reasons": {"type": "array", "items": {"type": "string"}}}},
    "Scores": {"type": "object", "required": ["account", "score", "flagged", "history"],
               "properties": {"account": {"type": "string"}, "score": {"type": "number"},
                              "flagged": {"type": "boolean"},
                              "current": {"allOf": [_ref("Evaluation")], "nullable": True},
                              "history": {"type": "array", "items": _ref("Evaluation")}}},
    "Alert": {"type": "object", "required": ["id", "account_id", "account", "ts", "action", "reason"],
              "properties": {"id": {"type": "integer"}, "account_id": {"type": "integer"},
                             "account": {"type": "string"}, "ts": {"type": "number"},
                             "action": {"type": "string"}, "reason": {"type": "string"},
                             "acknowledged_at": {"type": "string", "nullable": True},
                             "acknowledged_by": {"type": "string", "nullable": True},
                             "changed": {"type": "boolean"}}},
    "Group": {"type": "object", "required": ["id", "ts", "members", "accounts", "queries", "ratio", "z", "action",
                                             "reason"],
              "properties": {"id": {"type": "integer"}, "ts": {"type": "number"},
                             "members": {"type": "array", "items": {"type": "integer"}},
                             "accounts": {"type": "array", "items": {"type": "string", "nullable": True}},
                             "queries": {"type": "integer"}, "ratio": {"type": "number"}, "z": {"type": "number"},
                             "action": {"type": "string"}, "reason": {"type": "string"}}},
    "AuditEntry": {"type": "object", "required": ["id", "at", "actor", "action"],
                   "properties": {"id": {"type": "integer"}, "at": {"type": "string"}, "actor": {"type": "string"},
                                  "action": {"type": "string"}, "target": {"type": "string", "nullable": True},
                                  "before": {"nullable": True}, "after": {"nullable": True}}},
    "Verification": {"type": "object", "required": ["account", "probes", "matches", "log2_p", "claimed"],
                     "properties": {"account": {"type": "string"}, "probes": {"type": "integer"},
                                    "matches": {"type": "integer"}, "null_rate": {"type": "number"},
                                    "log2_p": {"type": "number"}, "claimed": {"type": "boolean"},
                                    "summary": {"type": "string"}}},
    "Health": {"type": "object", "required": ["status", "database", "limits_storage", "worker"],
               "properties": {"status": {"type": "string", "enum": ["ok", "degraded"]},
                              "database": {"type": "boolean"}, "limits_storage": {"type": "boolean"},
                              "database_problem": {"type": "string",
                                                   "description": "A SQLite file gone or replaced under the server."},
                              "worker": {"type": "object"},
                              "detection": {"$ref": "#/components/schemas/DetectionStatus"}}},
    "Reference": {
        "type": "object", "required": ["source", "space", "classes", "thresholds"],
        "properties": {"source": {"type": "string"}, "space": {"type": "string"},
                       "classes": {"type": "array", "items": {"type": "string"}},
                       "thresholds": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}},
    "DetectionStatus": {
        "type": "object", "required": ["enabled", "degraded", "verdict", "detectors"],
        "description": "Which detectors are live in the answering process, and why the others are not.",
        "properties": {
            "enabled": {"type": "boolean"}, "degraded": {"type": "boolean"}, "verdict": {"type": "string"},
            "detectors": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["live", "why"],
                "properties": {"live": {"type": "boolean"}, "why": {"type": "string"}}}}}},
}


_STATUS = {"type": "string", "enum": ["active", "suspended", "blocked"]}
_WITH_404 = {**_ERRORS, **_NOT_FOUND}
_CONFLICT = {"409": {"description": "Name taken", "content": {"application/problem+json": {"schema": _PROBLEM}}}}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _account_paths(tier: dict[str, Any]) -> dict[str, Any]:
    """Accounts: list, create, show, change."""
    listing = [_query("status", _STATUS), _query("flagged", {"type": "string", "enum": ["true", "false"]}),
               _query("tier", tier), _query("q", {"type": "string", "maxLength": 128},
                                             "part of the name (case-insensitive)"),
               _query("sort", {"type": "string", "enum": ["score", "name", "created_at"]},
                      "score and created_at sort descending, name ascending"),
               _LIMIT, _OFFSET]
    created = {"type": "object", "required": ["name"], "additionalProperties": False,
               "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 128},
                              "tier": tier, "limits": {"type": "string"}}}
    changed = {"type": "object", "additionalProperties": False, "minProperties": 1,
               "properties": {"status": _STATUS, "tier": tier, "limits": {"type": "string", "nullable": True},
                              "flagged": {"type": "boolean"}, "allowlisted": {"type": "boolean"}}}
    return {
        "/accounts": {
            "get": {"summary": "List accounts", "operationId": "listAccounts", "parameters": listing,
                    "responses": {"200": _json(_page("Account")), **_ERRORS}},
            "post": {"summary": "Create an account", "operationId": "createAccount", "requestBody": _body(created),
                     "responses": {"201": _json(_ref("Account"), "Created"), **_CONFLICT, **_ERRORS}},
        },
        "/accounts/{name}": {
            "parameters": [_NAME],
            "get": {"summary": "Show an account, its keys and effective limits", "operationId": "showAccount",
                    "responses": {"200": _json(_ref("Account")), **_WITH_404}},
            "patch": {"summary": "Change status, tier, limits, flag or allow-listing", "operationId": "updateAccount",
                      "requestBody": _body(changed), "responses": {"200": _json(_ref("Account")), **_WITH_404}},
        },
    }


def _key_paths() -> dict[str, Any]:
    """Keys: list, issue, rotate, revoke."""
    grace = {"type": "object", "additionalProperties": False,
             "properties": {"grace": {"type": "number", "minimum": 0, "maximum": 100000000}}}
    return {
        "/accounts/{name}/keys": {
            "parameters": [_NAME],
            "get": {"summary": "List an account's keys (prefixes only)", "operationId": "listKeys",
                    "responses": {"200": _json({"type": "object", "required": ["items"], "properties": {
                        "items": {"type": "array", "items": _ref("Key")}}}), **_WITH_404}},
            "post": {"summary": "Issue a key (shown once)", "operationId": "issueKey",
                     "responses": {"201": _json(_ref("NewKey"), "Created"), **_WITH_404}},
        },
        "/keys/{prefix}/rotate": {
            "parameters": [_PREFIX],
            "post": {"summary": "Rotate a key; the old one stays valid for grace seconds", "operationId": "rotateKey",
                     "requestBody": _body(grace, required=False),
                     "responses": {"201": _json(_ref("NewKey"), "Created"), **_WITH_404}},
        },
        "/keys/{prefix}/revoke": {
            "parameters": [_PREFIX],
            "post": {"summary": "Revoke a key at once", "operationId": "revokeKey",
                     "responses": {"200": _json(_ref("Key")), **_WITH_404}},
        },
    }


def _evidence_paths() -> dict[str, Any]:
    """An account's evidence: scores, query log, watermarks."""
    probes = {"type": "integer", "minimum": 1, "maximum": 10000}
    matrix = {"type": "array", "minItems": 1, "items": {"type": "array", "minItems": 3, "items": {"type": "number"}}}
    vectors = {"type": "object", "required": ["owner", "suspect"], "additionalProperties": False,
               "properties": {"owner": matrix, "suspect": matrix, "account": {"type": "string"}}}
    mark = {"type": "object", "properties": {k: {"type": t} for k, t in (
        ("account", "string"), ("probes", "integer"), ("groups", "integer"), ("statistic", "number"),
        ("log2_p", "number"), ("claimed", "boolean"), ("summary", "string"))}}
    marks = {"type": "object", "required": ["items", "accounts"],
             "properties": {"items": {"type": "array", "items": mark}, "accounts": {"type": "integer"}}}
    suspect = {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["url"],
         "properties": {"url": {"type": "string", "format": "uri"}, "max_probes": probes}},
        {"type": "object", "additionalProperties": False, "required": ["predictions"],
         "properties": {"predictions": {"type": "array"}, "max_probes": probes}}]}
    return {
        "/accounts/{name}/scores": {
            "parameters": [_NAME],
            "get": {"summary": "Current score per detector, history and reasons", "operationId": "scores",
                    "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
                    "responses": {"200": _json(_ref("Scores")), **_WITH_404}},
        },
        "/accounts/{name}/events": {
            "parameters": [_NAME],
            "get": {"summary": "Export the account's query log (streamed)", "operationId": "exportEvents",
                    "parameters": [_query("format", {"type": "string", "enum": ["jsonl", "csv"]}),
                                   _query("since", {"type": "number"}, "epoch seconds, inclusive"),
                                   _query("until", {"type": "number"}, "epoch seconds, exclusive")],
                    "responses": {"200": {"description": "JSON Lines or CSV", "content": {
                        "application/x-ndjson": {"schema": {"type": "string"}},
                        "text/csv": {"schema": {"type": "string"}}}}, **_WITH_404}},
        },
        "/accounts/{name}/watermark-inputs": {
            "parameters": [_NAME],
            "get": {"summary": "The inputs of the account's evidence (watermark, poison, misinformation answers)",
                    "operationId": "watermarkInputs",
                    "parameters": [_query("limit", {"type": "integer", "minimum": 1, "maximum": 10000})],
                    "responses": {"200": _json({"type": "object", "required": ["items", "total"], "properties": {
                        "items": {"type": "array"}, "total": {"type": "integer"}}}), **_WITH_404}},
        },
        "/accounts/{name}/verify-watermark": {
            "parameters": [_NAME],
            "post": {"summary": "Test a suspect model against the account's evidence", "operationId": "verifyWatermark",
                     "requestBody": _body(suspect), "responses": {"200": _json(_ref("Verification")), **_WITH_404}},
        },
        "/verify-mark": {
            "post": {"summary": "Test a suspect's probabilities for an account's probability mark (every account's "
                                "by default, most significant first)", "operationId": "verifyMark",
                     "requestBody": _body(vectors), "responses": {"200": _json(marks), **_WITH_404}},
        },
    }


def _operations_paths() -> dict[str, Any]:
    """Alerts, the audit log, ADD's reference and health."""
    labels = {"type": "array", "minItems": 20, "maxItems": 100000,
              "items": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}
    reference = {"type": "object", "required": ["inputs", "labels"], "additionalProperties": False,
                 "properties": {"inputs": {"type": "array", "minItems": 20, "maxItems": 100000, "items": {}},
                                "labels": labels}}
    return {
        "/alerts": {
            "get": {"summary": "Alerts, newest first", "operationId": "listAlerts",
                    "parameters": [_query("open", {"type": "string", "enum": ["true", "false"]}),
                                   _query("account", {"type": "string"}), _LIMIT, _OFFSET],
                    "responses": {"200": _json(_page("Alert")), **_WITH_404}},
        },
        "/groups": {
            "get": {"summary": "Colluding groups found, newest first", "operationId": "listGroups",
                    "parameters": [_LIMIT, _OFFSET], "responses": {"200": _json(_page("Group")), **_ERRORS}},
        },
        "/alerts/{alert_id}/ack": {
            "parameters": [_path_param("alert_id", "string")],
            "post": {"summary": "Acknowledge an alert", "operationId": "acknowledgeAlert",
                     "responses": {"200": _json(_ref("Alert")), **_WITH_404}},
        },
        "/audit": {
            "get": {"summary": "The audit log, newest first", "operationId": "audit", "parameters": [_LIMIT, _OFFSET],
                    "responses": {"200": _json(_page("AuditEntry")), **_ERRORS}},
        },
        "/reference": {
            "get": {"summary": "ADD's reference in use (where it came from, classes, thresholds)",
                    "operationId": "showReference", "responses": {"200": _json(_ref("Reference")), **_WITH_404}},
            "put": {"summary": "Fit ADD's reference on known-good inputs and the model's labels; every "
                               "process uses it from its worker's next tick", "operationId": "fitReference",
                    "requestBody": _body(reference), "responses": {"200": _json(_ref("Reference")), **_ERRORS}},
        },
        "/health": {
            "get": {"summary": "Worker, queue, dropped events, storage reachability", "operationId": "health",
                    "responses": {"200": _json(_ref("Health")), "503": _json(_ref("Health"), "Degraded"),
                                  "401": _ERRORS["401"], "403": _ERRORS["403"]}},
        },
    }


def openapi_document(base: str, tiers: list[str] | None = None) -> dict[str, Any]:
    """The document, its paths under ``base`` (e.g. ``/modelguard/api``);
    ``tiers``: the configured tier names (the values ``tier`` may take)."""
    tier: dict[str, Any] = {"type": "string", **({"enum": list(tiers)} if tiers else {})}
    return {
        "openapi": "3.0.3",
        "info": {"title": "ModelGuard admin API", "version": "1",
                 "description": "Manage accounts, keys, alerts and evidence of a ModelGuard-protected model server."},
        "servers": [{"url": base}],
        "security": [{"adminToken": []}],
        "paths": {**_account_paths(tier), **_key_paths(), **_evidence_paths(), **_operations_paths()},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer",
                                               "description": "An admin token (mga_...) from "
                                                              "`flask modelguard create-admin-token`."}},
        },
    }
