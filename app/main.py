"""create_app(): the FastAPI application, its lifespan, routers and error handlers."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api import admin, energy, health, models, predict, sample
from app.api.body import BodyParser
from app.api.docs import install_docs
from app.api.errors import install_error_handlers
from app.api.responses import error_response
from app.api.routing import ComputeLane
from app.api.transport import Transport
from app.config import Settings, get_settings
from app.errors import PayloadTooLarge
from app.lifecycle import DrainGate, Lifecycle, open_dispatcher
from app.logs import configure_logging

log = logging.getLogger("ebm.app")

_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


class BodyLimit:
    """413 for a body larger than ``EBM_MAX_BODY_BYTES``: before reading it when its
    Content-Length says so, else (chunked) as soon as the bytes read pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                message = f"body has {int(value)} bytes; the limit is {self.max_bytes}"
                await error_response("payload_too_large", message, 413)(scope, receive, send)
                return
        read = 0

        async def counted() -> Message:
            nonlocal read
            message = await receive()
            if message["type"] == "http.request":
                read += len(message.get("body", b""))
                if read > self.max_bytes:
                    # Raised inside the route's body read: the error handlers answer 413.
                    raise PayloadTooLarge(
                        f"body has more than {self.max_bytes} bytes (the limit); it was "
                        "sent without Content-Length and refused while being read"
                    )
            return message

        await self.app(scope, counted, send)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    catalog, dispatcher = await open_dispatcher(settings)
    app.state.catalog, app.state.dispatcher = catalog, dispatcher
    app.state.body_parser = BodyParser(processes=1)
    app.state.body_parser.start()
    # Everything loaded so far (libraries, models) lives as long as the process: move it out
    # of the collector's reach, or each full collection walks it (torch alone is hundreds of
    # thousands of objects) and stalls every in-flight request.
    gc.collect()
    gc.freeze()
    log.info(
        "serving %d model(s) from %s (%s mode); %d unavailable",
        sum(len(v) for v in catalog.models.values()),
        settings.models_dir,
        "queue" if settings.redis_url else "embedded",
        len(catalog.unavailable),
    )
    try:
        yield
    finally:
        app.state.body_parser.close()
        await asyncio.gather(*app.state.lifecycle.retiring, return_exceptions=True)
        await app.state.dispatcher.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings)
    app = FastAPI(
        title="ebm-serve",
        summary="Serve trained energy-based models: score pairs, minimise energy, sample.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # install_docs serves /docs and /redoc without a CDN
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look the providers up on every request (a tenth of
        # a one-pair score in process): attached only when asked for.
        telemetry=None if settings.otel else _NO_TELEMETRY,
        # The compute routes, matched before anything else (see ComputeLane).
        routes=[ComputeLane(energy.router, predict.router, sample.router)],
    )
    app.state.settings = settings
    app.state.api_keys = settings.api_key_set()
    app.state.lifecycle = Lifecycle()
    install_error_handlers(app)
    # Their routers carry the API key check themselves (app.api.deps.GUARDED); their lean
    # handler (app.api.routing) runs the route's own dependencies, not an include's.
    app.include_router(energy.router)
    app.include_router(predict.router)
    app.include_router(sample.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(admin.router)  # guarded by its own key, EBM_ADMIN_KEY
    install_docs(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(DrainGate, lifecycle=app.state.lifecycle)  # counts all
    app.add_middleware(Transport)  # outermost: every reply follows the request's Accept
    return app
