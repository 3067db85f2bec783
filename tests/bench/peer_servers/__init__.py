"""The peers of the peer benchmark (`tests.bench.peers`): servers a user could write instead
of deploying ebm-serve, each a plain module run as a subprocess:

    python -m tests.bench.peer_servers.plain --model score.onnx --port 8001
    python -m tests.bench.peer_servers.litserve_app --model score.onnx --port 8002

Both load the published model's energy graph (``score.onnx``) in onnxruntime with the
session options ebm-serve uses, so the benchmark compares the serving paths, not the math.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import onnxruntime as ort


def onnx_session(path: Path) -> ort.InferenceSession:
    """The session options of ``app.registry.backends.onnx._session`` on CPU with
    ``EBM_INTRA_OP_THREADS=1`` (its default), written out as a user would: one thread per
    call, no spinning threads between calls, every graph optimisation."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", type=Path, required=True, help="an energy-only ONNX graph")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args()


#: The uvicorn settings ebm-serve runs with (``app.server.serve``: uvloop, httptools, no
#: access log; both are installed here), so no peer loses on the event loop or the parser.
UVICORN: dict[str, Any] = {
    "loop": "uvloop",
    "http": "httptools",
    "access_log": False,
    "log_level": "warning",
}
