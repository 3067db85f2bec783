"""The serving process's life after start: reloading the models without dropping a request,
and draining before exit.

Reload (SIGHUP, ``POST /v1/admin/reload``): the new models load beside the old ones, off the
event loop; then the catalog and dispatcher are swapped in one step, so every request sees
either the old set or the new one, never a mix. The old dispatcher is retired: it finishes
what it accepted, then releases its models. In queue mode the workers are told to reload too.

Drain (SIGTERM, see ``app.server``): new requests get 503 with ``Connection: close`` while
those in flight finish, for up to ``EBM_SHUTDOWN_GRACE_S``; /healthz keeps answering (the
process is alive), /readyz says not ready (take it out of the load balancer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.responses import error_response
from app.config import Settings
from app.dispatch.base import Dispatcher
from app.registry.loader import Catalog, catalog_of, load_catalog, load_registry

log = logging.getLogger("ebm.app")

# A request that resolved the old dispatcher just before a swap submits to it within one
# turn of the event loop (no await lies between); the old one keeps taking work this long.
RETIRE_AFTER_S = 1.0
# Paths a draining server still answers: liveness, and readiness (which says not ready).
PROBES = frozenset({"/healthz", "/readyz"})


@dataclass
class Lifecycle:
    """What the middleware, the probes and the signal handlers share."""

    draining: bool = False
    in_flight: int = 0
    reloads: int = 0
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    retiring: set[asyncio.Task[None]] = field(default_factory=set)


async def open_dispatcher(settings: Settings) -> tuple[Catalog, Dispatcher]:
    """Queue mode (EBM_REDIS_URL set): manifests only, jobs go to Redis; no backend, no
    torch, no parity probe in this process. Embedded: load every model and run the engine
    here (loading runs parity probes: off the event loop)."""
    if settings.redis_url:
        from app.dispatch.redis import RedisDispatcher

        catalog = await asyncio.to_thread(load_catalog, settings)
        redis_dispatcher = RedisDispatcher(settings, catalog)
        await redis_dispatcher.start()
        return catalog, redis_dispatcher
    from app.dispatch.engine import Engine
    from app.dispatch.local import LocalDispatcher

    registry = await asyncio.to_thread(load_registry, settings)
    return catalog_of(registry), LocalDispatcher(Engine(registry, settings))


async def reload_models(state: Any) -> dict[str, Any]:
    """Load the models directory again and swap it in (``state`` is the app's state).
    One reload at a time; a failing version is listed unavailable, as at start."""
    life: Lifecycle = state.lifecycle
    async with life.reload_lock:
        started = time.perf_counter()
        catalog, dispatcher = await open_dispatcher(state.settings)
        old = state.dispatcher
        state.catalog, state.dispatcher = catalog, dispatcher
        life.reloads += 1
        task = asyncio.create_task(_retire(old), name="ebm-retire-dispatcher")
        life.retiring.add(task)
        task.add_done_callback(life.retiring.discard)
        notified = await dispatcher.announce_reload()
        took_ms = (time.perf_counter() - started) * 1000
    served = {name: sorted(versions) for name, versions in catalog.models.items()}
    log.info(
        "reloaded in %.0f ms: %d version(s) serve, %d unavailable",
        took_ms,
        sum(len(v) for v in served.values()),
        len(catalog.unavailable),
    )
    answer: dict[str, Any] = {
        "models": served,
        "unavailable": [
            {"name": u.name, "version": u.version, "reason": u.reason} for u in catalog.unavailable
        ],
        "took_ms": round(took_ms, 1),
    }
    if notified is not None:
        answer["workers_notified"] = notified
    return answer


async def _retire(dispatcher: Dispatcher) -> None:
    await asyncio.sleep(RETIRE_AFTER_S)
    await dispatcher.close()  # finishes the jobs it accepted first


class DrainGate:
    """Counts requests in flight; once draining, refuses new ones (503, Connection: close)
    except the probes."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.life = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            await self.app(scope, receive, send)
            return
        if self.life.draining:
            refusal = error_response(
                "shutting_down",
                "the server is shutting down and takes no new requests: retry (another "
                "instance will answer)",
                503,
                {"Retry-After": "1", "Connection": "close"},
            )
            await refusal(scope, receive, send)
            return
        self.life.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.life.in_flight -= 1


async def drain(lifecycle: Lifecycle, grace_s: float) -> int:
    """Refuse new requests and wait for those in flight, at most ``grace_s``; returns how
    many were still running when the grace ran out."""
    lifecycle.draining = True
    log.info("draining: %d request(s) in flight, grace %.0f s", lifecycle.in_flight, grace_s)
    deadline = time.monotonic() + grace_s
    while lifecycle.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if lifecycle.in_flight:
        log.warning("grace over with %d request(s) still in flight", lifecycle.in_flight)
    return lifecycle.in_flight
