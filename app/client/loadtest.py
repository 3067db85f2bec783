"""Lean HTTP/1.1 load generator for benchmarking a JSON HTTP service.

The benchmark machine has two cores shared by the service and the load generator, so
the generator has to stay cheap: a general-purpose client such as httpx spends about
1.5 ms of CPU per request, which would cap (and distort) the numbers we want to read.
This module therefore uses only asyncio (on uvloop when it is importable): persistent
keep-alive connections, one coroutine per connection, a request encoded once up front,
and a small Protocol that frames each response with a handful of byte searches and
wakes the waiting coroutine once per response. The client costs about 40 us of CPU per
request against a local uvicorn server, about a third of it in socket system calls.

Only plain ``http://`` URLs are supported and only the host named in the URL is ever
contacted; redirects are not followed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import numpy as np

__all__ = [
    "CheckFn",
    "LoadResult",
    "ResponseError",
    "build_request",
    "main",
    "run_load",
    "run_load_sync",
]

CheckFn = Callable[[int, bytes], bool]

_CRLF = b"\r\n"
_HEAD_END = b"\r\n\r\n"
# Header names are searched for in the lower-cased head; the leading CRLF anchors the
# match at the start of a header line so a value can never be mistaken for a name.
_CONTENT_LENGTH = b"\r\ncontent-length:"
_TRANSFER_ENCODING = b"\r\ntransfer-encoding:"
_CONNECTION = b"\r\nconnection:"
_NO_BODY_STATUSES = frozenset({204, 304})
_MAX_HEAD = 1 << 16
# After a failed connect in duration mode, pause briefly so a dead server does not turn
# the generator into a busy loop that burns the CPU the service needs.
_RETRY_BACKOFF_S = 0.01


class ResponseError(ValueError):
    """The server sent something that is not a well-formed HTTP/1.x response."""


@dataclass(frozen=True)
class LoadResult:
    """Outcome of the measured phase of one load run."""

    requests: int  # completed requests (any status)
    errors: int  # non-2xx responses, failed checks, or connection failures
    status_counts: dict[int, int]
    duration_s: float  # wall time of the measured phase
    throughput_rps: float  # requests / duration_s
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    client_cpu_s: float  # process CPU time consumed during the measured phase
    client_cpu_us_per_request: float

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (status codes become string keys, as JSON needs)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput_rps,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p90": self.latency_ms_p90,
            "latency_ms_p99": self.latency_ms_p99,
            "latency_ms_mean": self.latency_ms_mean,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_us_per_request": self.client_cpu_us_per_request,
        }


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    path: str
    host_header: str


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials in the URL are not supported")
    host = parts.hostname
    if not host:
        raise ValueError(f"URL has no host: {url!r}")
    port = parts.port if parts.port is not None else 80
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    # IPv6 literals must keep their brackets inside the Host header.
    bracketed = f"[{host}]" if ":" in host else host
    host_header = bracketed if parts.port is None else f"{bracketed}:{port}"
    return _Target(host=host, port=port, path=path, host_header=host_header)


def _check_header_token(text: str) -> None:
    # A CR or LF would let a header smuggle extra lines into the request.
    if "\r" in text or "\n" in text:
        raise ValueError(f"header contains a line break: {text!r}")


def build_request(url: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    """Encode the complete POST request for ``url`` once, so each send is one write."""
    target = _parse_url(url)
    return _encode_request(target, body, headers)


def _encode_request(target: _Target, body: bytes, headers: dict[str, str] | None) -> bytes:
    merged: dict[str, tuple[str, str]] = {
        "host": ("Host", target.host_header),
        "content-type": ("Content-Type", "application/json"),
    }
    for name, value in (headers or {}).items():
        _check_header_token(name)
        _check_header_token(value)
        key = name.strip().lower()
        # The length is framing, computed from the body; letting a caller override it
        # would desynchronise the keep-alive connection.
        if key in ("content-length", "transfer-encoding"):
            raise ValueError(f"header {name!r} is set by the load generator")
        merged[key] = (name.strip(), value.strip())
    lines = [f"POST {target.path} HTTP/1.1"]
    lines.extend(f"{name}: {value}" for name, value in merged.values())
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return head.encode("latin-1") + body


# -------------------------------------------------------------------------- responses

# Body framing codes returned by _parse_head next to real (non-negative) lengths.
_CHUNKED = -1
_UNTIL_EOF = -2

# (status, body, keep_alive) of one complete response.
_Response = tuple[int, bytes, bool]


def _header_value(lower_head: bytes, marker: bytes) -> bytes | None:
    start = lower_head.find(marker)
    if start < 0:
        return None
    start += len(marker)
    # _parse_head is given the head including its final CRLF, so a line end exists.
    end = lower_head.find(_CRLF, start)
    return lower_head[start:end].strip()


def _parse_head(head: bytes) -> tuple[int, bool, int]:
    """Return ``(status, keep_alive, framing)`` for a response head.

    ``framing`` is the body length, ``_CHUNKED`` or ``_UNTIL_EOF``. The head is
    inspected with a few ``find`` calls instead of being split into header lines:
    response parsing is the main per-request CPU expense of the generator.
    """
    if head[:7] != b"HTTP/1." or head[8:9] != b" ":
        raise ResponseError(f"not an HTTP/1.x status line: {head[:40]!r}")
    try:
        status = int(head[9:12])
    except ValueError as exc:
        raise ResponseError(f"bad status code in {head[:40]!r}") from exc
    lower = head.lower()
    connection = _header_value(lower, _CONNECTION)
    if head[7:8] == b"0":
        keep_alive = connection is not None and b"keep-alive" in connection
    else:
        keep_alive = connection is None or b"close" not in connection
    if status < 200 or status in _NO_BODY_STATUSES:
        # 101 hands the socket to another protocol, so it can never be reused.
        return status, keep_alive and status != 101, 0
    encoding = _header_value(lower, _TRANSFER_ENCODING)
    if encoding is not None and b"chunked" in encoding:
        return status, keep_alive, _CHUNKED
    length = _header_value(lower, _CONTENT_LENGTH)
    if length is None:
        return status, False, _UNTIL_EOF
    try:
        size = int(length)
    except ValueError as exc:
        raise ResponseError(f"bad Content-Length {length!r}") from exc
    if size < 0:
        raise ResponseError(f"negative Content-Length {size}")
    return status, keep_alive, size


def _parse_chunked(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """Decode a chunked body starting at ``pos``; ``(body, end)`` or None if partial.

    It restarts from the first chunk on every call; chunked JSON responses are rare
    and small, so tracking partial progress is not worth the extra state.
    """
    parts: list[bytes] = []
    while True:
        eol = buf.find(_CRLF, pos)
        if eol < 0:
            return None
        try:
            # Chunk extensions, if any, follow a ';'.
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
        except ValueError as exc:
            raise ResponseError(f"bad chunk size line {buf[pos:eol]!r}") from exc
        pos = eol + 2
        if size == 0:
            # Skip optional trailer fields up to the terminating empty line.
            while True:
                eol = buf.find(_CRLF, pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return b"".join(parts), eol + 2
                pos = eol + 2
        end = pos + size
        if len(buf) < end + 2:
            return None
        if buf[end : end + 2] != _CRLF:
            raise ResponseError("chunk not terminated by CRLF")
        parts.append(buf[pos:end])
        pos = end + 2


class _ClientProtocol(asyncio.Protocol):
    """One keep-alive connection that frames responses straight from the socket.

    A Protocol instead of StreamReader: the stream wakes its reader for every TCP
    segment (uvicorn sends head and body separately) and copies data through several
    layers; here the waiting coroutine is woken once, when the response is complete.
    That roughly halves the client's CPU per request.
    """

    __slots__ = (
        "_body_start",
        "_buf",
        "_framing",
        "_keep_alive",
        "_loop",
        "_status",
        "closed",
        "transport",
        "waiter",
    )

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[_Response] | None = None
        self.closed = False
        self._buf = b""
        # _status is 0 while the head of the current response is still incomplete.
        self._status = 0
        self._keep_alive = True
        self._framing = 0
        self._body_start = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only look-alikes.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes) -> asyncio.Future[_Response]:
        """Write one request; the future resolves with its response."""
        assert self.transport is not None
        waiter = self._loop.create_future()
        self.waiter = waiter
        self.transport.write(request)
        return waiter

    def data_received(self, data: bytes) -> None:
        # bytes concatenation with an empty buffer returns ``data`` itself, so the
        # common single-segment response is never copied.
        self._buf += data
        if self.waiter is None:
            return
        try:
            response = self._advance()
        except ResponseError as exc:
            self._fail(exc)
            self.abort()
            return
        if response is not None:
            self._resolve(response)

    def eof_received(self) -> bool | None:
        if self._status and self._framing == _UNTIL_EOF:
            self._resolve((self._status, self._buf[self._body_start :], False))
            self._buf = b""
            self._status = 0
        return None  # let the transport close; connection_lost fails any waiter

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = ConnectionError("connection closed before the response completed")
        error.__cause__ = exc
        self._fail(error)

    def abort(self) -> None:
        # abort() rather than close(): never wait on a dead peer, and a pending request
        # fails at once, which is how the watchdog enforces timeouts.
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _resolve(self, response: _Response) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: Exception) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _advance(self) -> _Response | None:
        """Return the completed response, or None while more bytes are needed."""
        buf = self._buf
        while not self._status:
            end = buf.find(_HEAD_END)
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ResponseError("response head too large")
                return None
            status, keep_alive, framing = _parse_head(buf[: end + 2])
            if status < 200 and status != 101:
                # Interim 1xx responses precede the real one; drop them.
                buf = self._buf = buf[end + 4 :]
                continue
            self._status, self._keep_alive, self._framing = status, keep_alive, framing
            self._body_start = end + 4
        framing = self._framing
        start = self._body_start
        if framing >= 0:
            stop = start + framing
            if len(buf) < stop:
                return None
            body = buf[start:stop]
        elif framing == _CHUNKED:
            decoded = _parse_chunked(buf, start)
            if decoded is None:
                return None
            body, stop = decoded
        else:
            return None  # the body ends at EOF; see eof_received
        response = (self._status, body, self._keep_alive)
        self._buf = buf[stop:]
        self._status = 0
        return response


# ------------------------------------------------------------------------ connections


class _Conn:
    """A worker's connection slot; it survives reconnects.

    ``started_ns`` is the start of the in-flight request (0 when idle), which lets
    the watchdog spot requests that have run past the timeout.
    """

    __slots__ = ("proto", "started_ns")

    def __init__(self) -> None:
        self.proto: _ClientProtocol | None = None
        self.started_ns = 0

    async def open(self, target: _Target, timeout_s: float) -> _ClientProtocol:
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(_ClientProtocol, target.host, target.port),
            timeout_s,
        )
        self.proto = proto
        return proto

    def abort(self) -> None:
        proto, self.proto = self.proto, None
        if proto is not None:
            proto.abort()


class _Budget:
    """Hands out permission to start requests: a fixed count or until a deadline."""

    __slots__ = ("deadline", "remaining")

    def __init__(self, count: int | None, deadline: float | None) -> None:
        self.remaining = count
        self.deadline = deadline

    def take(self) -> bool:
        if self.deadline is not None:
            return time.perf_counter() < self.deadline
        if self.remaining is None or self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


@dataclass
class _Recorder:
    latencies_ns: list[int] = field(default_factory=list)
    status_counts: dict[int, int] = field(default_factory=dict)
    errors: int = 0


async def _worker(
    conn: _Conn,
    target: _Target,
    request: bytes,
    budget: _Budget,
    rec: _Recorder,
    check: CheckFn | None,
    timeout_s: float,
) -> None:
    # Hot loop: locals instead of attribute lookups, and no per-request timer handle
    # (timeouts are enforced by the shared watchdog instead of asyncio.wait_for).
    clock = time.perf_counter_ns
    latencies = rec.latencies_ns
    counts = rec.status_counts
    backoff = budget.deadline is not None
    while budget.take():
        start = clock()
        conn.started_ns = start
        try:
            proto = conn.proto
            if proto is None or proto.closed:
                proto = await conn.open(target, timeout_s)
            status, body, keep_alive = await proto.send(request)
        except (OSError, ValueError):
            # Connection refused/reset/timed out, or a malformed response.
            conn.started_ns = 0
            conn.abort()
            rec.errors += 1
            if backoff:
                await asyncio.sleep(_RETRY_BACKOFF_S)
            continue
        latencies.append(clock() - start)
        conn.started_ns = 0
        counts[status] = counts.get(status, 0) + 1
        if not 200 <= status < 300 or (check is not None and not check(status, body)):
            rec.errors += 1
        if not keep_alive:
            conn.abort()


async def _watchdog(conns: Sequence[_Conn], timeout_s: float) -> None:
    # One periodic sweep is far cheaper than arming a timer for every request.
    timeout_ns = int(timeout_s * 1e9)
    interval = min(max(timeout_s / 4, 0.005), 0.5)
    while True:
        await asyncio.sleep(interval)
        now = time.perf_counter_ns()
        for conn in conns:
            if conn.started_ns and now - conn.started_ns > timeout_ns:
                conn.started_ns = 0
                conn.abort()


async def _run_phase(
    conns: Sequence[_Conn],
    target: _Target,
    request: bytes,
    budget: _Budget,
    check: CheckFn | None,
    timeout_s: float,
) -> _Recorder:
    rec = _Recorder()
    tasks = [
        asyncio.ensure_future(_worker(conn, target, request, budget, rec, check, timeout_s))
        for conn in conns
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        # If one worker raised (say, a user check), gather leaves the others running;
        # they must not keep reconnecting after run_load has given up.
        for task in tasks:
            task.cancel()
    return rec


async def _preconnect(conns: Sequence[_Conn], target: _Target, timeout_s: float) -> None:
    # Connect outside the measured phase; failures are retried (and counted) by workers.
    results = await asyncio.gather(
        *(conn.open(target, timeout_s) for conn in conns), return_exceptions=True
    )
    for conn, result in zip(conns, results, strict=True):
        if isinstance(result, BaseException):
            conn.abort()


# -------------------------------------------------------------------------- reporting


def _summarize(rec: _Recorder, duration_s: float, cpu_s: float) -> LoadResult:
    completed = len(rec.latencies_ns)
    if completed:
        lat_ms = np.asarray(rec.latencies_ns, dtype=np.float64) / 1e6
        p50, p90, p99 = (float(v) for v in np.percentile(lat_ms, [50.0, 90.0, 99.0]))
        mean = float(lat_ms.mean())
    else:
        p50 = p90 = p99 = mean = 0.0
    return LoadResult(
        requests=completed,
        errors=rec.errors,
        status_counts=dict(sorted(rec.status_counts.items())),
        duration_s=duration_s,
        throughput_rps=completed / duration_s if duration_s > 0 else 0.0,
        latency_ms_p50=p50,
        latency_ms_p90=p90,
        latency_ms_p99=p99,
        latency_ms_mean=mean,
        client_cpu_s=cpu_s,
        client_cpu_us_per_request=cpu_s * 1e6 / completed if completed else 0.0,
    )


def _validate(
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup_requests: int,
    timeout_s: float,
) -> None:
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    if requests is not None and requests < 1:
        raise ValueError("requests must be >= 1")
    if duration_s is not None and not duration_s > 0:
        raise ValueError("duration_s must be > 0")
    if warmup_requests < 0:
        raise ValueError("warmup_requests must be >= 0")
    if not timeout_s > 0:
        raise ValueError("timeout_s must be > 0")


# ------------------------------------------------------------------------- public API


async def run_load(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    check: CheckFn | None = None,
) -> LoadResult:
    """POST ``body`` to ``url`` over ``concurrency`` keep-alive connections.

    Exactly one of ``requests`` (total across connections) or ``duration_s`` (no new
    request starts after it; in-flight ones finish) bounds the measured phase. Warm-up
    requests go first over the same connections and are not recorded. A failed
    connection attempt counts as an error and uses up one request of the budget, but
    is not a completed request.
    """
    _validate(concurrency, requests, duration_s, warmup_requests, timeout_s)
    target = _parse_url(url)
    request = _encode_request(target, body, headers)
    # More connections than requests would only add idle sockets.
    n_conns = concurrency if requests is None else min(concurrency, requests)
    conns = [_Conn() for _ in range(n_conns)]
    watchdog = asyncio.ensure_future(_watchdog(conns, timeout_s))
    try:
        await _preconnect(conns, target, timeout_s)
        if warmup_requests:
            warm = _Budget(warmup_requests, None)
            await _run_phase(conns, target, request, warm, check, timeout_s)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = None if duration_s is None else t0 + duration_s
        budget = _Budget(requests, deadline)
        rec = await _run_phase(conns, target, request, budget, check, timeout_s)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        watchdog.cancel()
        for conn in conns:
            conn.abort()
    return _summarize(rec, elapsed, cpu)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_load_sync(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
    check: CheckFn | None = None,
) -> LoadResult:
    """Run :func:`run_load` on a fresh event loop (uvloop when it is installed)."""
    coro = run_load(
        url,
        body,
        concurrency=concurrency,
        requests=requests,
        duration_s=duration_s,
        warmup_requests=warmup_requests,
        headers=headers,
        timeout_s=timeout_s,
        check=check,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


# ------------------------------------------------------------------------------- CLI


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected K:V, got {text!r}")
    return name.strip(), value.strip()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m app.client.loadtest",
        description="Lean HTTP/1.1 keep-alive POST load generator.",
    )
    parser.add_argument("--url", required=True, help="http://host:port/path")
    body = parser.add_mutually_exclusive_group(required=True)
    body.add_argument("--body", help="request body (JSON text)")
    body.add_argument("--body-file", type=Path, help="file holding the request body")
    parser.add_argument("--concurrency", type=int, default=1, help="connections")
    bound = parser.add_mutually_exclusive_group(required=True)
    bound.add_argument("--requests", type=int, help="total measured requests")
    bound.add_argument("--duration", type=float, help="measured phase length (s)")
    parser.add_argument("--warmup", type=int, default=0, help="unrecorded requests")
    parser.add_argument("--header", type=_parse_header, action="append", default=[], metavar="K:V")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request (s)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _format_table(result: LoadResult) -> str:
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(result.status_counts.items()))
    rows = [
        ("requests", f"{result.requests}"),
        ("errors", f"{result.errors}"),
        ("status", statuses or "-"),
        ("duration", f"{result.duration_s:.3f} s"),
        ("throughput", f"{result.throughput_rps:.1f} req/s"),
        ("latency p50", f"{result.latency_ms_p50:.3f} ms"),
        ("latency p90", f"{result.latency_ms_p90:.3f} ms"),
        ("latency p99", f"{result.latency_ms_p99:.3f} ms"),
        ("latency mean", f"{result.latency_ms_mean:.3f} ms"),
        ("client cpu", f"{result.client_cpu_s:.3f} s"),
        ("cpu/request", f"{result.client_cpu_us_per_request:.1f} us"),
    ]
    return "\n".join(f"{name:<12} {value}" for name, value in rows)


def _dump_json(data: dict[str, object]) -> str:
    try:
        import orjson
    except ImportError:
        import json

        return json.dumps(data)
    return orjson.dumps(data).decode()


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns 1 when any request failed, else 0."""
    args = _build_parser().parse_args(argv)
    if args.body_file is not None:
        body = Path(args.body_file).read_bytes()
    else:
        body = str(args.body).encode()
    result = run_load_sync(
        args.url,
        body,
        concurrency=args.concurrency,
        requests=args.requests,
        duration_s=args.duration,
        warmup_requests=args.warmup,
        headers=dict(args.header) or None,
        timeout_s=args.timeout,
    )
    print(_dump_json(result.as_dict()) if args.json else _format_table(result))
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
