"""Lean HTTP/1.1 load generator for benchmarking a JSON HTTP service.

The benchmark machine has two cores shared by the service and the load generator, so
the generator has to stay cheap: a general-purpose client such as httpx spends about
1.5 ms of CPU per request, which would cap (and distort) the numbers we want to read.
This module therefore uses only asyncio (on uvloop when it is importable): persistent
keep-alive connections, one coroutine per connection, a request encoded once up front,
and a small Protocol that frames each response with a handful of byte searches and
wakes the waiting coroutine once per response. Against a local uvicorn server the
client costs about 40-60 us of CPU per request, a third of it in socket system calls.

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

import numpy as np

from app.client.http1 import (
    Connection,
    ResponseError,
    Target,
    build_request,
    encode_request,
    parse_url,
)

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

# After a failed connect in duration mode, pause briefly so a dead server does not turn
# the generator into a busy loop that burns the CPU the service needs.
_RETRY_BACKOFF_S = 0.01


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
    conn: Connection,
    target: Target,
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


async def _watchdog(conns: Sequence[Connection], timeout_s: float) -> None:
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
    conns: Sequence[Connection],
    target: Target,
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


async def _preconnect(conns: Sequence[Connection], target: Target, timeout_s: float) -> None:
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
    target = parse_url(url)
    request = encode_request(target, body, headers)
    # More connections than requests would only add idle sockets.
    n_conns = concurrency if requests is None else min(concurrency, requests)
    conns = [Connection() for _ in range(n_conns)]
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
