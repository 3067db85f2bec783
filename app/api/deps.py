"""Resources opened in the lifespan, reached by routes through ``Annotated`` aliases.

The dependencies are ``async def`` on purpose: FastAPI runs plain ``def`` dependencies in a
worker thread, a thread hop per dependency per request.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

from fastapi import Depends, Request

from app.config import Settings
from app.dispatch.base import Dispatcher
from app.errors import Unauthorized
from app.inference.control import deadline_after
from app.registry.loader import Catalog


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_catalog(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


async def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


class Services(NamedTuple):
    settings: Settings
    catalog: Catalog
    dispatcher: Dispatcher


def services(request: Request) -> Services:
    """The lifespan's resources for the compute routes, read in the handler. FastAPI solves
    each ``Depends`` per request with bookkeeping that cost a one-pair score more than its
    model call (three of them: ~15% of its time in process, profiled), so the hot routes
    take the request and call this instead."""
    state = request.app.state
    return Services(state.settings, state.catalog, state.dispatcher)


SettingsDep = Annotated[Settings, Depends(get_settings)]
CatalogDep = Annotated[Catalog, Depends(get_catalog)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


async def require_api_key(request: Request) -> None:
    """Accept ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` when keys are set."""
    keys: frozenset[str] = request.app.state.api_keys
    if not keys:
        return
    auth = request.headers.get("authorization", "")
    token = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
    if token not in keys:
        raise Unauthorized(
            "missing or unknown API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
        )


#: The routers of the model operations (``/v1/models...``) take this as their dependencies.
#: It is attached whatever the configuration (without keys the check is one empty-set
#: test), so that a route's own declaration says it is guarded: the OpenAPI document reads
#: it there, and the compute routes' lean handler (app.api.routing) runs it itself.
GUARDED = [Depends(require_api_key)]


def request_deadline(settings: Settings, deadline_ms: float | None) -> float:
    """A request's wall-clock deadline: its own ``deadline_ms``, else the server default."""
    return deadline_after(deadline_ms or settings.request_timeout_ms)
