"""`ebm serve`: uvicorn, with a drain before exit and a reload on SIGHUP.

uvicorn alone, on SIGTERM, closes its listening socket and waits for open connections: a
request arriving meanwhile finds the port closed (connection refused), and a client on a
keep-alive connection cannot tell a shutdown from a crash. Here the first SIGTERM drains
first (``app.lifecycle.drain``: new requests get a clear 503, in-flight ones finish, up to
``EBM_SHUTDOWN_GRACE_S``), then hands over to uvicorn's own shutdown. A second SIGTERM or
Ctrl-C skips the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import signal
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.http_protocol import http_protocol
from app.lifecycle import Lifecycle, drain, reload_models

log = logging.getLogger("ebm.app")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, grace_s: float) -> None:
        super().__init__(config)
        self.app = app
        self.grace_s = grace_s
        self._draining: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            self._loop.add_signal_handler(signal.SIGHUP, self._reload_soon)
        await super().startup(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs in the signal handler, on the loop's thread: schedule, don't await.
        if self._draining is not None or self._loop is None or sig == signal.SIGINT:
            super().handle_exit(sig, frame)
            return
        self._loop.call_soon_threadsafe(self._start_drain, sig)

    def _start_drain(self, sig: int) -> None:
        if self._draining is not None:
            return
        life: Lifecycle = self.app.state.lifecycle
        self._draining = asyncio.get_running_loop().create_task(self._drain_then_exit(life, sig))

    async def _drain_then_exit(self, life: Lifecycle, sig: int) -> None:
        await drain(life, self.grace_s)
        super().handle_exit(sig, None)

    def _reload_soon(self) -> None:
        async def reload() -> None:
            try:
                await reload_models(self.app.state)
            except Exception:
                log.exception("reload on SIGHUP failed; the current models keep serving")

        task = asyncio.get_running_loop().create_task(reload())
        self.app.state.lifecycle.retiring.add(task)
        task.add_done_callback(self.app.state.lifecycle.retiring.discard)


def serve(app: FastAPI, settings: Settings, host: str, port: int, access_log: bool) -> None:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=http_protocol(),
        log_level=settings.log_level,
        access_log=access_log,
        # After the drain only idle keep-alive connections remain: close them promptly.
        timeout_graceful_shutdown=5,
    )
    GracefulServer(config, app, settings.shutdown_grace_s).run()
