"""Property-based fuzzing of the live API from its own OpenAPI schema (schemathesis).

Every operation in /openapi.json gets generated requests, valid and invalid
(bodies of each declared media type, query values, missing parts); the checks
include "no 5xx", status codes and content types the schema declares, and
responses that match the declared schemas.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from .conftest import Server

schemathesis = pytest.importorskip("schemathesis")


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples every run: a failure here is a bug, not bad luck
    suppress_health_check=list(HealthCheck),
)
def test_api_never_fails_from_its_schema(case: Any, server: Server) -> None:
    case.call_and_validate(base_url=server.url)
    assert server.proc.poll() is None
