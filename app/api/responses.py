"""Replies in the request's encoding: JSON by default (orjson serialises numpy arrays
directly, no tolist() round trip), msgpack when the request's Accept asks for it (arrays as
tensor maps of raw bytes, see app.binary)."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

from app.api.transport import reply_in_msgpack
from app.binary import MSGPACK, pack
from app.errors import EBMError

_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def reply(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    if reply_in_msgpack.get():
        return Response(pack(content), status_code, headers, media_type=MSGPACK)
    return Response(
        orjson.dumps(content, option=_OPTIONS),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )


def error_response(
    error_type: str, message: str, status_code: int, headers: dict[str, str] | None = None
) -> Response:
    return reply({"error": {"type": error_type, "message": message}}, status_code, headers)


def ebm_error_response(exc: EBMError) -> Response:
    return error_response(exc.error_type, exc.message, exc.status_code, exc.headers())
