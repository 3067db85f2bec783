"""The binary transport over a real server: msgpack bodies in (tensor maps or arrays),
msgpack replies out, the same numbers as JSON, and every error in its envelope."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import numpy as np
import pytest

from app.binary import MSGPACK, pack, unpack
from tests.conftest import Server

BOTH = {"content-type": MSGPACK, "accept": MSGPACK}
X = np.array([[0.2, 20.0, 10.0], [0.5, 15.0, 8.0]], np.float32)
Y = np.array([[20.0, 2.0], [15.0, -2.0]], np.float32)


def send(server: Server, path: str, body: Any, headers: dict[str, str]) -> httpx.Response:
    with server.client() as client:
        return client.post(path, content=pack(body), headers=headers)


def test_energies_and_gradients_equal_json_bit_for_bit(server: Server) -> None:
    with server.client() as client:
        body = {"x": X.tolist(), "y": Y.tolist(), "grad": True}
        as_json = client.post("/v1/models/car/energy", json=body).json()
    response = send(server, "/v1/models/car/energy", {"x": X, "y": Y, "grad": True}, BOTH)
    assert response.status_code == 200, response.content
    assert response.headers["content-type"] == MSGPACK
    answer = unpack(response.content)
    assert answer["energy"].dtype == np.float32
    assert answer["energy"].tobytes() == np.array(as_json["energy"], np.float32).tobytes()
    assert answer["grad_y"].tobytes() == np.array(as_json["grad_y"], np.float32).tobytes()


def test_tensor_maps_of_other_dtypes_and_plain_arrays_are_accepted(server: Server) -> None:
    bodies = [
        {"x": X.astype(np.float64), "y": Y.astype(np.float16)},
        {"x": X.tolist(), "y": Y.astype(np.int32)},  # nested msgpack arrays work as in JSON
    ]
    for body in bodies:
        response = send(server, "/v1/models/car/energy", body, BOTH)
        assert response.status_code == 200, unpack(response.content)
        assert unpack(response.content)["energy"].shape == (2,)


def test_the_alias_type_and_a_json_reply_by_default(server: Server) -> None:
    body = {"x": X, "y": Y}
    response = send(
        server, "/v1/models/car/energy", body, {"content-type": "application/x-msgpack"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"  # nobody asked for msgpack
    assert len(response.json()["energy"]) == 2
    # and a JSON request may ask for a msgpack reply
    with server.client() as client:
        reply = client.post(
            "/v1/models/car/energy",
            json={"x": X.tolist(), "y": Y.tolist()},
            headers={"accept": "application/x-msgpack"},
        )
    assert reply.headers["content-type"] == MSGPACK
    assert unpack(reply.content)["energy"].shape == (2,)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/car/predict", {"x": X[:1], "seed": 0, "k": 2}),
        ("/v1/models/ellipse/sample", {"n": 3, "seed": 0}),
        ("/v1/models/mixture/energy", {"y": Y, "free_energy": "marginal"}),
    ],
)
def test_searches_samples_and_free_energies_answer_as_over_json(
    server: Server, path: str, body: dict[str, Any]
) -> None:
    as_msgpack = send(server, path, body, BOTH)
    assert as_msgpack.status_code == 200, unpack(as_msgpack.content)
    plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in body.items()}
    with server.client() as client:
        as_json = client.post(path, json=plain).json()
    decoded = unpack(as_msgpack.content)
    for key in as_json:
        if key != "stats":  # (timings)
            assert _same(decoded[key], as_json[key]), key


def _same(binary: Any, text: Any) -> bool:
    """Equal as float32 (JSON writes a float32 as its shortest decimal, not as a double)."""
    if isinstance(binary, np.ndarray):
        binary = binary.tolist()
    if isinstance(binary, dict):
        return binary.keys() == text.keys() and all(_same(binary[k], text[k]) for k in text)
    if isinstance(binary, list):
        return len(binary) == len(text) and all(map(_same, binary, text))
    if isinstance(binary, float | int) and not isinstance(binary, bool):
        return bool(np.float32(binary) == np.float32(text))
    return bool(binary == text)


def test_metadata_routes_answer_in_msgpack(server: Server) -> None:
    with server.client() as client:
        listing = client.get("/v1/models", headers={"accept": MSGPACK})
        one = client.get("/v1/models/car", headers={"accept": MSGPACK})
    assert listing.headers["content-type"] == MSGPACK
    assert "car" in [m["name"] for m in unpack(listing.content)["models"]]
    assert unpack(one.content)["name"] == "car"


@pytest.mark.parametrize(
    ("body", "status", "error_type", "says"),
    [
        (b"\xc1\xc1", 400, "invalid_msgpack", "not valid msgpack"),
        (pack([1, 2]), 422, "invalid_request", ""),
        (
            pack({"x": X, "y": {"dtype": "complex64", "shape": [2, 2], "data": b"0" * 32}}),
            422,
            "invalid_input",
            "y is a tensor map of dtype 'complex64'; allowed: float16",
        ),
        (
            pack({"x": X, "y": {"dtype": "float32", "shape": [2, 2], "data": b"0" * 8}}),
            422,
            "invalid_input",
            "needs 16 bytes of data; it has 8",
        ),
        (pack({"x": X, "y": np.zeros((2, 5), np.float32)}), 422, "invalid_input", "expects [N, 2]"),
        (
            pack({"x": X, "y": np.full((2, 2), 1e300)}),
            422,
            "invalid_input",
            "y row 0 holds NaN, Infinity or a value beyond float32 range",
        ),
        (pack({"x": X, "y": Y, "seed": "one"}), 422, "invalid_request", "seed"),
    ],
)
def test_bad_msgpack_bodies_get_the_error_envelope_in_msgpack(
    server: Server, body: bytes, status: int, error_type: str, says: str
) -> None:
    with server.client() as client:
        response = client.post("/v1/models/car/energy", content=body, headers=BOTH)
    assert response.status_code == status, unpack(response.content)
    assert response.headers["content-type"] == MSGPACK
    error = unpack(response.content)["error"]
    assert error["type"] == error_type
    assert says in error["message"]
    ok = send(server, "/v1/models/car/energy", {"x": X, "y": Y}, BOTH)
    assert ok.status_code == 200  # still serving


def test_the_middlewares_refusals_follow_accept_too(server: Server) -> None:
    """A body declared over the limit is refused by a middleware before any route runs."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/models/car/energy HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/msgpack\r\nAccept: application/msgpack\r\n"
            b"Content-Length: 1073741824\r\n\r\n\x80"
        )
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413")
    assert b"content-type: application/msgpack" in head.lower()
    assert unpack(body)["error"]["type"] == "payload_too_large"
    with server.client() as client:
        missing = client.get("/v1/nothing-here", headers={"accept": MSGPACK})
    assert missing.status_code == 404
    assert unpack(missing.content)["error"]["type"] == "not_found"
