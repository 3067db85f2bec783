"""Large bodies are parsed in a helper process (issue 9, defect 2: a 55 MB body held the
event loop for seconds, and every other request waited)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from tests.conftest import SHIPPED_MODELS
from tests.servers import Server


def test_a_huge_body_does_not_stall_other_requests(server: Server) -> None:
    # 3.6M rows, ~60 MB: under the body limit, over every model's row limit.
    rows = np.random.default_rng(0).normal(size=(3_600_000, 2)).round(4).tolist()
    body = orjson.dumps({"y": rows})
    del rows
    assert 50e6 < len(body) < 64 * 1024 * 1024
    slowest = 0.0
    polls = 0
    done = threading.Event()

    def poll_health() -> None:
        nonlocal slowest, polls
        with server.client() as client:
            while not done.is_set():
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                slowest = max(slowest, time.perf_counter() - started)
                polls += 1
                time.sleep(0.01)

    poller = threading.Thread(target=poll_health)
    poller.start()
    try:
        with server.client(timeout=120) as client:
            headers = {"content-type": "application/json"}
            response = client.post("/v1/models/spiral/energy", content=body, headers=headers)
    finally:
        done.set()
        poller.join()
    assert response.status_code == 413, response.text
    assert "3600000 rows" in response.json()["error"]["message"]
    assert polls > 10
    # Parsed on the event loop this was 2.4 s; the bar (250 ms) is measured by
    # tests/bench/bench_large_body.py on a quiet machine, this bound holds on a busy one.
    assert slowest < 1.0, f"/healthz took {slowest:.3f} s while the body was parsed"


@pytest.fixture(scope="module")
def offloading(server_factory: Callable[..., Server]) -> Server:
    """A server that parses every body but the smallest in the helper process."""
    return server_factory(SHIPPED_MODELS, EBM_PARSE_OFFLOAD_BYTES="1")


CASES: list[tuple[str, dict[str, Any]]] = [
    ("car/energy", {"x": [[0.2, 20.0, 10.0]] * 3, "y": [[20.0, 2.5]] * 3, "grad": True}),
    ("digits/energy", {"x": [[[1.0] * 8] * 8], "y": [[3]]}),
    ("digits/energy", {"x": [[[1.0] * 8] * 8], "y": [[3.5]]}),
    ("car/predict", {"x": [[0.2, 20.0, 10.0]], "k": 2, "seed": 0}),
    ("ellipse/sample", {"n": 4, "seed": 1}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [[20.0, 2.5, 1.0]]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [["a", "b"]]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [[True, False]]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [[1.0, 2.0], [1.0]]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [20.0, 2.5]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": []}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [[1e39, 0.0]]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": {"rows": 1}}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]], "y": [[20.0, 2.5]], "junk": [[1]]}),
    ("digits-inpaint/predict", {"y_known": [[0.0] * 64], "y_mask": [[True] * 32 + [False] * 32]}),
    ("digits-inpaint/predict", {"y_known": [[0.0] * 64], "y_mask": [[1] * 64]}),
    ("car/energy", {"x": [[0.2, 20.0, 10.0]] * 9000, "y": [[20.0, 2.5]] * 9000}),
]


@pytest.mark.parametrize(("path", "body"), CASES)
def test_a_body_parsed_in_the_helper_gets_the_same_answer(
    server: Server, offloading: Server, path: str, body: dict[str, Any]
) -> None:
    inline = post(server, path, body)
    offloaded = post(offloading, path, body)
    assert offloaded.status_code == inline.status_code, (inline.text, offloaded.text)
    if inline.status_code == 200:
        assert drop_timing(offloaded.json()) == drop_timing(inline.json())
    else:
        assert offloaded.json()["error"]["type"] == inline.json()["error"]["type"]
        assert offloaded.json()["error"]["message"].split(" ")[0] in inline.text


def test_malformed_json_is_a_400_either_way(offloading: Server) -> None:
    with offloading.client() as client:
        response = client.post(
            "/v1/models/car/energy",
            content=b'{"y": [[1, NaN]]}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert "NaN and Infinity are not JSON" in response.json()["error"]["message"]


def post(server: Server, path: str, body: dict[str, Any]) -> httpx.Response:
    with server.client(timeout=60) as client:
        return client.post(f"/v1/models/{path}", json=body)


def drop_timing(answer: dict[str, Any]) -> dict[str, Any]:
    stats = answer.get("stats")
    if isinstance(stats, dict):
        answer["stats"] = {k: v for k, v in stats.items() if not k.endswith("_ms")}
    return answer
