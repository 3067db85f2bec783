"""The plain FastAPI peer: what a user writes in an afternoon to serve an ONNX energy.

FastAPI with a pydantic body model, one onnxruntime call per request, a pydantic response
model, one uvicorn worker. The handler is ``async def``: the call on one pair takes tens of
microseconds, and a ``def`` handler would pay a thread-pool hop per request that costs more
than the call, so this is the faster of the two ways to write it (the peer at its best).

    python -m tests.bench.peer_servers.plain --model score.onnx --port 8001
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from tests.bench.peer_servers import UVICORN, arguments, onnx_session


class Pairs(BaseModel):
    x: list[list[float]]
    y: list[list[float]]


class Energies(BaseModel):
    energy: list[float]


def build_app(model: Path) -> FastAPI:
    session = onnx_session(model)
    app = FastAPI(title="plain energy server")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/energy")
    async def energy(pairs: Pairs) -> Energies:
        feed = {
            "x": np.asarray(pairs.x, dtype=np.float32),
            "y": np.asarray(pairs.y, dtype=np.float32),
        }
        (energies,) = session.run(["energy"], feed)
        return Energies(energy=energies.tolist())

    return app


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    uvicorn.run(build_app(args.model), host=args.host, port=args.port, workers=1, **UVICORN)


if __name__ == "__main__":
    main()
