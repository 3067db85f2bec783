"""Fast JSON responses: orjson serialises numpy arrays directly (no tolist() round trip)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from app.errors import EBMError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content, option=_OPTIONS),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def error_response(
    error_type: str, message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return json_response({"error": {"type": error_type, "message": message}}, status_code, headers)


def ebm_error_response(exc: EBMError) -> Response:
    return error_response(exc.error_type, exc.message, exc.status_code, exc.headers())
