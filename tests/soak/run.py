"""Soak test: minutes of mixed load on embedded mode, then on Redis (queue) mode.

    make soak                       # 150 s per mode (SOAK_SECONDS=150): about 5 minutes
    make soak SOAK_SECONDS=600      # longer
    python -m tests.soak.run --seconds 20 [--concurrency 8] [--window 10] [--seed 0]

Two phases run one after the other, each on fresh processes serving the shipped models
in ``models/`` on onnxruntime (``EBM_BACKEND=onnx``):

1. embedded: one ``ebm serve``;
2. redis: a non-persistent ``redis-server`` on a free port, ``ebm serve`` with
   ``EBM_REDIS_URL`` (the thin API) and one ``ebm worker`` (every model).

Each phase lasts ``--seconds``: a warm-up of 15% of it (at least 10 s), then the measured
period, cut into equal windows of about ``--window`` seconds (at least 3). The load is a
fixed number of closed-loop clients (``--concurrency``, default 8), each on its own
keep-alive connection (the lean HTTP/1.1 framing of ``app.client.http1``, on uvloop), each
drawing from a weighted mix (``tests/soak/mix.py``) with its own fixed seed: /energy with
small and medium batches (plain, with gradients, free energies), seeded /predict with
small k and tens of steps, and seeded /sample (Langevin chains and prior decoding), over
car, spiral, mixture, ellipse, digits, digits-inpaint and shapes. Every request has a
client-side timeout (``--timeout``, default 10 s), enforced by a watchdog that aborts
the connection.

Per window it records the responses by status code, connection errors and timeouts, the
p50 and p99 latency per operation (energy, predict, sample), and the resident set size
(VmRSS from ``/proc/<pid>/status``, summed over the process and any children; ``ebm
serve`` and ``ebm worker`` run in the process ``tests.servers`` starts, so that is the
process itself) of the API and, in Redis mode, of the worker (and, for information, of
redis-server). RSS is also sampled every second.

Bars, per phase (the run exits 1 if any fails):

- errors: every response is 200 or 429 (429 is the intended overload answer), and no
  request failed on the connection or timed out, warm-up included;
- RSS growth: for the API and (Redis mode) the worker, (max RSS over the last third of the
  measured period - RSS at the end of the warm-up) / RSS at the end of the warm-up < 10%;
- p99 stable: for each operation, the p99 of the last measured window is at most 2x the
  median of the measured windows' p99s.

It prints a table per window and a summary, and writes ``tests/bench/results/soak.json``
(``--results``). It is bounded: processes are always stopped (``finally``), and a hard
watchdog kills every process it started and exits 3 if the run passes
``2 * seconds + 120`` s, whatever hangs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app.client.http1 import Connection, Target, encode_request, parse_url
from tests.servers import (
    REPO,
    RedisServer,
    Server,
    WorkerProcess,
    start_server,
    start_worker,
    stop_process,
    stop_server,
)
from tests.soak.mix import OPERATIONS, Kind, Picker, build_mix

MODELS_DIR = REPO / "models"
RESULTS = REPO / "tests" / "bench" / "results" / "soak.json"
BACKEND = {"EBM_BACKEND": "onnx"}
WARMUP_SHARE = 0.15
MIN_WARMUP_S = 10.0
MIN_WINDOWS = 3
RSS_GROWTH_BAR = 0.10
P99_RATIO_BAR = 2.0
OK_STATUSES = frozenset({200, 429})
RSS_PERIOD_S = 1.0
#: Time the hard watchdog allows beyond the load itself (start-up, drain, shutdown).
SLACK_S = 120.0
#: After a failed connect, pause so a dead server does not turn a client into a busy loop.
RETRY_BACKOFF_S = 0.05
MAX_ERROR_SAMPLES = 10


# ------------------------------------------------------------------------------ processes


class Processes:
    """Every process the soak starts; :meth:`stop_all` stops them newest first, and
    :meth:`kill_all` (the hard watchdog, from another thread) SIGKILLs them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._stops: list[Callable[[], None]] = []
        self._popens: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()

    def _register(self, stop: Callable[[], None], popen: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._stops.append(stop)
            self._popens.append(popen)

    def redis(self) -> RedisServer:
        redis = RedisServer(self.log_dir / "redis", persistent=False)
        try:
            redis.start()
        finally:
            if redis.process is not None:
                self._register(redis.stop, redis.process)
        return redis

    def server(self, **env: str) -> Server:
        server = start_server(MODELS_DIR, self.log_dir, **BACKEND, **env)
        self._register(lambda: stop_server(server), server.process)
        return server

    def worker(self, redis_url: str) -> WorkerProcess:
        worker = start_worker(MODELS_DIR, redis_url, self.log_dir, **BACKEND)
        self._register(lambda: stop_process(worker.process), worker.process)
        return worker

    def stop_all(self) -> None:
        while True:
            with self._lock:
                if not self._stops:
                    return
                stop = self._stops.pop()
                popen = self._popens.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping pid {popen.pid} failed: {exc!r}; killing it", flush=True)
                with contextlib.suppress(OSError):
                    popen.kill()

    def kill_all(self) -> None:
        with self._lock:
            popens = list(self._popens)
        for popen in popens:
            with contextlib.suppress(OSError):
                popen.kill()
        for popen in popens:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                popen.wait(timeout=2)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                text = Path(f"/proc/{pid}/task/{task}/children").read_text()
                found.extend(int(c) for c in text.split())
    return found


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` plus its descendants, in KiB; None once the process is gone."""
    total = 0
    stack = [pid]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            if current == pid:
                return None
            continue
        match = re.search(r"^VmRSS:\s+(\d+)\s+kB", status, re.MULTILINE)
        if match is None:  # a zombie has no VmRSS
            if current == pid:
                return None
            continue
        total += int(match.group(1))
        stack.extend(_children(current))
    return total


def log_problems(text: str) -> int:
    """Lines of a process log that report an error or a traceback."""
    return len(re.findall(r"^.*(?:Traceback|\b(?:ERROR|CRITICAL)\b).*$", text, re.MULTILINE))


# ------------------------------------------------------------------------------ recording


@dataclass
class Bucket:
    """What one window (or the warm-up) saw."""

    latencies_ns: dict[str, list[int]] = field(default_factory=lambda: {o: [] for o in OPERATIONS})
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    timeouts: int = 0
    error_samples: list[str] = field(default_factory=list)

    def note_error(self, text: str) -> None:
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(text)


@dataclass
class WindowStats:
    label: str
    start_s: float
    end_s: float
    requests: int
    statuses: dict[int, int]
    errors: int
    connection_errors: int
    timeouts: int
    count: dict[str, int]
    p50_ms: dict[str, float | None]
    p99_ms: dict[str, float | None]
    rss_mib: dict[str, float | None]
    error_samples: list[str]

    @property
    def rps(self) -> float:
        span = self.end_s - self.start_s
        return self.requests / span if span > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "start_s": round(self.start_s, 3),
            "end_s": round(self.end_s, 3),
            "requests": self.requests,
            "throughput_rps": round(self.rps, 2),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "connection_errors": self.connection_errors,
            "timeouts": self.timeouts,
            "count": self.count,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "rss_mib": self.rss_mib,
            "error_samples": self.error_samples,
        }


def _percentiles(values_ns: list[int]) -> tuple[float | None, float | None]:
    if not values_ns:
        return None, None
    p50, p99 = np.percentile(np.asarray(values_ns, dtype=np.float64) / 1e6, [50.0, 99.0])
    return round(float(p50), 3), round(float(p99), 3)


def summarize(
    label: str, bucket: Bucket, start_s: float, end_s: float, rss: dict[str, int | None]
) -> WindowStats:
    p50: dict[str, float | None] = {}
    p99: dict[str, float | None] = {}
    for op in OPERATIONS:
        p50[op], p99[op] = _percentiles(bucket.latencies_ns[op])
    bad_statuses = sum(n for s, n in bucket.statuses.items() if s not in OK_STATUSES)
    return WindowStats(
        label=label,
        start_s=start_s,
        end_s=end_s,
        requests=sum(bucket.statuses.values()),
        statuses=dict(sorted(bucket.statuses.items())),
        errors=bad_statuses + bucket.connection_errors,
        connection_errors=bucket.connection_errors,
        timeouts=bucket.timeouts,
        count={op: len(bucket.latencies_ns[op]) for op in OPERATIONS},
        p50_ms=p50,
        p99_ms=p99,
        rss_mib={k: None if v is None else round(v / 1024, 1) for k, v in rss.items()},
        error_samples=bucket.error_samples,
    )


# ---------------------------------------------------------------------------------- load


@dataclass
class Plan:
    seconds: float
    warmup_s: float
    windows: int
    concurrency: int
    timeout_s: float
    seed: int

    @property
    def measured_s(self) -> float:
        return self.seconds - self.warmup_s

    @property
    def window_s(self) -> float:
        return self.measured_s / self.windows


def make_plan(seconds: float, window: float, concurrency: int, timeout: float, seed: int) -> Plan:
    warmup = max(MIN_WARMUP_S, WARMUP_SHARE * seconds)
    measured = seconds - warmup
    if measured < MIN_WINDOWS:
        raise SystemExit(f"--seconds {seconds} leaves {measured:.1f} s after the warm-up")
    windows = max(MIN_WINDOWS, round(measured / window))
    return Plan(seconds, warmup, windows, concurrency, timeout, seed)


class Load:
    """The clients, the per-request watchdog and the window sampler of one phase."""

    def __init__(self, plan: Plan, url: str, kinds: list[Kind], pids: dict[str, int]) -> None:
        self.plan = plan
        self.kinds = kinds
        self.pids = pids
        self.target = parse_url(url)
        self.requests = {
            kind.name: tuple(self._encode(url + kind.path, body) for body in kind.bodies)
            for kind in kinds
        }
        self.bucket = Bucket()
        self.conns = [Connection() for _ in range(plan.concurrency)]
        self.timed_out = [False] * plan.concurrency
        self.windows: list[WindowStats] = []
        self.warmup: WindowStats | None = None
        self.rss_series: list[dict[str, Any]] = []
        self.rss_at_warmup_kib: dict[str, int | None] = {}

    @staticmethod
    def _encode(url: str, body: bytes) -> bytes:
        target: Target = parse_url(url)
        return encode_request(target, body, None)

    def _swap(self) -> Bucket:
        bucket, self.bucket = self.bucket, Bucket()
        return bucket

    def _rss(self) -> dict[str, int | None]:
        return {name: rss_kib(pid) for name, pid in self.pids.items()}

    async def _client(self, index: int, stop_at: float) -> None:
        conn = self.conns[index]
        picker = Picker(self.kinds, self.plan.seed * 1000 + index)
        clock = time.perf_counter_ns
        while time.monotonic() < stop_at:
            kind, variant = picker.next()
            request = self.requests[kind.name][variant]
            start = clock()
            conn.started_ns = start
            self.timed_out[index] = False
            try:
                proto = conn.proto
                if proto is None or proto.closed:
                    proto = await conn.open(self.target, self.plan.timeout_s)
                status, body, keep_alive = await proto.send(request)
            except (OSError, ValueError, TimeoutError) as exc:
                conn.started_ns = 0
                conn.abort()
                bucket = self.bucket
                bucket.connection_errors += 1
                if self.timed_out[index]:
                    bucket.timeouts += 1
                    bucket.note_error(f"{kind.name}: no answer in {self.plan.timeout_s} s")
                else:
                    bucket.note_error(f"{kind.name}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(RETRY_BACKOFF_S)
                continue
            elapsed = clock() - start
            conn.started_ns = 0
            bucket = self.bucket
            bucket.statuses[status] = bucket.statuses.get(status, 0) + 1
            if status == 200:
                bucket.latencies_ns[kind.operation].append(elapsed)
            elif status not in OK_STATUSES:
                bucket.note_error(f"{kind.name}: {status} {body[:200].decode(errors='replace')}")
            if not keep_alive:
                conn.abort()

    async def _watchdog(self) -> None:
        timeout_ns = int(self.plan.timeout_s * 1e9)
        while True:
            await asyncio.sleep(0.1)
            now = time.perf_counter_ns()
            for index, conn in enumerate(self.conns):
                if conn.started_ns and now - conn.started_ns > timeout_ns:
                    conn.started_ns = 0
                    self.timed_out[index] = True
                    conn.abort()

    async def _sampler(self, t0: float) -> None:
        """RSS every second; closes the warm-up and every window but the last on time."""
        plan = self.plan
        boundaries = [plan.warmup_s + i * plan.window_s for i in range(plan.windows)]
        next_rss = 0.0
        opened = 0.0
        while True:
            now = time.monotonic() - t0
            if boundaries and now >= boundaries[0]:
                end = boundaries.pop(0)
                rss = self._rss()
                stats_bucket = self._swap()
                if self.warmup is None:
                    self.rss_at_warmup_kib = rss
                    self.warmup = summarize("warm-up", stats_bucket, opened, end, rss)
                    print_window(self.warmup, header=True)
                else:
                    label = str(len(self.windows) + 1)
                    self.windows.append(summarize(label, stats_bucket, opened, end, rss))
                    print_window(self.windows[-1])
                self.rss_series.append({"t_s": round(now, 2), **rss})
                opened = end
                next_rss = now + RSS_PERIOD_S
                continue
            if now >= next_rss:
                self.rss_series.append({"t_s": round(now, 2), **self._rss()})
                next_rss = now + RSS_PERIOD_S
            wake = min(next_rss, boundaries[0]) if boundaries else next_rss
            await asyncio.sleep(max(0.0, min(wake - now, RSS_PERIOD_S)))

    async def run(self) -> None:
        plan = self.plan
        t0 = time.monotonic()
        stop_at = t0 + plan.seconds
        watchdog = asyncio.ensure_future(self._watchdog())
        sampler = asyncio.ensure_future(self._sampler(t0))
        clients = [asyncio.ensure_future(self._client(i, stop_at)) for i in range(len(self.conns))]
        try:
            # Clients stop starting requests at stop_at; in-flight ones end within the
            # timeout (the watchdog aborts them), so this wait is bounded.
            done, pending = await asyncio.wait(clients, timeout=plan.seconds + plan.timeout_s + 5)
            for task in pending:
                task.cancel()
            for task in [*done, sampler, watchdog]:
                error = task.exception() if task.done() else None
                if error is not None:
                    raise error
        finally:
            sampler.cancel()
            watchdog.cancel()
            for task in clients:
                task.cancel()
            for conn in self.conns:
                conn.abort()
        end = time.monotonic() - t0
        rss = self._rss()
        self.rss_series.append({"t_s": round(end, 2), **rss})
        # The last window also holds the requests that were in flight at stop_at.
        opened = plan.warmup_s + (plan.windows - 1) * plan.window_s
        self.windows.append(summarize(str(len(self.windows) + 1), self._swap(), opened, end, rss))
        print_window(self.windows[-1])


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -------------------------------------------------------------------------------- report


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_window(w: WindowStats, header: bool = False) -> None:
    if header:
        ops = "".join(f" {op + ' p50/p99 ms':>22}" for op in OPERATIONS)
        print(
            f"{'window':>7} {'t (s)':>11} {'req':>6} {'req/s':>6} {'200':>6} {'429':>5}"
            f" {'err':>4}{ops} {'RSS MiB':>24}",
            flush=True,
        )
    ops = "".join(f" {_ms(w.p50_ms[op]) + ' / ' + _ms(w.p99_ms[op]):>22}" for op in OPERATIONS)
    rss = " ".join(f"{k} {_mib(v)}" for k, v in w.rss_mib.items())
    span = f"{w.start_s:.0f}-{w.end_s:.0f}"
    print(
        f"{w.label:>7} {span:>11} {w.requests:>6} {w.rps:>6.1f} {w.statuses.get(200, 0):>6}"
        f" {w.statuses.get(429, 0):>5} {w.errors:>4}{ops}   {rss}",
        flush=True,
    )
    for sample in w.error_samples[:3]:
        print(f"          error: {sample}", flush=True)


def verdict(load: Load, watched: list[str]) -> dict[str, Any]:
    """The three bars of one phase (see the module docstring)."""
    plan = load.plan
    every = ([load.warmup] if load.warmup is not None else []) + load.windows
    statuses: dict[int, int] = {}
    for w in every:
        for s, n in w.statuses.items():
            statuses[s] = statuses.get(s, 0) + n
    errors = sum(w.errors for w in every)
    bars: dict[str, Any] = {
        "errors": {
            "errors": errors,
            "connection_errors": sum(w.connection_errors for w in every),
            "timeouts": sum(w.timeouts for w in every),
            "samples": [s for w in every for s in w.error_samples][:MAX_ERROR_SAMPLES],
            "pass": errors == 0,
        }
    }
    last_third_from = plan.warmup_s + plan.measured_s * 2 / 3
    rss_bars: dict[str, Any] = {}
    for name in watched:
        base = load.rss_at_warmup_kib.get(name)
        late = [
            r[name]
            for r in load.rss_series
            if r["t_s"] >= last_third_from and r.get(name) is not None
        ]
        if base is None or not late:
            rss_bars[name] = {"pass": False, "reason": "process gone or not sampled"}
            continue
        peak = max(late)
        growth = (peak - base) / base
        rss_bars[name] = {
            "warmup_end_mib": round(base / 1024, 1),
            "last_third_max_mib": round(peak / 1024, 1),
            "growth": round(growth, 4),
            "pass": growth < RSS_GROWTH_BAR,
        }
    bars["rss"] = rss_bars
    p99_bars: dict[str, Any] = {}
    for op in OPERATIONS:
        series = [w.p99_ms[op] for w in load.windows]
        values = [v for v in series if v is not None]
        last = series[-1] if series else None
        if last is None or not values:
            p99_bars[op] = {"pass": False, "reason": "no 200 answers in the last window"}
            continue
        median = statistics.median(values)
        ratio = last / median if median > 0 else float("inf")
        p99_bars[op] = {
            "last_ms": last,
            "median_ms": round(median, 3),
            "ratio": round(ratio, 3),
            "pass": ratio <= P99_RATIO_BAR,
        }
    bars["p99"] = p99_bars
    passed = (
        bars["errors"]["pass"]
        and all(b["pass"] for b in rss_bars.values())
        and all(b["pass"] for b in p99_bars.values())
    )
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "requests": sum(statuses.values()),
        "bars": bars,
        "pass": passed,
    }


def _mark(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_summary(phase: dict[str, Any]) -> None:
    name = phase["mode"]
    if "error" in phase:
        print(f"{name}: FAIL ({phase['error']})", flush=True)
        return
    v = phase["verdict"]
    bars = v["bars"]
    statuses = ", ".join(f"{k}: {n}" for k, n in v["statuses"].items())
    measured = sum(w["requests"] for w in phase["windows"])
    rate = measured / phase["plan"]["measured_s"]
    e = bars["errors"]
    print(
        f"{name}: {v['requests']} requests ({statuses}), {rate:.1f} req/s measured;"
        f" errors {e['errors']} (connection {e['connection_errors']},"
        f" timeouts {e['timeouts']}): {_mark(e['pass'])}",
        flush=True,
    )
    for proc, b in bars["rss"].items():
        if "growth" not in b:
            print(f"  RSS {proc}: {b['reason']}: FAIL", flush=True)
            continue
        print(
            f"  RSS {proc}: {b['warmup_end_mib']:.1f} MiB at end of warm-up, max"
            f" {b['last_third_max_mib']:.1f} MiB in last third: {100 * b['growth']:+.2f}%"
            f" (< {100 * RSS_GROWTH_BAR:.0f}%): {_mark(b['pass'])}",
            flush=True,
        )
    for op, b in bars["p99"].items():
        if "ratio" not in b:
            print(f"  p99 {op}: {b['reason']}: FAIL", flush=True)
            continue
        print(
            f"  p99 {op}: last window {b['last_ms']:.1f} ms, median of windows"
            f" {b['median_ms']:.1f} ms, ratio {b['ratio']:.2f} (<= {P99_RATIO_BAR:.0f}):"
            f" {_mark(b['pass'])}",
            flush=True,
        )
    info = ", ".join(f"{k} {n}" for k, n in phase["log_problem_lines"].items())
    cpu_us = 1e6 * phase["client_cpu_s"] / max(1, v["requests"])
    print(
        f"  (information) log lines with ERROR/Traceback: {info}; load client CPU"
        f" {cpu_us:.0f} us/request",
        flush=True,
    )


# --------------------------------------------------------------------------------- phases


def _live_workers(api: Server) -> dict[str, int]:
    detail = httpx.get(f"{api.url}/readyz", timeout=5).json().get("detail", {})
    workers: dict[str, int] = detail.get("workers", {})
    return workers


def _served_models(api: Server) -> list[str]:
    detail = httpx.get(f"{api.url}/readyz", timeout=5).json().get("detail", {})
    return sorted(detail.get("models", {}))


def wait_for_workers(api: Server, models: set[str], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        live = _live_workers(api)
        if all(live.get(m, 0) >= 1 for m in models):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"no live worker for every model after {timeout_s} s: {live}")
        time.sleep(0.1)


def run_phase(mode: str, plan: Plan, kinds: list[Kind], procs: Processes) -> dict[str, Any]:
    needed = {k.model for k in kinds}
    print(
        f"\n=== {mode} mode: {plan.seconds:.0f} s ({plan.warmup_s:.1f} s warm-up, "
        f"{plan.windows} windows of {plan.window_s:.1f} s), {plan.concurrency} clients",
        flush=True,
    )
    logs: dict[str, Path] = {}
    if mode == "embedded":
        # Started on a pool thread, as below: an interrupt reaches the main thread only,
        # and leaving the pool waits for the start, which registers the process first.
        with ThreadPoolExecutor(1) as pool:
            api = pool.submit(procs.server).result()
        pids = {"api": api.process.pid}
        watched = ["api"]
    else:
        redis = procs.redis()
        with ThreadPoolExecutor(2) as pool:
            api_future = pool.submit(procs.server, EBM_REDIS_URL=redis.url)
            worker_future = pool.submit(procs.worker, redis.url)
            api, worker = api_future.result(), worker_future.result()
        wait_for_workers(api, needed)
        assert redis.process is not None
        pids = {"api": api.process.pid, "worker": worker.process.pid, "redis": redis.process.pid}
        watched = ["api", "worker"]
        logs["worker"] = worker.log
    logs["api"] = api.log
    missing = needed - set(_served_models(api))
    if missing:
        raise RuntimeError(f"models not served: {sorted(missing)}")
    load = Load(plan, api.url, kinds, pids)
    cpu0 = time.process_time()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(load.run())
    client_cpu = time.process_time() - cpu0
    alive = {name: procs_alive(pid) for name, pid in pids.items()}
    result = verdict(load, watched)
    if not all(alive.values()):
        result["pass"] = False
    return {
        "mode": mode,
        "plan": {
            "seconds": plan.seconds,
            "warmup_s": plan.warmup_s,
            "measured_s": plan.measured_s,
            "windows": plan.windows,
            "window_s": round(plan.window_s, 3),
            "concurrency": plan.concurrency,
            "timeout_s": plan.timeout_s,
            "seed": plan.seed,
        },
        "warmup": None if load.warmup is None else load.warmup.as_dict(),
        "windows": [w.as_dict() for w in load.windows],
        "rss_kib_series": load.rss_series,
        "alive_at_end": alive,
        "client_cpu_s": round(client_cpu, 2),
        "log_problem_lines": {
            k: log_problems(p.read_text(errors="replace")) for k, p in logs.items()
        },
        "logs": {k: str(p) for k, p in logs.items()},
        "verdict": result,
    }


def procs_alive(pid: int) -> bool:
    return rss_kib(pid) is not None


def hard_watchdog(bound_s: float, procs: list[Processes], results: Path) -> threading.Timer:
    """After ``bound_s``: SIGKILL every process started, write a failed result, exit 3."""

    def fire() -> None:
        print(f"\nsoak: hard bound of {bound_s:.0f} s reached; killing everything", flush=True)
        for p in procs:
            p.kill_all()
        # A process still starting is not registered yet, but it is a child of this one.
        for pid in _children(os.getpid()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            results.parent.mkdir(parents=True, exist_ok=True)
            failure = {"pass": False, "error": f"hard bound of {bound_s:.0f} s reached"}
            results.write_text(json.dumps(failure) + "\n")
        os._exit(3)

    timer = threading.Timer(bound_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.soak.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seconds", type=float, default=150.0, help="length of each phase")
    parser.add_argument("--concurrency", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--window", type=float, default=10.0, help="target window length (s)")
    parser.add_argument("--timeout", type=float, default=10.0, help="per request (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default="embedded,redis", help="comma-separated phases")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    plan = make_plan(args.seconds, args.window, args.concurrency, args.timeout, args.seed)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in ("embedded", "redis") for m in modes):
        raise SystemExit(f"--modes takes embedded and/or redis, got {args.modes!r}")
    bound = len(modes) * args.seconds + SLACK_S
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="ebm-soak-"))
    kinds = build_mix(args.seed)
    all_procs: list[Processes] = []
    timer = hard_watchdog(bound, all_procs, args.results)
    # SIGTERM (a CI cancel) unwinds like Ctrl-C, through every ``finally``.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    phases: list[dict[str, Any]] = []
    try:
        for mode in modes:
            procs = Processes(log_dir / mode)
            (log_dir / mode).mkdir(parents=True)
            all_procs.append(procs)
            try:
                phases.append(run_phase(mode, plan, kinds, procs))
            except Exception as exc:
                print(f"{mode} phase failed: {exc!r}", flush=True)
                phases.append({"mode": mode, "error": repr(exc), "verdict": {"pass": False}})
            finally:
                procs.stop_all()
    finally:
        timer.cancel()
        for procs in all_procs:
            procs.stop_all()
    elapsed = time.monotonic() - started
    passed = all(p["verdict"]["pass"] for p in phases) and len(phases) == len(modes)
    print(
        f"\n=== soak summary ({elapsed:.0f} s in all, bound {bound:.0f} s; logs in {log_dir})",
        flush=True,
    )
    for phase in phases:
        print_summary(phase)
    print(f"soak: {_mark(passed)}", flush=True)
    report = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m tests.soak.run " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine_cpus": os.cpu_count(),
        "load_average_at_end": list(os.getloadavg()),
        "elapsed_s": round(elapsed, 1),
        "bound_s": bound,
        "mix": [
            {"name": k.name, "operation": k.operation, "model": k.model, "weight": k.weight}
            for k in kinds
        ],
        "bars": {
            "errors": "every response 200 or 429, no connection errors or timeouts",
            "rss_growth": f"(max RSS in last third - RSS at end of warm-up) / that < "
            f"{RSS_GROWTH_BAR}",
            "p99_stable": f"p99 of the last window <= {P99_RATIO_BAR} x median of windows' p99,"
            " per operation",
        },
        "phases": phases,
        "pass": passed,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=1) + "\n")
    print(f"results: {args.results}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
