"""Defects a fuzzer and careless clients found (issue 9), each kept closed by a test that
failed on the main they were found on."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server


def post(server: Server, path: str, body: Any) -> httpx.Response:
    with server.client() as client:
        return client.post(path, json=body)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # an energy that overflows float32 came back as null in a 200
        ("/v1/models/spiral/energy", {"y": [[1e20, 0.0]]}),
        ("/v1/models/car/energy", {"x": [[0.0, 20.0, 10.0]], "y": [[3e38, 3e38]], "grad": True}),
        ("/v1/models/ellipse/energy", {"y": [[1e20, 0.0]], "z": [[0.5]]}),
        ("/v1/models/mixture/energy", {"y": [[1e20, 0.0]], "free_energy": "min"}),
        ("/v1/models/mixture/energy", {"y": [[1e20, 0.0]], "free_energy": "marginal"}),
        ("/v1/models/ellipse/energy", {"y": [[1e20, 0.0]], "free_energy": "marginal"}),
        # ... and a free-energy search with no finite candidate was a 500 (IndexError)
        ("/v1/models/ellipse/energy", {"y": [[1e20, 0.0]], "free_energy": "min"}),
    ],
)
def test_an_energy_that_overflows_float32_is_a_clear_422_never_null(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    response = post(server, path, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_input"
    assert "row 0" in error["message"]
    assert "not finite" in error["message"]
    # a finite row in the same model still scores
    ok = post(server, path, {**body, "y": [[0.5, 0.5]]})
    assert ok.status_code == 200, ok.text
    assert None not in ok.json()["energy"]


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(server: Server) -> None:
    """Content-Length bodies over EBM_MAX_BODY_BYTES (64 MiB) got 413; a chunked one was
    read and parsed whole."""
    host, port = server.url.removeprefix("http://").split(":")
    chunk = b"[" + b"0," * (1 << 19) + b"0]"  # ~1 MiB of a JSON array
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/models/spiral/energy HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        try:
            while sent < 70 * 1024 * 1024:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed while we were still sending
            pass
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in reply
    assert sent < 70 * 1024 * 1024 or b"67108864" in reply
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


DIGIT = [[float((r * 8 + c) % 17) for c in range(8)] for r in range(8)]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/models/digits/energy", {"x": [DIGIT], "y": [[3]], "grad": True}, "grad"),
        ("/v1/models/car/energy", {"x": [[0.0, 20.0, 10.0]], "y": [[20, 2]], "seed": 3}, "seed"),
        (
            "/v1/models/ellipse/energy",
            {"y": [[0.5, 0.6]], "free_energy": "min", "num_samples": 16},
            "num_samples",
        ),
        (
            "/v1/models/mixture/energy",
            {"y": [[0.5, 0.6]], "free_energy": "min", "beta": 2.0},
            "beta",
        ),
        ("/v1/models/ellipse/sample", {"n": 4, "temperature": 0.5}, "temperature"),
        ("/v1/models/ellipse/sample", {"n": 4, "steps": 50}, "steps"),
        ("/v1/models/digits/predict", {"x": [DIGIT], "k": 11}, "k"),
        ("/v1/models/digits/predict", {"x": [DIGIT], "num_starts": 5}, "num_starts"),
        (
            "/v1/models/car/predict",
            {"x": [[0.0, 20.0, 10.0]], "method": "gd", "noise_scale": 0.5},
            "noise_scale",
        ),
    ],
)
def test_a_field_that_does_not_apply_is_a_422_naming_it(
    server: Server, path: str, body: dict[str, Any], field: str
) -> None:
    response = post(server, path, body)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert f"{field}: " in message
    # the same request without the field is served
    del body[field]
    assert post(server, path, body).status_code == 200


def test_fields_at_their_defaults_are_accepted(server: Server) -> None:
    body = {"x": [DIGIT], "y": [[3]], "grad": False, "seed": None}
    assert post(server, "/v1/models/digits/energy", body).status_code == 200
    assert post(server, "/v1/models/ellipse/sample", {"n": 2, "thin": 1}).status_code == 200


def _raw(server: Server, request: bytes) -> bytes:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if b"\r\n\r\n" in reply and b'"}}' in reply:
                break
        return reply


def test_a_request_uvicorn_cannot_parse_still_gets_the_error_envelope(server: Server) -> None:
    reply = _raw(server, b"GET /v1/models/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/json" in head
    assert b'"type":"invalid_http"' in body
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_a_long_model_name_is_not_echoed_whole(server: Server) -> None:
    response = httpx.get(f"{server.url}/v1/models/{'a' * 1000}", timeout=10)
    assert response.status_code == 404
    message = response.json()["error"]["message"]
    assert len(message) < 400
    assert "1000 characters" in message


def test_405_says_which_methods_are_allowed(server: Server) -> None:
    response = httpx.get(f"{server.url}/v1/models/car/energy", timeout=10)
    assert response.status_code == 405
    message = response.json()["error"]["message"]
    assert "GET" in message
    assert "allowed: POST" in message


def test_an_object_where_a_row_belongs_is_named_an_object(server: Server) -> None:
    body = {"x": [[0.0, 20.0, 10.0]], "y": [{"a": 1}]}
    response = post(server, "/v1/models/car/energy", body)
    assert response.status_code == 422
    message = response.json()["error"]["message"]
    assert "objects" in message
    assert "strings" not in message


@pytest.mark.parametrize("op", ["predict", "sample"])
def test_a_search_from_an_x_outside_the_trained_range_is_refused(server: Server, op: str) -> None:
    response = post(server, f"/v1/models/car/{op}", {"x": [[0.0, 20.0, 10.0], [50, 200, -10]]})
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert "x row 1 component 0" in message
    assert "outside the bounds [-1, 1]" in message


def test_scoring_an_x_outside_the_trained_range_is_legitimate(server: Server) -> None:
    body = {"x": [[50.0, 200.0, -10.0]], "y": [[20.0, 2.0]]}
    response = post(server, "/v1/models/car/energy", body)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def patient_server(server_factory: Callable[..., Server], serving_models: Path) -> Server:
    """The shipped models with a compute limit far above any deadline here, so a test about
    the deadline is never refused by the measured-cost limit on a slow machine (CI measured
    car at 2.53 us per evaluation, which put the search below just over 10 s)."""
    return server_factory(serving_models, EBM_MAX_SEARCH_SECONDS="600")


def test_merging_many_modes_still_answers_before_the_deadline(patient_server: Server) -> None:
    """The merge into modes is part of the deadline: 10 x with 4,096 starts, k 1000 and a
    tiny merge radius got 504 at 2 s (the same search without k answered partial at 1.8 s)."""
    x = [[-0.8 + 0.16 * i, 12.0 + i, 8.0] for i in range(10)]
    body = {"x": x, "num_starts": 4096, "k": 1000, "merge_radius": 1e-6, "deadline_ms": 2000}
    started = time.monotonic()
    response = post(patient_server, "/v1/models/car/predict", body)
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 2.2
    result = response.json()
    assert result["stats"]["partial"] is True
    assert len(result["predictions"]) == 10
    assert all(len(row) >= 1 for row in result["predictions"])


SHAPE = [[0.1 * i, -0.1 * i] for i in range(16)]


def test_a_search_is_bounded_by_its_measured_compute_time(server: Server) -> None:
    """shapes /predict on its allowed 4,096 rows was admitted (within the evaluation
    limit) and ran to the 30 s deadline; 60 rows took 6.9 s."""
    started = time.monotonic()
    response = post(server, "/v1/models/shapes/predict", {"x": [SHAPE] * 4096, "seed": 0})
    assert response.status_code == 413, response.text
    assert time.monotonic() - started < 5  # refused before any compute
    message = response.json()["error"]["message"]
    assert "would compute for about" in message
    assert "us each (model 'shapes', measured when it loaded)" in message
    assert "the limit is 10 s" in message
    # the same search on a few rows is admitted
    assert post(server, "/v1/models/shapes/predict", {"x": [SHAPE], "seed": 0}).status_code == 200


@pytest.mark.parametrize(
    ("path", "body", "says"),
    [
        # answered 200 after 10.5 s with a 32 MB body and left the process at 1.8 GB
        (
            "/v1/models/spiral/sample",
            {"n": 27022, "thin": 13, "step_size": 46889.9, "return_trajectory": True},
            "the response would hold 5,539,510 numbers (1 rows x 27022 samples, 27022 chains",
        ),
        # every start's path is kept while searching, though only k leave
        (
            "/v1/models/car/predict",
            {
                "x": [[0.0, 20.0, 9.0]] * 60,
                "num_starts": 4096,
                "steps": 20,
                "k": 1,
                "return_trajectory": True,
            },
            "return_trajectory would keep every candidate's path, 10,321,920 numbers",
        ),
    ],
)
def test_a_response_or_trajectory_over_the_size_limit_is_refused_before_compute(
    server: Server, path: str, body: dict[str, Any], says: str
) -> None:
    started = time.monotonic()
    response = post(server, path, body)
    assert response.status_code == 413, response.text
    assert time.monotonic() - started < 5
    message = response.json()["error"]["message"]
    assert says in message
    assert "EBM_MAX_RESPONSE_BYTES" in message
