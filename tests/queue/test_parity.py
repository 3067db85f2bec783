"""Every endpoint through Redis answers what embedded mode answers, bit for bit (seeded,
same backend): one compute engine behind both transports."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.queue.conftest import QueueStack, readiness
from tests.servers import Server

DIGIT = np.linspace(0, 16, 64).reshape(8, 8).round(1).tolist()

#: (model, operation, body): every endpoint and method, seeded where random.
REQUESTS: list[tuple[str, str, dict[str, Any]]] = [
    ("car", "energy", {"x": [[0.0, 20.0, 9.0], [0.5, 10.0, 7.0]], "y": [[20, 2], [18, -2]]}),
    ("car", "energy", {"x": [[0.0, 20.0, 9.0]], "y": [[20.0, 2.0]], "grad": True}),
    ("quadratic", "energy", {"x": [[0.1, 0.2]], "y": [[0.3, -0.4]], "grad": True}),
    ("mixture", "energy", {"y": [[2.0, 0.0], [0.0, 0.0]], "free_energy": "marginal"}),
    ("mixture", "energy", {"y": [[2.0, 0.0]], "free_energy": "min"}),
    ("ellipse", "energy", {"y": [[0.5, 0.6]], "free_energy": "min", "seed": 3}),
    ("ellipse", "energy", {"y": [[0.5, 0.6]], "free_energy": "marginal"}),
    ("ellipse", "energy", {"y": [[0.5, 0.6]], "z": [[1.0]], "grad": True}),
    ("car", "predict", {"x": [[0.0, 20.0, 9.0], [-0.5, 12.0, 8.0]], "seed": 0}),
    ("car", "predict", {"x": [[0.0, 20.0, 9.0]], "method": "langevin", "seed": 1}),
    ("car", "predict", {"x": [[0.0, 20.0, 9.0]], "method": "dfo", "seed": 2, "k": 3}),
    (
        "car",
        "predict",
        {"x": [[0.0, 20.0, 9.0]], "seed": 4, "y_known": [[20.0, 0.0]], "y_mask": [[1, 0]]},
    ),
    ("car", "predict", {"x": [[0.0, 20.0, 9.0]], "seed": 5, "return_trajectory": True}),
    ("digits", "predict", {"x": [DIGIT], "k": 3, "seed": 14}),
    ("shapes", "predict", {"x": [[[0.1 * i, -0.1 * i] for i in range(16)]], "seed": 6}),
    ("spiral", "predict", {"seed": 7, "k": 4}),
    ("mixture", "predict", {"seed": 8, "k": 8}),
    ("ellipse", "predict", {"seed": 9}),
    ("mixture", "sample", {"n": 5, "seed": 10}),
    ("ellipse", "sample", {"n": 5, "seed": 11}),
    ("spiral", "sample", {"n": 4, "chains": 2, "thin": 3, "seed": 12}),
    ("car", "sample", {"x": [[0.0, 20.0, 9.0]], "n": 3, "seed": 13, "return_trajectory": True}),
    # errors keep their status, type and message through the queue
    ("car", "energy", {"x": [[0.0, 20.0, 9.0]], "y": [[1.0, 2.0, 3.0]]}),
    ("nope", "energy", {"y": [[1.0, 2.0]]}),
    ("car", "predict", {"x": [[0.0, 20.0, 9.0]], "num_starts": 65536, "steps": 100000}),
]


@pytest.fixture(scope="module")
def stack(queue_stack: QueueStack) -> QueueStack:
    return queue_stack


def _comparable(response: httpx.Response) -> tuple[int, Any]:
    body = response.json()
    if isinstance(body.get("stats"), dict):
        body["stats"].pop("time_ms", None)
    return response.status_code, body


@pytest.mark.parametrize(("name", "op", "body"), REQUESTS, ids=lambda v: str(v)[:40])
def test_queue_mode_answers_exactly_what_embedded_mode_answers(
    stack: QueueStack, server: Server, name: str, op: str, body: dict[str, Any]
) -> None:
    path = f"/v1/models/{name}/{op}"
    embedded = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    queued = httpx.post(f"{stack.api.url}{path}", json=body, timeout=60)
    assert _comparable(queued) == _comparable(embedded)


def test_model_metadata_comes_from_manifests_in_queue_mode(
    stack: QueueStack, server: Server
) -> None:
    embedded = httpx.get(f"{server.url}/v1/models/car", timeout=10).json()
    queued = httpx.get(f"{stack.api.url}/v1/models/car", timeout=10).json()
    # the artifacts are loaded by the workers, not by the API
    assert embedded["backend"] == "onnx"
    assert queued["backend"] is None
    assert queued["rows_independent"] is None
    loaded_only = {"backend", "parity", "rows_independent"}
    assert {k: v for k, v in queued.items() if k not in loaded_only} == {
        k: v for k, v in embedded.items() if k not in loaded_only
    }


def test_the_queue_mode_api_loads_no_backend(stack: QueueStack) -> None:
    log = stack.api.log_text()
    assert "queue mode" in log
    assert "loaded on" not in log  # the registry's per-model load line: workers only
    assert "parity" not in log


def test_readyz_reports_redis_workers_and_backlog(stack: QueueStack) -> None:
    ready = readiness(stack.api)
    detail = ready["detail"]
    assert ready["status"] == "ready"
    assert detail["mode"] == "queue"
    assert detail["redis"] == "ok"
    assert detail["workers"]["car"] == 1
    assert set(detail["backlog"]) >= {"car", "mixture"}
    (worker,) = detail["live_workers"]
    assert worker["device"] == "onnx:cpu"
    for counter in ("jobs", "batches", "rows", "queue_wait_ms", "compute_ms"):
        assert counter in worker


def test_queue_mode_bounds_a_search_by_the_workers_measured_cost(stack: QueueStack) -> None:
    """Workers publish the cost per row they measured at load; the API refuses a search
    whose compute that cost puts past EBM_MAX_SEARCH_SECONDS, before enqueueing it."""
    shape = [[0.1 * i, -0.1 * i] for i in range(16)]
    body = {"x": [shape] * 4096, "seed": 0}
    deadline = time.monotonic() + 10
    # The API reads the workers' figures on its heartbeat and on /readyz.
    while not any(
        "row_seconds:shapes/1" in worker
        for worker in readiness(stack.api)["detail"]["live_workers"]
    ):
        assert time.monotonic() < deadline, "no worker published its cost"
        time.sleep(0.2)
    response = httpx.post(f"{stack.api.url}/v1/models/shapes/predict", json=body, timeout=60)
    assert response.status_code == 413, response.text[:300]
    assert "(model 'shapes', measured when it loaded)" in response.json()["error"]["message"]
