"""``ebm loadtest``: a lean HTTP/1.1 load generator for the model endpoints.

The benchmark machine has two cores shared by the service and the load generator, so
the generator has to stay cheap: a general-purpose client such as httpx spends about
1.5 ms of CPU per request, which would cap (and distort) the numbers we want to read.
This module therefore uses only asyncio (on uvloop when it is importable): persistent
keep-alive connections, requests encoded once up front (a pool of bodies, cycled), and a
small Protocol (``app.client.http1``) that frames each response with a handful of byte
searches. Responses are never parsed; a probe may look at one in eight. Against a local
uvicorn server the client costs ~45 us of CPU per request in closed loop, 65-100 us
in open loop at 1,000 requests/s (where each arrival is a separate wake-up).

Two ways to offer load:

- closed loop (``concurrency``): that many connections, each sending its next request as
  soon as the previous answer arrives; one coroutine per connection.
- open loop (``rate``): Poisson arrivals at ``rate`` per second, each handed to an idle
  connection of at most ``concurrency``; an arrival that finds every one busy is dropped
  and counted, never queued (a queue in the client would hide the server's backlog).
  Requests are sent from the scheduler and finished by done-callbacks: no coroutine per
  request.

Only plain ``http://`` URLs are supported and only the host named in the URL is ever
contacted; redirects are not followed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.client.http1 import (
    Connection,
    Response,
    ResponseError,
    Target,
    build_request,
    encode_request,
    parse_url,
)

if TYPE_CHECKING:
    from app.client.report import Point

__all__ = [
    "CheckFn",
    "LoadResult",
    "LoadSpec",
    "ProbeFn",
    "ResponseError",
    "Tick",
    "add_arguments",
    "build_request",
    "main",
    "run",
    "run_load",
    "run_load_sync",
    "run_spec",
    "run_spec_sync",
]

CheckFn = Callable[[int, bytes], bool]
#: Sees the body of one 2xx response in ``PROBE_EVERY`` (so it may cost a few us).
ProbeFn = Callable[[bytes], None]
PROBE_EVERY = 8
_PROBE_MASK = PROBE_EVERY - 1

# After a failed connect in closed loop, pause briefly so a dead server does not turn
# the generator into a busy loop that burns the CPU the service needs.
_RETRY_BACKOFF_S = 0.01
# Timers on the event loop have a resolution of about 1 ms (uvloop rounds shorter
# sleeps to zero, which would spin): the open-loop scheduler sends every arrival due
# within this horizon at once, and counts one sent later than _LATE_S after its time
# as late (the client's own lag).
_EARLY_S = 0.001
_LATE_S = 0.002
_TICK_S = 0.25
_MAX_BURST = 32
_GAPS_CHUNK = 4096


@dataclass(frozen=True)
class Tick:
    """Progress of the measured phase, handed to ``on_tick`` every quarter second."""

    sent: int  # open loop: arrivals, dropped ones included
    errors: int
    elapsed_s: float


TickFn = Callable[[Tick], None]


@dataclass(frozen=True)
class LoadResult:
    """Outcome of the measured phase of one load run.

    ``sent`` = ``requests`` (answered, any status) + ``failed`` (no answer: refused,
    reset, timed out or malformed); ``errors`` = non-2xx answers + failed checks +
    ``failed``. Open loop: ``dropped`` arrivals found every connection busy and were not
    sent; ``late`` ones were sent more than 2 ms after their scheduled time.
    """

    requests: int  # completed requests (any status)
    errors: int  # non-2xx responses, failed checks, or connection failures
    status_counts: dict[int, int]
    duration_s: float  # wall time of the measured phase
    throughput_rps: float  # requests / duration_s
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_mean: float
    client_cpu_s: float  # process CPU time of the measured phase (progress bar excluded)
    client_cpu_us_per_request: float
    sent: int = 0
    failed: int = 0
    latency_ms_p95: float = 0.0
    latency_ms_max: float = 0.0
    concurrency: int = 0  # closed loop: connections; open loop: the cap on outstanding
    rate_rps: float | None = None  # open loop: the offered arrival rate
    dropped: int = 0
    late: int = 0

    @property
    def errors_by_status(self) -> dict[str, int]:
        """Non-2xx answers by status code, and ``no response`` for failed requests."""
        by_status = {str(k): v for k, v in self.status_counts.items() if not 200 <= k < 300}
        if self.failed:
            by_status["no response"] = self.failed
        return by_status

    def as_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict (status codes become string keys, as JSON needs)."""
        return {
            "concurrency": self.concurrency,
            "rate_rps": self.rate_rps,
            "sent": self.sent,
            "requests": self.requests,
            "errors": self.errors,
            "failed": self.failed,
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "errors_by_status": self.errors_by_status,
            "dropped": self.dropped,
            "late": self.late,
            "duration_s": self.duration_s,
            "throughput_rps": self.throughput_rps,
            "latency_ms_p50": self.latency_ms_p50,
            "latency_ms_p90": self.latency_ms_p90,
            "latency_ms_p95": self.latency_ms_p95,
            "latency_ms_p99": self.latency_ms_p99,
            "latency_ms_max": self.latency_ms_max,
            "latency_ms_mean": self.latency_ms_mean,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_us_per_request": self.client_cpu_us_per_request,
        }


@dataclass(frozen=True)
class LoadSpec:
    """One load run. At least one of ``max_requests`` and ``max_duration_s`` bounds it;
    whichever is reached first ends it (requests in flight then finish)."""

    url: str
    bodies: Sequence[bytes]  # cycled in order, one per request
    concurrency: int = 1
    rate: float | None = None  # requests/s, Poisson: open loop; None: closed loop
    max_requests: int | None = None  # sent (open loop: arrivals, dropped included)
    max_duration_s: float | None = None
    warmup_requests: int = 0  # closed loop on the same connections, not recorded
    headers: Mapping[str, str] | None = None
    timeout_s: float = 30.0
    check: CheckFn | None = None
    probe: ProbeFn | None = None
    on_tick: TickFn | None = None
    seed: int = 0  # open-loop arrival times


# --------------------------------------------------------------------------- requests


class _Budget:
    """Hands out permission to start requests: up to a count and before a deadline."""

    __slots__ = ("deadline", "remaining", "taken")

    def __init__(self, count: int | None, deadline: float | None) -> None:
        self.remaining = sys.maxsize if count is None else count
        self.deadline = deadline
        self.taken = 0

    def take(self) -> bool:
        if self.remaining <= 0:
            return False
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return False
        self.remaining -= 1
        self.taken += 1
        return True


@dataclass
class _Recorder:
    latencies_ns: list[int] = field(default_factory=list)
    status_counts: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    failed: int = 0
    sent: int = 0
    dropped: int = 0
    late: int = 0
    display_cpu_s: float = 0.0


async def _worker(
    conn: Connection,
    target: Target,
    next_request: Callable[[], bytes],
    budget: _Budget,
    rec: _Recorder,
    check: CheckFn | None,
    probe: ProbeFn | None,
    timeout_s: float,
) -> None:
    # Hot loop: locals instead of attribute lookups, and no per-request timer handle
    # (timeouts are enforced by the shared watchdog instead of asyncio.wait_for).
    clock = time.perf_counter_ns
    latencies = rec.latencies_ns
    counts = rec.status_counts
    backoff = budget.deadline is not None
    while budget.take():
        request = next_request()
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
            rec.failed += 1
            if backoff:
                await asyncio.sleep(_RETRY_BACKOFF_S)
            continue
        latencies.append(clock() - start)
        conn.started_ns = 0
        counts[status] = counts.get(status, 0) + 1
        if not 200 <= status < 300 or (check is not None and not check(status, body)):
            rec.errors += 1
        elif probe is not None and not len(latencies) & _PROBE_MASK:
            probe(body)
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


async def _ticker(rec: _Recorder, budget: _Budget, t0: float, on_tick: TickFn) -> None:
    # Progress is read from the counters a few times a second, so a progress bar costs
    # nothing per request. Its redraws (~0.5 ms each) are timed and left out of the
    # client's CPU figure, which is about the load engine.
    while True:
        await asyncio.sleep(_TICK_S)
        cpu0 = time.process_time()
        on_tick(Tick(budget.taken, rec.errors, time.perf_counter() - t0))
        rec.display_cpu_s += time.process_time() - cpu0


async def _run_closed(
    conns: Sequence[Connection],
    target: Target,
    next_request: Callable[[], bytes],
    budget: _Budget,
    rec: _Recorder,
    spec: LoadSpec,
) -> None:
    tasks = [
        asyncio.ensure_future(
            _worker(conn, target, next_request, budget, rec, spec.check, spec.probe, spec.timeout_s)
        )
        for conn in conns
    ]
    try:
        await asyncio.gather(*tasks)
    finally:
        # If one worker raised (say, a user check), gather leaves the others running;
        # they must not keep reconnecting after run_load has given up.
        for task in tasks:
            task.cancel()
    rec.sent = budget.taken


class _OpenLoop:
    """Sends arrivals on idle connections; a done-callback records each answer."""

    def __init__(
        self,
        conns: Sequence[Connection],
        target: Target,
        next_request: Callable[[], bytes],
        rec: _Recorder,
        spec: LoadSpec,
    ) -> None:
        self.idle = list(conns)
        self.size = len(conns)
        self.target = target
        self.next_request = next_request
        self.rec = rec
        self.spec = spec
        self.error: BaseException | None = None
        self.drained: asyncio.Event | None = None
        self._connecting: set[asyncio.Future[None]] = set()

    def dispatch(self) -> None:
        rec = self.rec
        if not self.idle:
            rec.dropped += 1
            return
        conn = self.idle.pop()
        request = self.next_request()
        rec.sent += 1
        start = time.perf_counter_ns()
        conn.started_ns = start
        proto = conn.proto
        if proto is None or proto.closed:
            # Reconnecting is the rare path (a closed or failed connection): a task,
            # held until done so it cannot be collected midway.
            task = asyncio.ensure_future(self._connect_and_send(conn, request, start))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
            return
        proto.send(request).add_done_callback(functools.partial(self._done, conn, start))

    async def _connect_and_send(self, conn: Connection, request: bytes, start: int) -> None:
        try:
            proto = await conn.open(self.target, self.spec.timeout_s)
        except (OSError, ValueError):
            self._failed(conn)
            return
        proto.send(request).add_done_callback(functools.partial(self._done, conn, start))

    def _done(self, conn: Connection, start: int, future: asyncio.Future[Response]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._failed(conn)
            return
        status, body, keep_alive = future.result()
        rec = self.rec
        latencies = rec.latencies_ns
        latencies.append(time.perf_counter_ns() - start)
        conn.started_ns = 0
        rec.status_counts[status] = rec.status_counts.get(status, 0) + 1
        check, probe = self.spec.check, self.spec.probe
        try:
            if not 200 <= status < 300 or (check is not None and not check(status, body)):
                rec.errors += 1
            elif probe is not None and not len(latencies) & _PROBE_MASK:
                probe(body)
        except Exception as exc:  # a user's check: re-raised by run() after the drain
            self.error = self.error or exc
        if not keep_alive:
            conn.abort()
        self._release(conn)

    def _failed(self, conn: Connection) -> None:
        conn.started_ns = 0
        conn.abort()  # reconnected when the next arrival takes this slot
        self.rec.errors += 1
        self.rec.failed += 1
        self._release(conn)

    def _release(self, conn: Connection) -> None:
        self.idle.append(conn)
        if self.drained is not None and len(self.idle) == self.size:
            self.drained.set()

    async def run(self, rate: float, budget: _Budget, seed: int) -> None:
        """Send Poisson arrivals until a bound, then wait for the answers in flight."""
        rng = np.random.default_rng(seed)
        gaps: Iterator[float] = iter(())
        clock = time.perf_counter
        due = clock()
        burst = 0
        while True:
            gap = next(gaps, None)
            if gap is None:
                gaps = iter(rng.exponential(1.0 / rate, _GAPS_CHUNK).tolist())
                continue
            due += gap
            if budget.deadline is not None and due >= budget.deadline:
                break
            now = clock()
            if due > now + _EARLY_S:
                await asyncio.sleep(due - now)
                now, burst = clock(), 0
            elif burst >= _MAX_BURST:
                # Behind schedule: let the answers in before sending more, or every
                # connection stays busy.
                await asyncio.sleep(0)
                now, burst = clock(), 0
            burst += 1
            if not budget.take() or self.error is not None:
                break
            if now - due > _LATE_S:
                self.rec.late += 1
            self.dispatch()
        # Requests in flight finish (the watchdog bounds them), as in closed loop.
        self.drained = asyncio.Event()
        if len(self.idle) < self.size:
            await self.drained.wait()
        if self.error is not None:
            raise self.error


async def _preconnect(conns: Sequence[Connection], target: Target, timeout_s: float) -> None:
    # Connect outside the measured phase; failures are retried (and counted) later.
    results = await asyncio.gather(
        *(conn.open(target, timeout_s) for conn in conns), return_exceptions=True
    )
    for conn, result in zip(conns, results, strict=True):
        if isinstance(result, BaseException):
            conn.abort()


# -------------------------------------------------------------------------- reporting


def _summarize(rec: _Recorder, duration_s: float, cpu_s: float, spec: LoadSpec) -> LoadResult:
    completed = len(rec.latencies_ns)
    if completed:
        lat_ms = np.asarray(rec.latencies_ns, dtype=np.float64) / 1e6
        p50, p90, p95, p99 = (float(v) for v in np.percentile(lat_ms, [50, 90, 95, 99]))
        mean, worst = float(lat_ms.mean()), float(lat_ms.max())
    else:
        p50 = p90 = p95 = p99 = mean = worst = 0.0
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
        sent=rec.sent,
        failed=rec.failed,
        latency_ms_p95=p95,
        latency_ms_max=worst,
        concurrency=spec.concurrency,
        rate_rps=spec.rate,
        dropped=rec.dropped,
        late=rec.late,
    )


def _validate_spec(spec: LoadSpec) -> None:
    if spec.concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    if not spec.bodies:
        raise ValueError("bodies must not be empty")
    if spec.max_requests is None and spec.max_duration_s is None:
        raise ValueError("give max_requests, max_duration_s or both: a run must be bounded")
    if spec.max_requests is not None and spec.max_requests < 1:
        raise ValueError("requests must be >= 1")
    if spec.max_duration_s is not None and not spec.max_duration_s > 0:
        raise ValueError("duration_s must be > 0")
    if spec.rate is not None and not spec.rate > 0:
        raise ValueError("rate must be > 0")
    if spec.warmup_requests < 0:
        raise ValueError("warmup_requests must be >= 0")
    if not spec.timeout_s > 0:
        raise ValueError("timeout_s must be > 0")


# ------------------------------------------------------------------------- public API


async def run_spec(spec: LoadSpec) -> LoadResult:
    """Run one load: pre-connect, warm up (not recorded), then the measured phase."""
    _validate_spec(spec)
    target = parse_url(spec.url)
    requests = [encode_request(target, body, spec.headers) for body in spec.bodies]
    next_request = itertools.cycle(requests).__next__
    # More connections than requests would only add idle sockets.
    n_conns = spec.concurrency
    if spec.max_requests is not None:
        n_conns = min(n_conns, spec.max_requests)
    conns = [Connection() for _ in range(n_conns)]
    watchdog = asyncio.ensure_future(_watchdog(conns, spec.timeout_s))
    ticker: asyncio.Future[None] | None = None
    try:
        await _preconnect(conns, target, spec.timeout_s)
        if spec.warmup_requests:
            warm = _Budget(spec.warmup_requests, None)
            await _run_closed(conns, target, next_request, warm, _Recorder(), spec)
        rec = _Recorder()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        deadline = None if spec.max_duration_s is None else t0 + spec.max_duration_s
        budget = _Budget(spec.max_requests, deadline)
        if spec.on_tick is not None:
            ticker = asyncio.ensure_future(_ticker(rec, budget, t0, spec.on_tick))
        if spec.rate is None:
            await _run_closed(conns, target, next_request, budget, rec, spec)
        else:
            await _OpenLoop(conns, target, next_request, rec, spec).run(
                spec.rate, budget, spec.seed
            )
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0 - rec.display_cpu_s
    finally:
        watchdog.cancel()
        if ticker is not None:
            ticker.cancel()
        for conn in conns:
            conn.abort()
    return _summarize(rec, elapsed, cpu, spec)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_spec_sync(spec: LoadSpec) -> LoadResult:
    """Run :func:`run_spec` on a fresh event loop (uvloop when it is installed)."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(run_spec(spec))


def _legacy_spec(
    url: str,
    body: bytes,
    concurrency: int,
    requests: int | None,
    duration_s: float | None,
    warmup_requests: int,
    headers: Mapping[str, str] | None,
    timeout_s: float,
    check: CheckFn | None,
) -> LoadSpec:
    if (requests is None) == (duration_s is None):
        raise ValueError("give exactly one of requests or duration_s")
    return LoadSpec(
        url=url,
        bodies=[body],
        concurrency=concurrency,
        max_requests=requests,
        max_duration_s=duration_s,
        warmup_requests=warmup_requests,
        headers=headers,
        timeout_s=timeout_s,
        check=check,
    )


async def run_load(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    check: CheckFn | None = None,
) -> LoadResult:
    """POST ``body`` to ``url`` over ``concurrency`` keep-alive connections (closed loop).

    Exactly one of ``requests`` (total across connections) or ``duration_s`` (no new
    request starts after it; in-flight ones finish) bounds the measured phase. Warm-up
    requests go first over the same connections and are not recorded. A failed
    connection attempt counts as an error and uses up one request of the budget, but
    is not a completed request. :func:`run_spec` takes both bounds, a pool of bodies
    and an open loop.
    """
    spec = _legacy_spec(
        url, body, concurrency, requests, duration_s, warmup_requests, headers, timeout_s, check
    )
    return await run_spec(spec)


def run_load_sync(
    url: str,
    body: bytes,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
    check: CheckFn | None = None,
) -> LoadResult:
    """Run :func:`run_load` on a fresh event loop (uvloop when it is installed)."""
    spec = _legacy_spec(
        url, body, concurrency, requests, duration_s, warmup_requests, headers, timeout_s, check
    )
    return run_spec_sync(spec)


# ------------------------------------------------------------------------------- CLI

# The bound a user leaves out (and both, if none is given): every run ends by itself.
DEFAULT_DURATION_S = 10.0
MAX_DURATION_S = 300.0
MAX_REQUESTS = 1_000_000

_DESCRIPTION = """\
Load-test a model endpoint of ebm-serve (or any JSON POST endpoint) over raw keep-alive
HTTP/1.1, cheaply enough that the client is not the bottleneck (45-100 us of its own CPU
per request). Request bodies are generated from the model's metadata (GET /v1/models/NAME):
valid shapes, values inside the declared bounds, seeded and varied across requests, a
pool encoded once before the run. A progress bar shows on stderr (when it is a terminal),
then a summary: throughput, p50/p90/p95/p99/max latency, errors by status, the mean
server-side batch (stats.coalesced_jobs of /predict and /sample) and the client's CPU
per request."""

_BOUNDS = textwrap.fill(
    "every run is bounded by time and by request count, whichever comes first: "
    f"--duration alone caps the requests at {MAX_REQUESTS:,}, --requests alone caps the "
    f"time at {MAX_DURATION_S:.0f} s, neither runs {DEFAULT_DURATION_S:.0f} s. With --sweep the "
    "bounds apply to each point. Warm-up requests (--warmup) run first on the same "
    "connections, not recorded.",
    88,
    initial_indent="  ",
    subsequent_indent="  ",
)

_EPILOG = f"""\
bounds:
{_BOUNDS}

closed and open loop:
  closed loop (--concurrency C, default 1): C connections, each sending its next request
  when the last is answered. Open loop (--rate R): Poisson arrivals at R requests/s on at
  most --max-outstanding connections; an arrival that finds all of them busy is dropped
  and counted (the server is not keeping up), one sent over 2 ms after its time is late.

targets:
  any http:// host is allowed (staging services are a normal target); the target is
  printed on stderr before the run. https is not supported.

exit status: 0 when every request was answered 2xx, 1 when any was not, 2 on bad
  arguments or a model whose metadata cannot be read, 130 on Ctrl-C (after reporting
  the points already measured).

examples:
  ebm loadtest --url http://127.0.0.1:8000 --model car --duration 10
  ebm loadtest --url http://127.0.0.1:8000 --model car --op predict \\
      --sweep 1,4,16,64 --duration 5 --json car.json --plot car.png
  ebm loadtest --url http://127.0.0.1:8000 --model car --rate 1000 --duration 10
  ebm loadtest --url http://127.0.0.1:8000/v1/models/car/energy --body body.json
"""


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected K:V, got {text!r}")
    return name.strip(), value.strip()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _sweep(text: str) -> list[int]:
    try:
        levels = [_positive_int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected concurrencies like 1,4,16, got {text!r}"
        ) from exc
    if not levels:
        raise argparse.ArgumentTypeError("give at least one concurrency")
    return levels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``ebm loadtest`` and ``python -m app.client.loadtest``."""
    parser.description = _DESCRIPTION
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    what = parser.add_argument_group("target")
    what.add_argument(
        "--url",
        required=True,
        help="the service's base URL, e.g. http://127.0.0.1:8000; without --model, the "
        "full URL to POST --body to",
    )
    what.add_argument("--model", metavar="NAME", help="model name: POST to URL/v1/models/NAME/OP")
    what.add_argument(
        "--op", choices=["energy", "predict", "sample"], default="energy", help="default energy"
    )
    what.add_argument(
        "--transport",
        choices=["json", "msgpack"],
        default="json",
        help="request and response encoding (msgpack: tensors as raw bytes); default json",
    )
    what.add_argument(
        "--header",
        type=_parse_header,
        action="append",
        default=[],
        metavar="K:V",
        help="extra request header (repeatable)",
    )
    bodies = parser.add_argument_group("bodies")
    bodies.add_argument(
        "--body",
        type=Path,
        metavar="FILE",
        help="send this JSON body instead of generated ones (as-is with json, converted "
        "with msgpack); needed without --model",
    )
    bodies.add_argument("--body-file", type=Path, dest="body", help=argparse.SUPPRESS)
    bodies.add_argument(
        "--rows",
        metavar="N",
        type=_positive_int,
        default=1,
        help="rows per generated request: (x, y) pairs for energy, x rows for predict and "
        "sample (conditional models); default 1",
    )
    bodies.add_argument(
        "--pool",
        metavar="N",
        type=_positive_int,
        default=64,
        help="distinct generated bodies, encoded once and cycled; default 64",
    )
    bodies.add_argument(
        "--seed",
        metavar="N",
        type=int,
        default=0,
        help="seeds the generated bodies and the open-loop arrivals; default 0",
    )
    load = parser.add_argument_group("load")
    mode = load.add_mutually_exclusive_group()
    mode.add_argument(
        "--concurrency",
        metavar="C",
        type=_positive_int,
        default=None,
        help="closed loop: connections, each with one request in flight; default 1",
    )
    mode.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        metavar="R",
        help="open loop: Poisson arrivals at R requests/s",
    )
    load.add_argument(
        "--max-outstanding",
        type=_positive_int,
        default=64,
        metavar="K",
        help="open loop: at most K requests in flight; more arrivals are dropped and "
        "counted; default 64",
    )
    load.add_argument(
        "--sweep",
        type=_sweep,
        metavar="C1,C2,...",
        help="one closed-loop run per concurrency, e.g. 1,4,16,64",
    )
    load.add_argument(
        "--duration",
        type=_positive_float,
        metavar="S",
        help=f"measured seconds per run (see bounds); default {DEFAULT_DURATION_S:.0f} when "
        "--requests is not given either",
    )
    load.add_argument(
        "--requests",
        type=_positive_int,
        metavar="N",
        help="measured requests per run (see bounds)",
    )
    load.add_argument(
        "--warmup",
        type=int,
        default=None,
        metavar="N",
        help="unrecorded requests before each run; default 2 x concurrency, at least 10",
    )
    load.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="per request; a request past it fails (counted as no response); default 30",
    )
    out = parser.add_argument_group("output")
    out.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="FILE",
        help="write the results as JSON to FILE (no FILE or '-': to stdout, in place of the table)",
    )
    out.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="plot throughput and p99 against concurrency (needs matplotlib: "
        "pip install 'ebm-serve[plot]')",
    )
    out.add_argument(
        "--quiet", action="store_true", help="no progress bar and no target line on stderr"
    )


@dataclass(frozen=True)
class _Plan:
    """What the options resolve to, checked before any load is sent."""

    url: str
    bodies: list[bytes]
    body_source: str
    headers: dict[str, str]
    levels: list[int]  # closed loop: concurrencies; open loop: [the cap on outstanding]
    rate: float | None
    duration_s: float
    max_requests: int

    def warmup(self, args: argparse.Namespace, level: int) -> int:
        if args.warmup is not None:
            return max(0, int(args.warmup))
        return 10 if self.rate is not None else max(10, 2 * level)


def _bounds(args: argparse.Namespace) -> tuple[float, int]:
    if args.duration is None and args.requests is None:
        return DEFAULT_DURATION_S, MAX_REQUESTS
    if args.duration is None:
        return MAX_DURATION_S, int(args.requests)
    return float(args.duration), MAX_REQUESTS if args.requests is None else int(args.requests)


def _plan(args: argparse.Namespace) -> _Plan:
    from app.client import payloads

    if args.rate is not None and args.sweep:
        raise ValueError("--sweep runs closed loops at each concurrency; drop --rate")
    if args.rate is not None and args.plot:
        raise ValueError("--plot draws against concurrency (closed loop); drop --rate")
    if args.sweep and args.concurrency is not None:
        raise ValueError("give --sweep or --concurrency, not both")
    if args.plot:
        from app.client.report import require_matplotlib

        require_matplotlib()
    transport = args.transport
    if args.model:
        url = f"{args.url.rstrip('/')}/v1/models/{args.model}/{args.op}"
    elif args.body is not None:
        url = args.url
    else:
        raise ValueError("give --model (bodies generated from its metadata) or --body FILE")
    parse_url(url)  # an https:// or malformed URL fails here, before anything is sent
    if args.body is not None:
        try:
            raw = Path(args.body).read_bytes()
        except OSError as exc:
            raise ValueError(f"cannot read --body {args.body}: {exc.strerror}") from exc
        bodies = [payloads.file_body(raw, transport)]
        source = f"the body in {args.body}"
    else:
        meta = payloads.fetch_model(args.url, args.model, timeout_s=min(args.timeout, 10.0))
        bodies = payloads.body_pool(
            meta, args.op, transport, rows=args.rows, pool=args.pool, seed=args.seed
        )
        rows = f", {args.rows} rows each" if args.rows > 1 and args.op == "energy" else ""
        source = f"{len(bodies)} generated bodies{rows}"
    headers = payloads.transport_headers(transport) | dict(args.header)
    duration_s, max_requests = _bounds(args)
    if args.rate is not None:
        levels = [int(args.max_outstanding)]
    else:
        levels = list(args.sweep or [args.concurrency or 1])
    return _Plan(url, bodies, source, headers, levels, args.rate, duration_s, max_requests)


def _describe(plan: _Plan, args: argparse.Namespace) -> str:
    if plan.rate is not None:
        load = f"open loop, {plan.rate:g} req/s (Poisson), at most {plan.levels[0]} outstanding"
    else:
        load = f"closed loop at concurrency {','.join(str(c) for c in plan.levels)}"
    return (
        f"ebm loadtest: POST {plan.url} ({args.transport}, {plan.body_source}); {load}; "
        f"each run {plan.duration_s:g} s or {plan.max_requests:,} requests, whichever first"
    )


def _config(plan: _Plan, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "url": plan.url,
        "model": args.model,
        "op": args.op if args.model else None,
        "transport": args.transport,
        "mode": "open" if plan.rate is not None else "closed",
        "rate_rps": plan.rate,
        "bodies": plan.body_source,
        "distinct_bodies": len(plan.bodies),
        "rows": args.rows,
        "seed": args.seed,
        "duration_s": plan.duration_s,
        "max_requests": plan.max_requests,
        "timeout_s": args.timeout,
    }


def _run_point(plan: _Plan, args: argparse.Namespace, level: int, label: str) -> Point:
    from app.client import report

    probe = report.BatchProbe(args.transport)
    spec = LoadSpec(
        url=plan.url,
        bodies=plan.bodies,
        concurrency=level,
        rate=plan.rate,
        max_requests=plan.max_requests,
        max_duration_s=plan.duration_s,
        warmup_requests=plan.warmup(args, level),
        headers=plan.headers,
        timeout_s=args.timeout,
        probe=probe,
        seed=args.seed,
    )
    if args.quiet or not sys.stderr.isatty():
        result = run_spec_sync(spec)
    else:
        console = report.console_for(sys.stderr)
        with report.ProgressBar(console, label, plan.duration_s, plan.max_requests) as bar:
            result = run_spec_sync(replace(spec, on_tick=bar.tick))
    return report.Point(result, probe.mean())


def run(args: argparse.Namespace) -> int:
    """Run ``ebm loadtest`` from parsed :func:`add_arguments` options; the exit status."""
    from app.client import report

    try:
        plan = _plan(args)
    except (ValueError, ImportError) as exc:
        print(f"ebm loadtest: {exc}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(_describe(plan, args), file=sys.stderr)
    points: list[Point] = []
    interrupted = False
    try:
        for i, level in enumerate(plan.levels):
            label = f"c={level}" if plan.rate is None else f"{plan.rate:g} req/s"
            if len(plan.levels) > 1:
                label += f" ({i + 1}/{len(plan.levels)})"
            points.append(_run_point(plan, args, level, label))
    except KeyboardInterrupt:
        # Ctrl-C ends the sweep: the points already measured are still reported.
        print("ebm loadtest: interrupted", file=sys.stderr)
        interrupted = True
        if not points:
            return 130
    title = f"POST {plan.url} ({args.transport})"
    json_to_stdout = args.json == "-"
    if not (json_to_stdout and args.quiet):
        stream = sys.stderr if json_to_stdout else sys.stdout
        report.print_summary(report.console_for(stream), title, points)
    if args.json is not None:
        document = report.results_document(_config(plan, args), points)
        text = _dump_json(document)
        if json_to_stdout:
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.plot is not None:
        try:
            report.write_plot(Path(args.plot), title, points)
        except ImportError as exc:
            print(f"ebm loadtest: {exc}", file=sys.stderr)
            return 2
    if interrupted:
        return 130
    return 1 if any(p.result.errors for p in points) else 0


def _dump_json(data: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app.client.loadtest")
    add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: the exit status (1 when any request failed, 2 on bad options)."""
    return run(_build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
