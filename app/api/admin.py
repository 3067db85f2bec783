"""POST /v1/admin/reload: load the models directory again without dropping a request."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response

from app.api.openapi import ADMIN_ERRORS, errors
from app.api.responses import reply
from app.errors import Forbidden, Unauthorized
from app.lifecycle import reload_models
from app.schemas import ReloadResult

router = APIRouter(prefix="/v1/admin", tags=["admin"])


async def require_admin_key(request: Request) -> None:
    """``Authorization: Bearer <EBM_ADMIN_KEY>``; the endpoints are off without a key."""
    key: str | None = request.app.state.settings.admin_key
    if not key:
        raise Forbidden(
            "admin endpoints are disabled: set EBM_ADMIN_KEY to enable them (SIGHUP reloads "
            "the models without it)"
        )
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else ""
    if not secrets.compare_digest(token.encode(), key.encode()):
        raise Unauthorized("missing or wrong admin key: send 'Authorization: Bearer <key>'")


@router.post(
    "/reload",
    summary="Reload every model from the models directory; in-flight requests finish on "
    "the models they started on. Queue mode: the workers reload too.",
    operation_id="reload_models",
    response_model=ReloadResult,
    responses=errors(*ADMIN_ERRORS),
)
async def reload(request: Request) -> Response:
    await require_admin_key(request)
    return reply(await reload_models(request.app.state))
