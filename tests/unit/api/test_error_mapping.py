"""Every error of the tree maps to its status, type and headers in the documented format."""

from __future__ import annotations

import orjson
import pytest

from app.api.responses import ebm_error_response
from app.errors import (
    DeadlineExceeded,
    EBMError,
    InvalidInput,
    ModelNotFound,
    ModelUnavailable,
    Overloaded,
    PayloadTooLarge,
    ShuttingDown,
    Unauthorized,
    VersionNotFound,
)


@pytest.mark.parametrize(
    ("error", "status", "error_type"),
    [
        (Unauthorized("k"), 401, "unauthorized"),
        (ModelNotFound("m"), 404, "model_not_found"),
        (VersionNotFound("v"), 404, "version_not_found"),
        (PayloadTooLarge("p"), 413, "payload_too_large"),
        (InvalidInput("i"), 422, "invalid_input"),
        (Overloaded("o", retry_after_s=2.4), 429, "overloaded"),
        (ModelUnavailable("u"), 503, "model_unavailable"),
        (ShuttingDown("s"), 503, "shutting_down"),
        (DeadlineExceeded("d"), 504, "deadline_exceeded"),
        (EBMError("bug"), 500, "internal_error"),
    ],
)
def test_error_maps_to_documented_response(error: EBMError, status: int, error_type: str) -> None:
    response = ebm_error_response(error)
    assert response.status_code == status
    assert orjson.loads(response.body) == {"error": {"type": error_type, "message": error.message}}


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert ebm_error_response(Overloaded("o", retry_after_s=2.4)).headers["retry-after"] == "2"
    assert ebm_error_response(Overloaded("o", retry_after_s=0.01)).headers["retry-after"] == "1"
    assert "retry-after" in ebm_error_response(ModelUnavailable("u")).headers
