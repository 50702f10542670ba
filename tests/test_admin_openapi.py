"""Schemathesis against the admin API's own OpenAPI document: generated
requests to every operation, no server errors, every response as documented
(status codes, content types, bodies)."""

from __future__ import annotations

import shutil
import tempfile

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install '.[dev]')")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis import checks  # noqa: E402

from flask_modelguard import ModelGuard  # noqa: E402
from tests.conftest import model_app  # noqa: E402

_DIR = tempfile.mkdtemp(prefix="modelguard-openapi-")
_GUARD = ModelGuard()
_APP = model_app(_GUARD, MODELGUARD_DATABASE_URL=f"sqlite:///{_DIR}/admin.db")
with _APP.app_context():
    _AUTH = {"Authorization": "Bearer " + ModelGuard.state(_APP).admin.create_token("schemathesis")}
    for _name in ("alice", "bob"):
        _GUARD.create_account(_name)
        _GUARD.issue_key(_name)

schema = schemathesis.openapi.from_wsgi("/modelguard/api/openapi.json", _APP)


@pytest.fixture(scope="module", autouse=True)
def _cleanup():
    yield
    _GUARD.close(_APP)
    shutil.rmtree(_DIR, ignore_errors=True)


#: Derandomized (the same generated requests every run: CI stays green or red
#: for a reason); run with derandomize=False locally to explore further.
#: What the issue asks of the API: no server error, and every response as
#: documented; plus that a missing or wrong credential is refused. (Whether a
#: semantically wrong but schema-valid body, e.g. an unparsable limit string,
#: is refused with 400 is tested in test_admin_api.py.)
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_schema_conformance, checks.ignored_auth]


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_admin_api_conforms_to_its_openapi_document(case):
    case.call_and_validate(headers=_AUTH, checks=CHECKS)


def test_every_operation_is_in_the_admin_api_doc():
    import pathlib

    from flask_modelguard.admin.openapi import openapi_document

    doc = (pathlib.Path(__file__).parent.parent / "docs" / "admin-api.md").read_text()
    for path, operations in openapi_document("/x")["paths"].items():
        for method in operations:
            if method != "parameters":
                assert f"`{method.upper()} {path}`" in doc, (method, path)
