"""Benchmark of queue mode (EBM_REDIS_URL: `ebm serve` enqueues on Redis Streams, `ebm worker`
computes and replies) against embedded mode, one run:

- one-pair POST /energy on `car` at concurrency 1, 16 and 64: an embedded server versus a
  queue stack (API + one worker + its own non-persistent redis-server on a free port), the
  two measured alternately, a fresh set of processes per repeat; medians over repeats, and
  what queue mode adds to the p50 and p99;
- compute-heavy POST /predict on `car` (one x, 64 starts, 100 steps: tens of ms alone, the
  "alone" row measures it) through that queue stack with one worker and with two: a second
  worker joins the same API and Redis (or, in alternate repeats, the stack starts with two
  and the second is stopped), so that neither count always goes first;
- an expired heavy /sample on `mixture` (deadline 1.5 s; about a million Langevin steps if
  nothing stopped it) and, 2.5 s after it was sent, a light /predict on `car`, in both
  modes: the light one must not wait behind the heavy one's chain (22.1 s before the engine
  checked deadlines between steps).

The load generator is `app.client.loadtest` (raw keep-alive HTTP/1.1, its own CPU reported).
API, Redis, workers and the load generator share this machine's cores (two on the benchmark
machine): a second worker competes with all of them for the second core.

    make bench            # all benchmarks
    python -m tests.bench.bench_queue [--seconds 3] [--repeats 3] [--predict-seconds 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from app.client.loadtest import LoadResult, run_load_sync
from tests.bench.saving import save
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

RESULTS = REPO / "tests" / "bench" / "results"
BACKEND = {"EBM_BACKEND": "onnx"}
ENERGY_CONCURRENCY = (1, 16, 64)
MODES = ("embedded", "queue")
#: One pair inside car's bounds (x: offset, distance, speed; y: forward, lateral).
ONE_PAIR = {"x": [[0.0, 20.0, 9.0]], "y": [[17.8, 2.3]]}
#: One x, 64 starts of 100 gradient steps: tens of ms of compute, next to no I/O.
HEAVY_PREDICT = {"x": [[0.0, 20.0, 9.0]], "num_starts": 64, "steps": 100}
#: ~1 million Langevin steps: minutes of compute if nothing stopped it at its deadline.
HEAVY_SAMPLE = {"n": 100, "chains": 1, "thin": 10000, "seed": 0, "deadline_ms": 1500}
LIGHT_PREDICT = {"x": [[0.0, 20.0, 9.0]], "seed": 0}
LIGHT_AFTER_S = 2.5  # the light request goes this long after the heavy one was sent
ADDED_P50_BAR_MS = 1.5
WORKER_SPEEDUP_BAR = 1.3
LIGHT_BAR_S = 1.0


@dataclass
class QueueStack:
    redis: RedisServer
    api: Server
    workers: list[WorkerProcess]


class Processes:
    """Every process this bench starts, stopped (newest first) by :meth:`stop_all`.

    Starts run on pool threads: an interrupt reaches the main thread only, the pool's exit
    waits for the start in progress, which registers its process before ``finally`` runs."""

    def __init__(self, models_dir: Path, log_dir: Path) -> None:
        self.models_dir = models_dir
        self.log_dir = log_dir
        self._stops: list[Callable[[], None]] = []

    def redis(self, name: str) -> RedisServer:
        redis = RedisServer(self.log_dir / name, persistent=False)
        self._stops.append(redis.stop)  # before start: a redis that never answers is stopped
        return redis.start()

    def server(self, **env: str) -> Server:
        server = start_server(self.models_dir, self.log_dir, **BACKEND, **env)
        self._stops.append(lambda: stop_server(server))
        return server

    def worker(self, redis_url: str, *args: str) -> WorkerProcess:
        worker = start_worker(self.models_dir, redis_url, self.log_dir, *args, **BACKEND)
        self._stops.append(lambda: stop_process(worker.process))
        return worker

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        while self._stops:
            try:
                self._stops.pop()()
            except Exception as exc:  # keep stopping the others
                errors.append(exc)
        if errors:
            raise errors[0]


def live_workers(api: Server, model: str) -> int:
    detail = httpx.get(f"{api.url}/readyz", timeout=10).json()["detail"]
    return int(detail.get("workers", {}).get(model, 0))


def wait_for_workers(api: Server, model: str, count: int, timeout_s: float = 15.0) -> None:
    """Until /readyz counts ``count`` live workers on ``model`` (their heartbeat is in)."""
    deadline = time.monotonic() + timeout_s
    while live_workers(api, model) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers on {model} not live after {timeout_s} s")
        time.sleep(0.1)


def start_set(procs: Processes, repeat: int) -> tuple[Server, QueueStack]:
    """An embedded server and a queue stack (its own Redis, API, one worker), in parallel."""
    with ThreadPoolExecutor(3) as pool:
        redis = pool.submit(procs.redis, f"redis-{repeat}").result()
        embedded = pool.submit(procs.server)
        api = pool.submit(procs.server, EBM_REDIS_URL=redis.url)
        worker = pool.submit(procs.worker, redis.url, "--models", "car,mixture")
        stack = QueueStack(redis, api.result(), [worker.result()])
        server = embedded.result()
    wait_for_workers(stack.api, "car", 1)
    return server, stack


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(url: str, body: bytes, concurrency: int, seconds: float, warmup: int) -> LoadResult:
    return run_load_sync(
        url, body, concurrency=concurrency, duration_s=seconds, warmup_requests=warmup
    )


def heavy_then_light(server: Server) -> dict[str, Any]:
    """The expired heavy /sample, then the light /predict LIGHT_AFTER_S after it was sent."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        sent = time.monotonic()
        heavy = client.post("/v1/models/mixture/sample", json=HEAVY_SAMPLE)
        heavy_s = time.monotonic() - sent
    time.sleep(max(0.0, LIGHT_AFTER_S - (time.monotonic() - sent)))
    with httpx.Client(base_url=server.url, timeout=60) as client:
        started = time.monotonic()
        light = client.post("/v1/models/car/predict", json=LIGHT_PREDICT)
        light_s = time.monotonic() - started
    return {
        "heavy_status": heavy.status_code,
        "heavy_s": heavy_s,
        "light_status": light.status_code,
        "light_s": light_s,
    }


def median_run(results: list[LoadResult], key: str) -> LoadResult:
    """The median run by ``key`` across repeats: robust to one disturbed repeat."""
    ordered = sorted(results, key=lambda r: float(getattr(r, key)))
    return ordered[len(ordered) // 2]


def summarize(results: list[LoadResult]) -> dict[str, Any]:
    """The median-throughput run, with the medians of p50 and p99 over repeats."""
    return median_run(results, "throughput_rps").as_dict() | {
        "p50_median_ms": statistics.median(r.latency_ms_p50 for r in results),
        "p99_median_ms": statistics.median(r.latency_ms_p99 for r in results),
        "p50_ms_per_repeat": [r.latency_ms_p50 for r in results],
        "p99_ms_per_repeat": [r.latency_ms_p99 for r in results],
        "errors_total": sum(r.errors for r in results),
    }


def run(
    seconds: float,
    repeats: int,
    predict_seconds: float,
    predict_concurrency: int,
    models_dir: Path,
) -> dict[str, Any]:
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="ebm-bench-queue-"))
    one_pair = orjson.dumps(ONE_PAIR)
    heavy_predict = orjson.dumps(HEAVY_PREDICT)
    energy_runs: dict[tuple[int, str], list[LoadResult]] = {}
    predict_runs: dict[int, list[LoadResult]] = {1: [], 2: []}
    predict_cores: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    alone_runs: list[LoadResult] = []
    deadline_runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for repeat in range(repeats):
        # Fresh processes every repeat, measured in alternating order: two identical
        # processes differ by 10-25% in latency here, so each mode gets several processes.
        modes = MODES if repeat % 2 == 0 else MODES[::-1]
        procs = Processes(models_dir, log_dir)
        try:
            embedded, stack = start_set(procs, repeat)
            urls = {"embedded": embedded.url, "queue": stack.api.url}
            # 1. one-pair /energy: what the queue's hops add.
            for concurrency in ENERGY_CONCURRENCY:
                for mode in modes:
                    result = load(
                        f"{urls[mode]}/v1/models/car/energy",
                        one_pair,
                        concurrency,
                        seconds,
                        warmup=max(50, 4 * concurrency),
                    )
                    energy_runs.setdefault((concurrency, mode), []).append(result)
            # 3. heavy-then-light, in both modes.
            servers = {"embedded": embedded, "queue": stack.api}
            for mode in modes:
                deadline_runs[mode].append(heavy_then_light(servers[mode]))
            stop_server(embedded)  # idle, but its CPU is better left to the workers
            # 2. compute-heavy /predict: one worker versus two on the same API and Redis.
            predict_url = f"{stack.api.url}/v1/models/car/predict"
            counts = (1, 2) if repeat % 2 == 0 else (2, 1)
            for workers in counts:
                if workers == 2:
                    with ThreadPoolExecutor(1) as pool:
                        second = pool.submit(procs.worker, stack.redis.url, "--models", "car")
                        stack.workers.append(second.result())
                    wait_for_workers(stack.api, "car", 2)
                elif len(stack.workers) == 2:
                    stop_process(stack.workers.pop().process)  # SIGTERM: drains, then exits
                if workers == 1:
                    alone = run_load_sync(
                        predict_url, heavy_predict, concurrency=1, requests=10, warmup_requests=3
                    )
                    alone_runs.append(alone)
                # Warm up (a new worker's first batches), then measure with every
                # process's CPU read around the measured phase only.
                run_load_sync(
                    predict_url,
                    heavy_predict,
                    concurrency=predict_concurrency,
                    requests=4 * predict_concurrency,
                )
                assert stack.redis.process is not None
                pids = {"api": stack.api.process.pid, "redis": stack.redis.process.pid}
                pids |= {f"worker {i + 1}": w.process.pid for i, w in enumerate(stack.workers)}
                before = {role: cpu_seconds(pid) for role, pid in pids.items()}
                result = run_load_sync(
                    predict_url,
                    heavy_predict,
                    concurrency=predict_concurrency,
                    duration_s=predict_seconds,
                )
                cores = {
                    role: (cpu_seconds(pids[role]) - used) / result.duration_s
                    for role, used in before.items()
                }
                cores["client"] = result.client_cpu_s / result.duration_s
                predict_runs[workers].append(result)
                predict_cores[workers].append(cores)
        finally:
            procs.stop_all()

    energy: list[dict[str, Any]] = []
    for concurrency in ENERGY_CONCURRENCY:
        embedded_runs = energy_runs[(concurrency, "embedded")]
        queue_runs = energy_runs[(concurrency, "queue")]
        paired = list(zip(queue_runs, embedded_runs, strict=True))  # same repeat, back to back
        added = {
            f"added_{p}_ms": statistics.median(
                getattr(q, f"latency_ms_{p}") - getattr(e, f"latency_ms_{p}") for q, e in paired
            )
            for p in ("p50", "p99")
        }
        energy.append({"concurrency": concurrency, "mode": "embedded"} | summarize(embedded_runs))
        energy.append({"concurrency": concurrency, "mode": "queue"} | summarize(queue_runs) | added)
    predict = [
        {"workers": 1, "concurrency": 1, "load": "alone"} | summarize(alone_runs),
        *(
            {"workers": w, "concurrency": predict_concurrency, "load": "loaded"}
            | summarize(predict_runs[w])
            | {
                "cpu_cores_median": {
                    role: statistics.median(c[role] for c in predict_cores[w])
                    for role in predict_cores[w][0]
                }
            }
            for w in (1, 2)
        ),
    ]
    deadlines = []
    for mode in MODES:
        outcomes = deadline_runs[mode]
        deadlines.append(
            {
                "mode": mode,
                "heavy_statuses": [o["heavy_status"] for o in outcomes],
                "heavy_s_median": statistics.median(o["heavy_s"] for o in outcomes),
                "light_statuses": [o["light_status"] for o in outcomes],
                "light_s_median": statistics.median(o["light_s"] for o in outcomes),
                "light_s_max": max(o["light_s"] for o in outcomes),
                "runs": outcomes,
            }
        )

    def pick(concurrency: int, mode: str) -> dict[str, Any]:
        return next(r for r in energy if r["concurrency"] == concurrency and r["mode"] == mode)

    one, two = (next(r for r in predict[1:] if r["workers"] == w) for w in (1, 2))
    summary = {
        "added_p50_ms_c1": pick(1, "queue")["added_p50_ms"],
        "added_p99_ms_c1": pick(1, "queue")["added_p99_ms"],
        "throughput_ratio_c64_queue_over_embedded": pick(64, "queue")["throughput_rps"]
        / pick(64, "embedded")["throughput_rps"],
        "predict_alone_p50_ms": predict[0]["p50_median_ms"],
        "predict_throughput_2_over_1_workers": two["throughput_rps"] / one["throughput_rps"],
        "light_s_max": {d["mode"]: d["light_s_max"] for d in deadlines},
    }
    load_errors = sum(r["errors_total"] for r in [*energy, *predict])
    light_ok = all(
        set(d["heavy_statuses"]) == {504}
        and set(d["light_statuses"]) == {200}
        and d["light_s_max"] < LIGHT_BAR_S
        for d in deadlines
    )
    speedup = summary["predict_throughput_2_over_1_workers"]
    bars = {
        f"queue adds <= {ADDED_P50_BAR_MS} ms to the c1 /energy p50": (
            summary["added_p50_ms_c1"] <= ADDED_P50_BAR_MS
        ),
        f"2 workers >= {WORKER_SPEEDUP_BAR}x the /predict throughput of 1": (
            speedup >= WORKER_SPEEDUP_BAR
        ),
        f"light /predict after an expired /sample (504) < {LIGHT_BAR_S:.0f} s, both modes": (
            light_ok
        ),
        "every load request answered 2xx": load_errors == 0,
    }
    return {
        "model": "car",
        "cpu_count": os.cpu_count(),
        "seconds_per_run": seconds,
        "repeats": repeats,
        "predict_seconds_per_run": predict_seconds,
        "predict_concurrency": predict_concurrency,
        "predict_body": HEAVY_PREDICT,
        "predict_second_worker": "joins (or leaves) the same API and Redis; order alternates",
        "one_pair_energy": energy,
        "predict": predict,
        "heavy_then_light": {"heavy": HEAVY_SAMPLE, "light": LIGHT_PREDICT, "modes": deadlines},
        "summary": summary,
        "bars": bars,
        "log_dir": str(log_dir),
        "wall_s": time.monotonic() - started,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| workload | concurrency | mode | req/s | p50 ms | p99 ms | added p50 ms "
        "| added p99 ms | errors | client CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["one_pair_energy"]:
        added = (
            f"{r['added_p50_ms']:+.2f} | {r['added_p99_ms']:+.2f}" if "added_p50_ms" in r else "|"
        )
        lines.append(
            f"| 1-pair /energy | {r['concurrency']} | {r['mode']} | {r['throughput_rps']:.0f} "
            f"| {r['p50_median_ms']:.2f} | {r['p99_median_ms']:.2f} | {added} "
            f"| {r['errors_total']} | {r['client_cpu_us_per_request']:.0f} |"
        )
    for r in report["predict"]:
        workers = f"queue, {r['workers']} worker{'s' if r['workers'] > 1 else ''}"
        if r["load"] == "alone":
            workers += " (alone)"
        lines.append(
            f"| heavy /predict | {r['concurrency']} | {workers} | {r['throughput_rps']:.1f} "
            f"| {r['p50_median_ms']:.1f} | {r['p99_median_ms']:.1f} | | "
            f"| {r['errors_total']} | {r['client_cpu_us_per_request']:.0f} |"
        )
    lines += [
        "",
        "| heavy-then-light | heavy /sample status | heavy s (median) | light status "
        "| light s (median) | light s (max) |",
        "|---|---|---|---|---|---|",
    ]
    for d in report["heavy_then_light"]["modes"]:
        lines.append(
            f"| {d['mode']} | {', '.join(map(str, d['heavy_statuses']))} "
            f"| {d['heavy_s_median']:.2f} | {', '.join(map(str, d['light_statuses']))} "
            f"| {d['light_s_median']:.3f} | {d['light_s_max']:.3f} |"
        )
    lines.append("")
    for r in report["predict"][1:]:
        cores = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_cores_median"].items())
        lines.append(f"CPU cores busy, /predict with {r['workers']} worker(s): {cores}.")
    s = report["summary"]
    lines += [
        f"{report['repeats']} repeats, {report['seconds_per_run']:g} s per /energy run, "
        f"{report['predict_seconds_per_run']:g} s per /predict run, "
        f"{report['wall_s']:.0f} s in all; "
        f"{report['cpu_count']} cores shared by API, Redis, workers and client.",
        f"Queue adds {s['added_p50_ms_c1']:+.2f} ms (p50) and {s['added_p99_ms_c1']:+.2f} ms "
        f"(p99) at c1; c64 throughput queue/embedded = "
        f"{s['throughput_ratio_c64_queue_over_embedded']:.2f}; heavy /predict alone "
        f"{s['predict_alone_p50_ms']:.1f} ms p50; 2 workers / 1 worker = "
        f"{s['predict_throughput_2_over_1_workers']:.2f}x.",
        "Bars: " + "; ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in report["bars"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per /energy load run")
    parser.add_argument("--repeats", type=int, default=3, help="fresh process sets")
    parser.add_argument("--predict-seconds", type=float, default=4.0, help="per /predict run")
    parser.add_argument("--predict-concurrency", type=int, default=12)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    args = parser.parse_args(argv)
    report = run(
        args.seconds, args.repeats, args.predict_seconds, args.predict_concurrency, args.models_dir
    )
    save(args.out, "queue", report, markdown(report))
    return 0 if all(report["bars"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
