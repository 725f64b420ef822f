"""Property-based fuzzing of the live API from its own OpenAPI schema (schemathesis).

Every operation in /openapi.json gets generated requests, valid and invalid
(bodies of each declared media type, query values, missing parts); the checks
are schemathesis' defaults: no 5xx, only status codes and content types the
schema declares, responses that match the declared schemas, invalid data
rejected.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from .conftest import Server, encode

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
    # Left out: "schema-valid data must be accepted". A schema cannot say "bytes that decode
    # as an image", so random bytes are schema-valid image/png bodies, rightly answered 400.
    case.call_and_validate(
        base_url=server.url, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
    assert server.proc.poll() is None


@given(data=st.data())
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_corrupted_images_are_400_never_500(server: Server, data: Any) -> None:
    """Real PNG, JPEG and WebP files with bytes flipped, cut short or spliced: a decoder's worst day."""
    fmt, media = data.draw(
        st.sampled_from([("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
    )
    side = data.draw(st.integers(8, 300))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))  # deterministic per example
    image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")
    body = bytearray(encode(image, fmt))
    for _ in range(data.draw(st.integers(0, 8))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(body)))
    body = body[:cut] + data.draw(st.binary(max_size=64))
    multi = data.draw(st.booleans())
    status, _, payload = server.request(
        "POST", f"/v1/predict?multi={str(multi).lower()}", bytes(body), {"Content-Type": media}
    )
    assert status in (200, 400), payload
    assert ("error" in json.loads(payload)) == (status == 400)
