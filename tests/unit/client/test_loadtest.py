"""Tests for app.client.loadtest against a real HTTP server on 127.0.0.1.

The server is a small asyncio HTTP/1.1 implementation running on its own event loop in
a background thread, so each route can exercise one framing or failure mode exactly
(chunked bodies, split segments, Connection: close, bodies ending at EOF, hangs).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from app.client.loadtest import LoadResult, build_request, main, run_load_sync

BODY = b'{"speed_kmh": 80.0, "mass_kg": 1500.0}'


@dataclass
class _Seen:
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)
    connections: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class _TestServer:
    """HTTP/1.1 server on an ephemeral port whose behaviour is chosen by the path."""

    def __init__(self) -> None:
        self.seen = _Seen()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(5)
        self.port: int = self._server.sockets[0].getsockname()[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _start(self) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", 0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.seen.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.seen.requests.append((path, headers, body))
                n = self.seen.counters.get(path, 0) + 1
                self.seen.counters[path] = n
                if not await self._respond(path, n, body, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _respond(self, path: str, n: int, body: bytes, writer: asyncio.StreamWriter) -> bool:
        """Write the response for request number ``n`` on ``path``; False closes."""
        payload = b'{"n":%d,"echo":%s}' % (n, body)
        if path == "/hang":
            await asyncio.sleep(3600)
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for piece in (payload[:5], payload[5:]):
                writer.write(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
                # A separate flush per chunk so the client sees partial bodies.
                await writer.drain()
                await asyncio.sleep(0)
            # Last chunk, one trailer field, then the empty line ending the message.
            writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return True
        if path == "/trickle":
            # One byte per write: every parser state sees a partial buffer.
            message = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            message += b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
            for i in range(len(message)):
                writer.write(message[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0.0002)
            return True
        if path == "/eof":
            writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n")
            writer.write(payload)
            await writer.drain()
            return False
        if path == "/split":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(_head(200, len(payload)))
            await writer.drain()
            await asyncio.sleep(0.002)
            writer.write(payload)
            return True
        if path == "/close":
            writer.write(_head(200, len(payload), b"Connection: close\r\n") + payload)
            await writer.drain()
            return False
        if path == "/empty":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            return True
        status = 500 if path == "/flaky" and n % 4 == 0 else 200
        writer.write(_head(status, len(payload)) + payload)
        return True


def _head(status: int, length: int, extra: bytes = b"") -> bytes:
    reason = b"OK" if status == 200 else b"Internal Server Error"
    return b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n" % (
        status,
        reason,
        length,
        extra,
    )


@pytest.fixture
def server() -> Iterator[_TestServer]:
    srv = _TestServer()
    try:
        yield srv
    finally:
        srv.close()


def _echo_ok(status: int, body: bytes) -> bool:
    return bool(json.loads(body)["echo"] == json.loads(BODY)) and status == 200


def _assert_consistent(result: LoadResult) -> None:
    assert sum(result.status_counts.values()) == result.requests
    assert result.duration_s > 0
    assert result.throughput_rps == pytest.approx(result.requests / result.duration_s)
    assert result.latency_ms_p50 <= result.latency_ms_p90 <= result.latency_ms_p99


def test_counts_add_up_and_connections_are_reused(server: _TestServer) -> None:
    result = run_load_sync(server.url("/ok"), BODY, concurrency=8, requests=200)
    _assert_consistent(result)
    assert result.requests == 200
    assert result.errors == 0
    assert result.status_counts == {200: 200}
    assert len(server.seen.requests) == 200
    assert server.seen.connections == 8  # keep-alive: one connection per worker
    assert result.latency_ms_mean > 0


def test_request_bytes_and_headers_reach_the_server(server: _TestServer) -> None:
    run_load_sync(
        server.url("/ok?x=1"),
        BODY,
        concurrency=1,
        requests=1,
        headers={"X-Test": "yes"},
    )
    path, headers, body = server.seen.requests[0]
    assert path == "/ok?x=1"
    assert body == BODY
    assert headers["host"] == f"127.0.0.1:{server.port}"
    assert headers["content-type"] == "application/json"
    assert headers["x-test"] == "yes"


def test_server_errors_are_counted(server: _TestServer) -> None:
    result = run_load_sync(server.url("/flaky"), BODY, concurrency=8, requests=200)
    _assert_consistent(result)
    assert result.requests == 200
    assert result.status_counts == {200: 150, 500: 50}
    assert result.errors == 50


def test_failing_check_counts_as_error(server: _TestServer) -> None:
    def even_only(status: int, body: bytes) -> bool:
        return bool(json.loads(body)["n"] % 2 == 0)

    result = run_load_sync(server.url("/ok"), BODY, concurrency=4, requests=100, check=even_only)
    assert result.requests == 100
    assert result.status_counts == {200: 100}
    assert result.errors == 50


def test_chunked_responses_are_decoded(server: _TestServer) -> None:
    result = run_load_sync(server.url("/chunked"), BODY, concurrency=4, requests=40, check=_echo_ok)
    assert (result.requests, result.errors) == (40, 0)
    assert server.seen.connections == 4


def test_byte_by_byte_response_is_framed(server: _TestServer) -> None:
    result = run_load_sync(server.url("/trickle"), BODY, concurrency=2, requests=4, check=_echo_ok)
    assert (result.requests, result.errors) == (4, 0)
    assert server.seen.connections == 2


def test_interim_and_split_responses(server: _TestServer) -> None:
    result = run_load_sync(server.url("/split"), BODY, concurrency=2, requests=10, check=_echo_ok)
    assert (result.requests, result.errors) == (10, 0)


def test_connection_close_reconnects(server: _TestServer) -> None:
    result = run_load_sync(server.url("/close"), BODY, concurrency=2, requests=20, check=_echo_ok)
    assert (result.requests, result.errors) == (20, 0)
    assert server.seen.connections == 20


def test_body_until_eof_reconnects(server: _TestServer) -> None:
    result = run_load_sync(server.url("/eof"), BODY, concurrency=2, requests=6, check=_echo_ok)
    assert (result.requests, result.errors) == (6, 0)
    assert server.seen.connections == 6


def test_no_content_response(server: _TestServer) -> None:
    result = run_load_sync(server.url("/empty"), BODY, concurrency=2, requests=10)
    assert result.status_counts == {204: 10}
    assert result.errors == 0


def test_warmup_is_sent_but_not_recorded(server: _TestServer) -> None:
    result = run_load_sync(server.url("/ok"), BODY, concurrency=4, requests=20, warmup_requests=12)
    assert result.requests == 20
    assert len(server.seen.requests) == 32
    assert server.seen.connections == 4


def test_duration_mode_stops_by_itself(server: _TestServer) -> None:
    result = run_load_sync(server.url("/ok"), BODY, concurrency=4, duration_s=0.3)
    _assert_consistent(result)
    assert result.requests > 0
    assert result.errors == 0
    assert 0.3 <= result.duration_s < 2.0


def test_client_cpu_is_reported(server: _TestServer) -> None:
    result = run_load_sync(server.url("/ok"), BODY, concurrency=2, requests=100)
    assert result.client_cpu_s > 0
    assert result.client_cpu_us_per_request == pytest.approx(
        result.client_cpu_s * 1e6 / result.requests
    )
    as_dict = result.as_dict()
    assert as_dict["client_cpu_us_per_request"] == result.client_cpu_us_per_request
    assert as_dict["status_counts"] == {"200": 100}


def test_hanging_request_times_out(server: _TestServer) -> None:
    result = run_load_sync(server.url("/hang"), BODY, concurrency=1, requests=2, timeout_s=0.1)
    assert result.requests == 0
    assert result.errors == 2


def _unused_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_refused_connections_are_errors_and_bounded() -> None:
    url = f"http://127.0.0.1:{_unused_port()}/ok"
    result = run_load_sync(url, BODY, concurrency=2, requests=5, timeout_s=1.0)
    assert (result.requests, result.errors) == (0, 5)
    assert result.client_cpu_us_per_request == 0.0


@pytest.mark.parametrize(
    ("kwargs", "url", "message"),
    [
        ({"requests": 1, "duration_s": 1.0}, "http://127.0.0.1:1/", "exactly one"),
        ({}, "http://127.0.0.1:1/", "exactly one"),
        ({"requests": 0}, "http://127.0.0.1:1/", "requests must be"),
        ({"requests": 1}, "https://127.0.0.1:1/", "only http://"),
        ({"requests": 1, "headers": {"X-Bad": "a\r\nb: c"}}, "http://127.0.0.1:1/", "line break"),
        ({"requests": 1, "headers": {"Content-Length": "3"}}, "http://127.0.0.1:1/", "is set by"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs: dict[str, object], url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_load_sync(url, BODY, concurrency=1, **kwargs)  # type: ignore[arg-type]


def test_build_request_is_exact() -> None:
    request = build_request("http://localhost:8000/v1/x?q=2", b"{}", {"X-A": "b"})
    assert request == (
        b"POST /v1/x?q=2 HTTP/1.1\r\nHost: localhost:8000\r\n"
        b"Content-Type: application/json\r\nX-A: b\r\nContent-Length: 2\r\n\r\n{}"
    )


def test_cli_json_output(
    server: _TestServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body_file = tmp_path / "body.json"
    body_file.write_bytes(BODY)
    code = main(
        [
            "--url",
            server.url("/ok"),
            "--body",
            str(body_file),
            "--concurrency",
            "2",
            "--requests",
            "10",
            "--warmup",
            "2",
            "--header",
            "X-Test: cli",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)["points"][0]
    assert data["requests"] == 10
    assert data["status_counts"] == {"200": 10}
    assert server.seen.requests[-1][1]["x-test"] == "cli"


def test_cli_table_and_error_exit_code(
    server: _TestServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body_file = tmp_path / "body.json"
    body_file.write_bytes(BODY)
    argv = [
        "--url",
        server.url("/flaky"),
        "--body-file",
        str(body_file),
        "--requests",
        "8",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "throughput" in out
    assert "500: 2" in out


def test_raising_check_propagates_and_stops_workers(server: _TestServer) -> None:
    def explode(status: int, body: bytes) -> bool:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_load_sync(server.url("/ok"), BODY, concurrency=4, requests=1000, check=explode)
    # Every worker stops at its first response instead of draining the budget.
    assert len(server.seen.requests) <= 4
