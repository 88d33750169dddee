"""Schemathesis over the app's whole OpenAPI, in process (ASGI), on SQLite.

Every operation gets bounded generated requests, valid (positive) and invalid (negative), with
a real API key; no answer may be a server error, and each must match the schema (documented
status code, content type, headers, body). Derandomized, so a run in CI is repeatable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi import checks
from sqlalchemy import create_engine

from conftest import make_database
from postwarden.settings import Settings
from postwarden.store import accounts, db
from postwarden.web.app import create_app

EXAMPLES = 30
CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]
"""Not ``positive_data_acceptance``: a request the JSON Schema allows may still be refused
with 422 by rules it cannot say ("give text, html or both", a real email address). Not
``negative_data_rejection``: Pydantic's lax mode accepts, as documented, some values the
schema's types do not name (a number as a date: seconds since 1970; 0.0 as false)."""


def _operations() -> list[tuple[str, str]]:
    """(method, path) of every documented operation, read from the app's own OpenAPI."""
    app = create_app(Settings(secret_key="fuzz"), create_engine("sqlite://"), b"f" * 32)
    return [
        (method.upper(), path)
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


@pytest.fixture
def api(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[schemathesis.BaseSchema, str]:
    url = make_database("sqlite", request, tmp_path)
    engine = db.connect(url)
    request.addfinalizer(engine.dispose)
    with engine.begin() as conn:
        _, key = accounts.create(conn, "acme", "bounces.acme.test")
    app = create_app(Settings(database_url=url, secret_key="fuzz"), engine, b"f" * 32)
    return schemathesis.openapi.from_asgi("/openapi.json", app), key


def _run(strategy: object, call: Callable[[schemathesis.Case], object]) -> None:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        call(case)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), _operations())
def test_operation(
    api: tuple[schemathesis.BaseSchema, str], method: str, path: str, mode: GenerationMode
) -> None:
    schema, key = api
    operation = schema[path][method]
    headers = {"Authorization": f"Bearer {key}"}
    try:
        _run(
            operation.as_strategy(mode, headers=headers),
            lambda case: case.call_and_validate(headers=headers, checks=CHECKS),
        )
    except Unsatisfiable:  # GET /v1/blocks, DELETE /v1/blocks/{any string}
        pytest.skip("no request to this operation breaks its schema")
