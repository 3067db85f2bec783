"""uvicorn's HTTP protocols, with its own 400 in the service's error envelope.

A request uvicorn cannot parse (a request line or headers over its parser's limits, such
as a 100,000-character model name, or malformed syntax) never reaches the app: uvicorn
answers it itself with a plain-text 400. These subclasses answer it as every other error:
``{"error": {"type": "invalid_http", "message": ...}}``.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

MESSAGE = (
    "the request is not valid HTTP/1.1, or its request line or headers are longer than "
    "this server accepts; uvicorn said: {}"
)


def _write_400(transport: Any, default_headers: list[tuple[bytes, bytes]], msg: str) -> None:
    body = orjson.dumps({"error": {"type": "invalid_http", "message": MESSAGE.format(msg)}})
    lines = [b"HTTP/1.1 400 Bad Request\r\n"]
    lines += [name + b": " + value + b"\r\n" for name, value in default_headers]
    lines += [
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"connection: close\r\n\r\n",
        body,
    ]
    transport.write(b"".join(lines))
    transport.close()


class JsonErrorsH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        _write_400(self.transport, self.server_state.default_headers, msg)


def http_protocol() -> type[Any]:
    """httptools' protocol when installed (uvicorn[standard]; faster), else h11's."""
    if importlib.util.find_spec("httptools"):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        class JsonErrorsHttpToolsProtocol(HttpToolsProtocol):
            def send_400_response(self, msg: str) -> None:
                _write_400(self.transport, self.server_state.default_headers, msg)

        return JsonErrorsHttpToolsProtocol
    return JsonErrorsH11Protocol
