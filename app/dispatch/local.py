"""Embedded dispatcher: the engine runs in the API process; no Redis."""

from __future__ import annotations

from typing import Any

from app.dispatch.engine import Engine
from app.dispatch.wire import Envelope, Result


class LocalDispatcher:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._closed = False

    async def submit(self, env: Envelope) -> Result:
        return await self.engine.run(env)

    def describe(self, name: str, version: int) -> dict[str, Any]:
        model = self.engine.registry.get(name, version)
        return {
            "backend": model.backend.name,
            "parity": model.parity,
            "rows_independent": model.rows_independent,
        }

    def row_seconds(self, name: str, version: int) -> float | None:
        return self.engine.registry.get(name, version).row_seconds

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self._closed:
            return False, {"mode": "embedded", "dispatcher": "shutting down"}
        return True, {"mode": "embedded", "dispatcher": "embedded engine running"}

    async def announce_reload(self) -> int | None:
        return None  # the engine is in this process: it was rebuilt with the models

    async def close(self) -> None:
        self._closed = True
        await self.engine.close()
