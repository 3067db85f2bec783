"""The LitServe peer: the same onnxruntime call behind LitServe's dynamic batching.

One inference worker on the CPU, ``max_batch_size`` 64 and ``batch_timeout`` 5 ms, as the
LitServe docs suggest for a small model under concurrent load; everything else LitServe's
defaults (one API server process in front of the worker, its multiprocessing queues).
``decode_request`` turns one request into arrays, ``batch`` stacks the requests' rows,
``predict`` is one onnxruntime call on the stack, ``unbatch`` cuts it back per request.

    python -m tests.bench.peer_servers.litserve_app --model score.onnx --port 8002
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import litserve as ls  # type: ignore[import-untyped]
import numpy as np

from tests.bench.peer_servers import UVICORN, arguments, onnx_session

MAX_BATCH_SIZE = 64
BATCH_TIMEOUT_S = 0.005

Arrays = tuple[np.ndarray, np.ndarray]


class EnergyAPI(ls.LitAPI):  # type: ignore[misc]
    def __init__(self, model: Path) -> None:
        super().__init__(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
        self.model = model  # the session is made in setup(): it lives in the worker process

    def setup(self, device: str) -> None:
        self.session = onnx_session(self.model)

    # decode_request and encode_response stay unannotated, as in LitServe's examples:
    # LitServe turns their annotations into the endpoint's FastAPI types (a string one, from
    # ``from __future__ import annotations``, would become a query parameter).
    def decode_request(self, request):  # type: ignore[no-untyped-def]
        return np.asarray(request["x"], np.float32), np.asarray(request["y"], np.float32)

    def batch(self, inputs: list[Arrays]) -> tuple[np.ndarray, np.ndarray, list[int]]:
        xs, ys = zip(*inputs, strict=True)
        return np.concatenate(xs), np.concatenate(ys), [len(x) for x in xs]

    def predict(self, stacked: tuple[np.ndarray, np.ndarray, list[int]]) -> Any:
        x, y, rows = stacked
        (energies,) = self.session.run(["energy"], {"x": x, "y": y})
        return energies, rows

    def unbatch(self, output: tuple[np.ndarray, list[int]]) -> list[np.ndarray]:
        energies, rows = output
        return np.split(energies, np.cumsum(rows)[:-1])

    def encode_response(self, energies):  # type: ignore[no-untyped-def]
        return {"energy": energies.tolist()}


def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    server = ls.LitServer(EnergyAPI(args.model), accelerator="cpu", devices=1, workers_per_device=1)
    server.run(host=args.host, port=args.port, generate_client_file=False, **UVICORN)


if __name__ == "__main__":
    main()
