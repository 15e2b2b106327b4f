"""Property-based fuzzing of the live service from its own OpenAPI document (schemathesis 4).

With the token: every generated request (valid and invalid) must get a documented, well-formed answer and
never a 5xx. Without it: protected routes answer 401 (or a client error for a malformed body), never 5xx.
"""

from __future__ import annotations

import os

import httpx
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reward_service.app import create_app
from reward_service.settings import ServiceSettings

MAX_EXAMPLES = int(os.environ.get("LOOPER_FUZZ_EXAMPLES", "25"))  # raise it for a deeper run
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics"}


def build_schema():
    """The service's OpenAPI document, as create_app builds it (test_live_openapi_is_the_fuzzed_one checks it)."""
    app = create_app(ServiceSettings(token="t" * 32))
    config = schemathesis.Config()
    project = config.projects.get_default()
    project.update(request_timeout=30)
    project.generation.update(max_examples=MAX_EXAMPLES, allow_x00=True)
    project.phases.update(phases=["examples", "coverage", "fuzzing"])
    return schemathesis.openapi.from_dict(app.openapi(), config=config)


schema = build_schema()
SETTINGS = settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


def test_live_openapi_is_the_fuzzed_one(service):
    live = httpx.get(f"{service.url}/openapi.json").json()
    fuzzed = dict(schema.raw_schema)
    assert live["paths"] == fuzzed["paths"]
    assert live["components"] == fuzzed["components"]


@schema.parametrize()
@SETTINGS
def test_fuzz_with_token(case, service):
    case.call_and_validate(
        base_url=service.url,
        headers=service.headers,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )


@schema.parametrize()
@SETTINGS
def test_fuzz_without_token(case, service):
    response = case.call_and_validate(base_url=service.url, checks=[not_a_server_error, status_code_conformance])
    assert response.status_code < 500
    if case.operation.path not in PUBLIC_PATHS and "authorization" not in {k.lower() for k in case.headers or {}}:
        assert response.status_code in (401, 413, 422), (case.operation.path, response.status_code, response.text)
