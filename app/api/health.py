"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.api.deps import CatalogDep, DispatcherDep
from app.api.responses import reply
from app.schemas import Health

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    response_model=Health,
    summary="Liveness: the process answers.",
    operation_id="healthz",
)
async def healthz() -> Response:
    return reply({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: at least one model serves and the dispatcher takes work (queue mode: "
    "Redis reachable, live workers per model, backlog).",
    responses={503: {"model": Health, "description": "Not ready; detail says why."}},
    operation_id="readyz",
)
async def readyz(request: Request, registry: CatalogDep, dispatcher: DispatcherDep) -> Response:
    if request.app.state.lifecycle.draining:
        reason = {"reason": "shutting down: finishing the requests in flight"}
        return reply({"status": "not ready", "detail": reason}, 503)
    dispatch_ok, dispatch_detail = await dispatcher.readiness()
    served = {name: sorted(versions) for name, versions in registry.models.items()}
    unavailable = [
        {"name": u.name, "version": u.version, "reason": u.reason} for u in registry.unavailable
    ]
    ready = dispatch_ok and bool(served)
    detail: dict[str, object] = {"models": served, "unavailable": unavailable, **dispatch_detail}
    if not served:
        detail["reason"] = "no model is available"
    return reply(
        {"status": "ready" if ready else "not ready", "detail": detail}, 200 if ready else 503
    )
