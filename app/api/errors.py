"""The one place where errors become HTTP responses, all as ``{"error": {type, message}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app.api.disconnect import ClientDisconnected
from app.api.responses import ebm_error_response, error_response
from app.errors import EBMError, shown

log = logging.getLogger("ebm.api")

_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _location(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


def validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    """(status, type, message) for a request FastAPI could not parse or validate."""
    errors = exc.errors()
    if any(err.get("type") == "json_invalid" for err in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        reason = str(err.get("ctx", {}).get("error", "parse error"))
        loc = tuple(err.get("loc", ()))
        where = f" at character {loc[1]}" if len(loc) > 1 else ""
        hint = ""
        if any(token in str(exc.body) for token in ("NaN", "Infinity")):
            hint = "; NaN and Infinity are not JSON: send finite numbers only"
        return 400, "invalid_json", f"request body is not valid JSON: {reason}{where}{hint}"
    if any(e.get("loc") == ("body",) and isinstance(e.get("input"), bytes | str) for e in errors):
        # FastAPI reads a body as JSON only when the Content-Type says so (curl -d sends
        # application/x-www-form-urlencoded): the object never got parsed.
        return (
            422,
            "invalid_request",
            "the body must be a JSON object sent with Content-Type: application/json",
        )
    problems = []
    for err in errors[:10]:
        where = _location(tuple(err.get("loc", ())))
        if err.get("type") == "extra_forbidden":
            problems.append(f"{where}: unknown field")
        elif err.get("type") == "missing":
            problems.append(f"{where}: field required")
        else:
            problems.append(f"{where}: {err.get('msg', 'invalid')}")
    more = f" (and {len(errors) - 10} more)" if len(errors) > 10 else ""
    return 422, "invalid_request", "; ".join(problems) + more


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(EBMError)
    async def on_ebm_error(_: Request, exc: EBMError) -> Response:
        if exc.status_code >= 500 and exc.status_code not in (503, 504):
            log.error("server error: %s", exc.message)
        return ebm_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, exc: RequestValidationError) -> Response:
        status, error_type, message = validation_message(exc)
        return error_response(error_type, message, status)

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        if isinstance(exc.__cause__, EBMError):  # FastAPI wraps errors raised reading a body
            return ebm_error_response(exc.__cause__)
        error_type = _HTTP_TYPES.get(exc.status_code, "http_error")
        message = str(exc.detail)
        path = shown(request.url.path)
        if exc.status_code == 404:
            message = f"no route {request.method} {path}; see /docs"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method {request.method} is not allowed on {path}; allowed: {allowed}"
        return error_response(error_type, message, exc.status_code, dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnected)
    async def on_disconnect(_: Request, exc: ClientDisconnected) -> Response:
        # Nobody reads it; 499 (nginx's "client closed request") keeps logs honest.
        return error_response("client_disconnected", "the client closed the connection", 499)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response("internal_error", f"internal error: {type(exc).__name__}", 500)
