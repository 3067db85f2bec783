"""The energy endpoint against a real uvicorn server: happy paths and every bad-input class."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import numpy as np
import pytest

from tests.analytic import quad_energy, quad_grad
from tests.conftest import Server


def _post(server: Server, body: Any, name: str = "quad", **kwargs: Any) -> httpx.Response:
    with server.client() as client:
        return client.post(f"/v1/models/{name}/energy", json=body, **kwargs)


def test_energies_and_gradients_match_the_closed_form(server: Server) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 2)).astype(np.float32)
    y = rng.normal(size=(5, 2)).astype(np.float32)
    response = _post(server, {"x": x.tolist(), "y": y.tolist(), "grad": True})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "quad"
    assert body["version"] == 2
    np.testing.assert_allclose(body["energy"], quad_energy(x, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(body["grad_y"], quad_grad(x, y), rtol=1e-5, atol=1e-5)


def test_without_grad_there_is_no_gradient_and_version_is_honoured(server: Server) -> None:
    body = _post(server, {"x": [[0, 0]], "y": [[0.25, -1.0]], "version": 1}).json()
    assert body == {"model": "quad", "version": 1, "energy": [0.0]}


def test_concurrent_requests_each_get_their_own_rows(server: Server) -> None:
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=(int(n), 2)).astype(np.float32) for n in rng.integers(1, 9, 40)]

    async def fire() -> list[httpx.Response]:
        import asyncio

        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/models/quad/energy", json={"x": x.tolist(), "y": x.tolist()})
                    for x in xs
                )
            )

    import asyncio

    for x, response in zip(xs, asyncio.run(fire()), strict=True):
        assert response.status_code == 200
        np.testing.assert_allclose(response.json()["energy"], quad_energy(x, x), rtol=1e-5)


BAD_INPUTS: list[tuple[str, str, Any, int, str, str]] = [
    # (case, model, body, status, error type, message fragment)
    ("unknown model", "nope", {"x": [[0, 0]], "y": [[0, 0]]}, 404, "model_not_found", "quad"),
    (
        "unknown version",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0]], "version": 9},
        404,
        "version_not_found",
        "available versions: 1, 2",
    ),
    (
        "wrong shape",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0, 0]]},
        422,
        "invalid_input",
        "y has shape [1, 3]; model 'quad' expects [N, 2]",
    ),
    ("ragged", "quad", {"x": [[0, 0], [0]], "y": [[0, 0], [0, 0]]}, 422, "invalid_input", "ragged"),
    (
        "string dtype",
        "quad",
        {"x": [["a", 0]], "y": [[0, 0]]},
        422,
        "invalid_input",
        "only numbers, got strings",
    ),
    ("bool dtype", "quad", {"x": [[True, 0]], "y": [[0, 0]]}, 422, "invalid_input", "booleans"),
    ("null", "quad", {"x": [[None, 0]], "y": [[0, 0]]}, 422, "invalid_input", "nulls"),
    ("x not a list", "quad", {"x": 3, "y": [[0, 0]]}, 422, "invalid_request", "x:"),
    (
        "too many rows",
        "quad",
        {"x": [[0, 0]] * 65, "y": [[0, 0]] * 65},
        413,
        "payload_too_large",
        "65 rows; model 'quad' accepts at most 64",
    ),
    ("missing y", "quad", {"x": [[0, 0]]}, 422, "invalid_request", "y: field required"),
    ("missing x", "quad", {"y": [[0, 0]]}, 422, "invalid_input", "needs x"),
    (
        "unknown field",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0]], "grads": True},
        422,
        "invalid_request",
        "grads: unknown field",
    ),
    (
        "bad grad type",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0]], "grad": "yes"},
        422,
        "invalid_request",
        "grad:",
    ),
    (
        "latent for non-latent",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0]], "z": [[0]]},
        422,
        "invalid_input",
        "no latent variable",
    ),
    (
        "row mismatch",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0], [1, 1]]},
        422,
        "invalid_input",
        "x has 1, y has 2 rows",
    ),
    ("body not an object", "quad", [1, 2], 422, "invalid_request", "body"),
    (
        "negative deadline",
        "quad",
        {"x": [[0, 0]], "y": [[0, 0]], "deadline_ms": -1},
        422,
        "invalid_request",
        "deadline_ms",
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "status", "error_type", "fragment"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_gets_a_documented_4xx(
    server: Server, model: str, body: Any, status: int, error_type: str, fragment: str
) -> None:
    response = _post(server, body, name=model)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(response.json()) == {"error"}
    assert error["type"] == error_type
    assert fragment in error["message"]


RAW_BODIES = [
    ("malformed json", b'{"x": [[0, 0]], "y": [[0,', 400, "invalid_json"),
    ("nan literal", b'{"x": [[0, 0]], "y": [[NaN, 0]]}', 400, "invalid_json"),
    ("infinity literal", b'{"x": [[0, 0]], "y": [[-Infinity, 0]]}', 400, "invalid_json"),
    ("beyond double", b'{"x": [[0, 0]], "y": [[1e400, 0]]}', 400, "invalid_json"),
    ("beyond float32", b'{"x": [[0, 0]], "y": [[1e39, 0]]}', 422, "invalid_input"),
    ("empty body", b"", 422, "invalid_request"),
]


@pytest.mark.parametrize(
    ("raw", "status", "error_type"),
    [case[1:] for case in RAW_BODIES],
    ids=[case[0] for case in RAW_BODIES],
)
def test_bad_raw_body_gets_a_documented_4xx(
    server: Server, raw: bytes, status: int, error_type: str
) -> None:
    with server.client() as client:
        response = client.post(
            "/v1/models/quad/energy", content=raw, headers={"content-type": "application/json"}
        )
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type


def test_a_json_body_sent_without_its_content_type_says_so(server: Server) -> None:
    body = b'{"x": [[0, 0]], "y": [[0, 0]]}'
    for headers in ({}, {"content-type": "application/x-www-form-urlencoded"}):
        with server.client() as client:
            response = client.post("/v1/models/quad/energy", content=body, headers=headers)
        assert response.status_code == 422
        assert "Content-Type: application/json" in response.json()["error"]["message"]


def _read_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += sock.recv(65536)
    return (head + b"\r\n\r\n" + body).decode()


def test_declared_oversized_body_is_413_before_it_is_sent(server: Server) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/quad/energy HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{"
        )
        reply = _read_response(sock)
    assert reply.startswith("HTTP/1.1 413")
    assert '"type":"payload_too_large"' in reply
    assert "the limit is 67108864" in reply


def test_unknown_route_and_method_use_the_error_format(server: Server) -> None:
    with server.client() as client:
        missing = client.get("/v1/nothing")
        wrong_method = client.get("/v1/models/quad/energy")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "method_not_allowed"


def test_server_keeps_serving_after_every_bad_input(server: Server) -> None:
    for _, model, body, *_ in BAD_INPUTS:
        _post(server, body, name=model)
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        ok = client.post("/v1/models/quad/energy", json={"x": [[0, 0]], "y": [[0.25, -1]]})
    assert ok.status_code == 200
    assert ok.json()["energy"] == [0.0]
    assert "Traceback" not in server.log_text()
