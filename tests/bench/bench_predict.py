"""Benchmark of POST /predict: mode recovery at default settings, batching on/off, ONNX/torch.

One run measures, over HTTP against real `ebm serve` processes:

(a) mode recovery at each model's *default* settings (a request sets only ``seed`` and
    ``method``), per method (gd, langevin, dfo, auto):
    - the analytic energies of tests/analytic.py, published into a temporary models dir:
      double-well (x0 uniform in [-1, 1], true modes (x0 +- 1, 0)) and eight-gaussians (true
      modes RING_CENTRES); recall = share of true modes with a prediction within HIT_RADIUS,
      precision = share of predictions within HIT_RADIUS of a true mode; one seeded request
      per draw;
    - the shipped `car` model on held-out situations drawn from its recipe's simulator (seed
      CAR_SEED; training used 0, the recipe's own held-out set 1000): success = both true
      continuations (swerve left / right) have a prediction within CAR_HIT_M; sent as a few
      multi-row requests;
(b) throughput of one-x requests on `car` (num_starts 8, then 64; steps 100; every request
    a different x and seed) at concurrency 1, 8 and 32, with cross-request batching on (the
    manifest's limits) and off (EBM_MAX_BATCH_SIZE=1): fresh server processes per repeat,
    measured in alternating order (two identical servers differ by 10-25% here), medians;
(c) the same 8-start workload at concurrency 1 and 32 on EBM_BACKEND=onnx versus torch
    (plus torch with unseeded requests at 32: see the torch note in the report).

The load generator is a small asyncio client on app.client.http1's raw keep-alive HTTP/1.1
connections (app.client.loadtest repeats one fixed body; here every request has its own x and
seed and the response's ``stats.coalesced_jobs`` is read back); its CPU per request is
reported, and so is the server process's.

    make bench                                     # all benchmarks
    python -m tests.bench.bench_predict [--seconds 3] [--repeats 3]
    python -m tests.bench.bench_predict --quick    # smoke run (~2 min), results to a temp dir
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import numpy as np
import orjson

from app.cli import recipe_module
from app.client.http1 import Connection, Target, encode_request, parse_url
from tests.servers import REPO, Server, start_server, stop_server

RESULTS = REPO / "tests" / "bench" / "results"
METHODS = ("gd", "langevin", "dfo", "auto")
HIT_RADIUS = 0.1  # analytic energies: a prediction "finds" a true mode within this distance
CAR_HIT_M = 0.5  # car: a continuation is found by a prediction within 0.5 m
CAR_SEED = 4242  # held-out situations; train.py uses 0 (training), 1000, 2000, 3000
LOAD_SEED = 777  # the throughput workload's x
CONCURRENCY = (1, 8, 32)
BACKEND_CONCURRENCY = (1, 32)
STEPS = 100


@dataclass(frozen=True)
class Config:
    analytic_requests: int = 50
    # the built-in langevin and dfo settings (car's manifest tunes only gd) search 1,024 and
    # 2,048 candidates per x: 20 rows a request stays under the default search-cost limit
    car_situations: int = 200
    car_chunk: int = 20
    seconds: float = 3.0  # measured phase of one load run
    repeats: int = 3  # fresh server sets; each mode is measured once per set
    quick: bool = False


QUICK = Config(
    analytic_requests=4, car_situations=20, car_chunk=10, seconds=0.5, repeats=1, quick=True
)


# --------------------------------------------------------------------------- set-up
def load_car_recipe(models_dir: Path) -> ModuleType:
    return recipe_module(models_dir, "car")


def car_only_dir(root: Path, models_dir: Path) -> Path:
    """A models dir holding only car's published versions: servers start faster."""
    target = root / "car-only"
    for version in (models_dir / "car").iterdir():
        if version.is_dir() and version.name.isdigit():
            shutil.copytree(version, target / "car" / version.name)
    return target


def start_servers(
    models_dir: Path, log_dir: Path, envs: dict[str, dict[str, str]]
) -> dict[str, Server]:
    """Start several servers at once (each loads its models and runs the parity probes)."""
    with ThreadPoolExecutor(len(envs)) as pool:
        futures = {
            k: pool.submit(start_server, models_dir, log_dir, **env) for k, env in envs.items()
        }
        servers: dict[str, Server] = {}
        errors = []
        for key, future in futures.items():
            try:
                servers[key] = future.result()
            except Exception as exc:  # stop the ones that did start before re-raising
                errors.append(exc)
    if errors:
        for server in servers.values():
            stop_server(server)
        raise errors[0]
    return servers


@contextmanager
def running(
    models_dir: Path, log_dir: Path, envs: dict[str, dict[str, str]]
) -> Iterator[dict[str, Server]]:
    servers = start_servers(models_dir, log_dir, envs)
    try:
        yield servers
    finally:
        for server in servers.values():
            stop_server(server)


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc; 0 where /proc is missing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------- (a) mode recovery
def predict(client: httpx.Client, model: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        f"/v1/models/{model}/predict",
        content=orjson.dumps(body),
        headers={"content-type": "application/json"},
    )
    if response.status_code != 200:
        raise RuntimeError(f"{model} {body.get('method')}: {response.status_code} {response.text}")
    result: dict[str, Any] = response.json()
    return result


@dataclass
class Recovery:
    """Tallies of one (model, method): true modes found, predictions that hit."""

    true_modes: int = 0
    found: int = 0
    predictions: int = 0
    hits: int = 0
    situations: int = 0
    all_found: int = 0  # situations (x) where every true mode was found
    requests: int = 0
    partial: int = 0
    server_ms: list[float] = field(default_factory=list)
    steps_run: list[int] = field(default_factory=list)
    errors_m: list[float] = field(default_factory=list)  # true mode -> nearest prediction
    resolved: set[str] = field(default_factory=set)

    def add(self, predicted: np.ndarray, truth: np.ndarray, radius: float) -> None:
        """``predicted [P, D]`` for one x against its true modes ``truth [T, D]``."""
        self.situations += 1
        self.true_modes += len(truth)
        self.predictions += len(predicted)
        if not len(predicted):
            self.errors_m += [float("inf")] * len(truth)
            return
        d = np.linalg.norm(predicted[:, None, :] - truth[None, :, :], axis=-1)  # [P, T]
        nearest = d.min(axis=0)
        self.errors_m += nearest.tolist()
        found = int((nearest <= radius).sum())
        self.found += found
        self.all_found += found == len(truth)
        self.hits += int((d.min(axis=1) <= radius).sum())

    def add_stats(self, stats: dict[str, Any]) -> None:
        self.requests += 1
        self.partial += bool(stats["partial"])
        self.server_ms.append(float(stats["time_ms"]))
        self.steps_run.append(int(stats["steps_run"]))
        self.resolved.add(str(stats["method"]))

    def summary(self, model: str, method: str, radius: float) -> dict[str, Any]:
        errors = np.asarray(self.errors_m)
        finite = errors[np.isfinite(errors)]
        return {
            "model": model,
            "method": method,
            "resolved_method": ",".join(sorted(self.resolved)),
            "hit_radius": radius,
            "requests": self.requests,
            "situations": self.situations,
            "recall": self.found / self.true_modes,
            "precision": self.hits / self.predictions if self.predictions else 0.0,
            "all_modes_found_share": self.all_found / self.situations,
            "predictions_per_x": self.predictions / self.situations,
            "error_m_median": float(np.median(finite)) if len(finite) else float("inf"),
            "error_m_p95": float(np.quantile(finite, 0.95)) if len(finite) else float("inf"),
            "server_ms_mean": statistics.fmean(self.server_ms),
            "steps_run_mean": statistics.fmean(self.steps_run),
            "partial_responses": self.partial,
        }


def ys(row: list[dict[str, Any]]) -> np.ndarray:
    return np.asarray([p["y"] for p in row], dtype=np.float64).reshape(len(row), -1)


def recovery_analytic(client: httpx.Client, requests: int) -> list[dict[str, Any]]:
    from tests.analytic import RING_CENTRES, double_well_minima

    rows = []
    x0s = np.random.default_rng(CAR_SEED).uniform(-1.0, 1.0, size=requests)
    for method in METHODS:
        tally = Recovery()
        for i, x0 in enumerate(x0s):
            out = predict(client, "double-well", {"x": [[float(x0)]], "seed": i, "method": method})
            tally.add(ys(out["predictions"][0]), double_well_minima(float(x0)), HIT_RADIUS)
            tally.add_stats(out["stats"])
        rows.append(tally.summary("double-well", method, HIT_RADIUS))
    for method in METHODS:
        tally = Recovery()
        for i in range(requests):
            out = predict(client, "eight-gaussians", {"seed": i, "method": method})
            tally.add(ys(out["predictions"][0]), RING_CENTRES, HIT_RADIUS)
            tally.add_stats(out["stats"])
        rows.append(tally.summary("eight-gaussians", method, HIT_RADIUS))
    return rows


def recovery_car(
    client: httpx.Client, recipe: ModuleType, situations: int, chunk: int
) -> list[dict[str, Any]]:
    x, _, _ = recipe.simulate(np.random.default_rng(CAR_SEED), situations)  # float32 [N, 3]
    left, right = recipe.continuations(x.astype(np.float64))
    truth = np.stack([left, right], axis=1)  # [N, 2, 2]
    rows = []
    for method in METHODS:
        tally = Recovery()
        for request, start in enumerate(range(0, situations, chunk)):
            part = slice(start, start + chunk)
            out = predict(client, "car", {"x": x[part].tolist(), "seed": request, "method": method})
            for row, true in zip(out["predictions"], truth[part], strict=True):
                tally.add(ys(row), true, CAR_HIT_M)
            tally.add_stats(out["stats"])
        rows.append(tally.summary("car", method, CAR_HIT_M))
    return rows


# ------------------------------------------------------------------ (b, c) load client
_COALESCED = re.compile(rb'"coalesced_jobs":(\d+)')
_STEPS_RUN = re.compile(rb'"steps_run":(\d+)')


@dataclass
class _Completion:
    end_ns: int
    latency_ns: int
    status: int
    coalesced: int  # 0 when the response has none (an error)
    steps_run: int
    partial: bool


@dataclass
class _State:
    stop: bool = False
    done: list[_Completion] = field(default_factory=list)
    failures_ns: list[int] = field(default_factory=list)  # connection errors and timeouts


async def _worker(
    conn: Connection,
    target: Target,
    requests: list[bytes],
    counter: Iterator[int],
    state: _State,
    timeout_s: float,
) -> None:
    """Closed loop: one request at a time on this connection until ``state.stop``."""
    clock = time.perf_counter_ns
    while not state.stop:
        request = requests[next(counter) % len(requests)]
        start = clock()
        try:
            proto = conn.proto
            if proto is None or proto.closed:
                proto = await conn.open(target, timeout_s)
            status, body, keep_alive = await asyncio.wait_for(proto.send(request), timeout_s)
        except (OSError, ValueError, TimeoutError):
            conn.abort()
            state.failures_ns.append(clock())
            await asyncio.sleep(0.01)
            continue
        end = clock()
        match = _COALESCED.search(body) if status == 200 else None
        steps = _STEPS_RUN.search(body) if match else None
        state.done.append(
            _Completion(
                end,
                end - start,
                status,
                int(match.group(1)) if match else 0,
                int(steps.group(1)) if steps else 0,
                b'"partial":true' in body,
            )
        )
        if not keep_alive:
            conn.abort()


async def _load(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    seconds: float,
    pid: int,
    timeout_s: float,
    drain: bool,
) -> dict[str, Any]:
    """Steady-state closed-loop load: ``concurrency`` connections send one request after
    another. Warm-up lasts until ``concurrency`` answers have come back (at most ``seconds``,
    at least 0.2 s); the measured window then lasts ``seconds``, stretched to 4 mean warm-up
    latencies (at most 2 x ``seconds``) so that slow requests complete several times inside
    it. Only requests completing inside the window count: neither the ramp-up nor the drain
    at the end (both long when one request takes a second) skews req/s. ``drain``: wait for
    the requests still in flight afterwards (the server must be idle for the next run);
    without it the caller must stop the server."""
    target = parse_url(url)
    requests = [encode_request(target, body, None) for body in bodies]
    counter = itertools.count()  # every run walks the same sequence of bodies
    conns = [Connection() for _ in range(concurrency)]
    await asyncio.gather(*(conn.open(target, timeout_s) for conn in conns))
    state = _State()
    tasks = [
        asyncio.ensure_future(_worker(c, target, requests, counter, state, timeout_s))
        for c in conns
    ]
    try:
        started = time.perf_counter()
        while time.perf_counter() - started < 0.2 or (
            len(state.done) < concurrency and time.perf_counter() - started < seconds
        ):
            await asyncio.sleep(0.005)
            if len(state.failures_ns) > 10 * concurrency:
                raise RuntimeError(f"{url}: the server does not answer")
        warm = [d.latency_ns / 1e9 for d in state.done] or [time.perf_counter() - started]
        window_s = min(max(seconds, 4 * statistics.fmean(warm)), 2 * seconds)
        cpu0, server0 = time.process_time(), process_cpu_s(pid)
        t0 = time.perf_counter_ns()
        await asyncio.sleep(window_s)
        t1 = time.perf_counter_ns()
        cpu, server_cpu = time.process_time() - cpu0, process_cpu_s(pid) - server0
        state.stop = True
        if drain:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
    finally:
        for task in tasks:
            task.cancel()
        for conn in conns:
            conn.abort()
    window = (t1 - t0) / 1e9
    inside = [d for d in state.done if t0 <= d.end_ns < t1]
    ok = [d for d in inside if d.status == 200 and d.coalesced]
    failures = sum(t0 <= f < t1 for f in state.failures_ns)
    done = len(inside)
    lat = np.asarray([d.latency_ns for d in inside], np.float64) / 1e6 if done else np.zeros(1)
    p50, p90, p99 = (float(v) for v in np.percentile(lat, [50, 90, 99]))
    hist = Counter(d.coalesced for d in ok)
    return {
        "requests": done,
        "errors": done - len(ok) + failures,
        "partial": sum(d.partial for d in inside),
        "status_counts": dict(sorted(Counter(str(d.status) for d in inside).items())),
        "duration_s": window,
        "throughput_rps": len(ok) / window,
        # Closed loop without think time: throughput = concurrency / mean latency (Little).
        "littles_law_rps": concurrency * 1e3 / float(lat.mean()) if done else 0.0,
        "latency_ms_p50": p50,
        "latency_ms_p90": p90,
        "latency_ms_p99": p99,
        "latency_ms_mean": float(lat.mean()),
        "client_cpu_us_per_request": cpu * 1e6 / max(done, 1),
        "client_cpu_share": cpu / window,
        "server_cpu_ms_per_request": server_cpu * 1e3 / max(done, 1),
        "server_cpu_share": server_cpu / window,
        "coalesced_mean": statistics.fmean(d.coalesced for d in ok) if ok else 0.0,
        "coalesced_alone_share": hist.get(1, 0) / max(len(ok), 1),
        "coalesced_hist": {str(k): v for k, v in sorted(hist.items())},
        "steps_run_mean": statistics.fmean(d.steps_run for d in ok) if ok else 0.0,
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def load(
    server: Server, bodies: list[bytes], concurrency: int, seconds: float, drain: bool = True
) -> dict[str, Any]:
    url = f"{server.url}/v1/models/car/predict"
    coro = _load(url, bodies, concurrency, seconds, server.process.pid, 120.0, drain)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(coro)


def load_bodies(recipe: ModuleType, starts: int, seeded: bool, n: int = 1024) -> list[bytes]:
    """n one-x request bodies, each with its own x (and seed, when ``seeded``)."""
    x = np.random.default_rng(LOAD_SEED).uniform(recipe.X_LOW, recipe.X_HIGH, size=(n, 3))
    bodies = []
    for i, row in enumerate(np.round(x, 4).tolist()):
        body: dict[str, Any] = {"x": [row], "num_starts": starts, "steps": STEPS}
        if seeded:
            body["seed"] = i
        bodies.append(orjson.dumps(body))
    return bodies


# ------------------------------------------------------------------------ the run
KEYS = (
    "throughput_rps",
    "latency_ms_p50",
    "latency_ms_p99",
    "coalesced_mean",
    "coalesced_alone_share",
    "client_cpu_us_per_request",
    "client_cpu_share",
    "server_cpu_ms_per_request",
    "server_cpu_share",
    "steps_run_mean",
    "littles_law_rps",
)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric's median over repeats (each repeat ran on fresh server processes)."""
    out: dict[str, Any] = {k: statistics.median(r[k] for r in runs) for k in KEYS}
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    out["partial"] = sum(r["partial"] for r in runs)
    return out


def ratio(a: float, b: float) -> float:
    """a / b; inf when b is 0 (nothing completed in the window) and a is not."""
    if b == 0:
        return float("inf") if a else float("nan")
    return a / b


def throughput(config: Config, car_dir: Path, log_dir: Path, recipe: ModuleType) -> dict[str, Any]:
    bodies = {
        8: load_bodies(recipe, 8, seeded=True),
        64: load_bodies(recipe, 64, seeded=True),
        "8u": load_bodies(recipe, 8, seeded=False),
    }
    envs = {
        "on": {"EBM_BACKEND": "onnx"},
        "off": {"EBM_BACKEND": "onnx", "EBM_MAX_BATCH_SIZE": "1"},
        "torch": {"EBM_BACKEND": "torch"},
    }
    # (workload, concurrency, [(server key, body set)]): on and off alternate per repeat.
    cases: list[tuple[str, int, list[tuple[str, Any]]]] = [
        (f"{starts} starts", c, [("on", starts), ("off", starts)])
        for starts in (8, 64)
        for c in CONCURRENCY
    ]
    # Backends: the onnx side is the 8-start "on" run; torch goes last in each server set,
    # seeded c32 at the very end: it is slow (see the report) and is not drained, its server
    # is killed instead.
    torch_cases = [("torch", 1, 8), ("torch-unseeded", 32, "8u"), ("torch", 32, 8)]

    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}

    def measure(repeat: int, workload: str, c: int, key: str, server: Server, **kw: Any) -> None:
        result = load(server, bodies[kw.pop("body")], c, config.seconds, **kw)
        result["repeat"] = repeat
        runs.setdefault((workload, c, key), []).append(result)
        print(
            f"  repeat {repeat} {workload:9} c{c:<3} {key:15} "
            f"{result['throughput_rps']:7.1f} req/s  p50 {result['latency_ms_p50']:7.1f} ms  "
            f"coalesced {result['coalesced_mean']:5.1f}  steps {result['steps_run_mean']:5.1f}",
            flush=True,
        )

    for repeat in range(config.repeats):
        with running(car_dir, log_dir, envs) as servers:
            for workload, c, group in cases:
                shift = repeat % len(group)  # neither mode always goes first
                for key, body in group[shift:] + group[:shift]:
                    measure(repeat, workload, c, key, servers[key], body=body)
            for i, (key, c, body) in enumerate(torch_cases):
                last = i == len(torch_cases) - 1
                measure(repeat, "8 starts", c, key, servers["torch"], body=body, drain=not last)
            servers["torch"].process.kill()  # it may still hold undrained work
    rows = [
        {"workload": w, "concurrency": c, "server": k} | medians(r) for (w, c, k), r in runs.items()
    ]

    def pick(workload: str, c: int, key: str) -> dict[str, Any]:
        return next(
            r for r in rows if (r["workload"], r["concurrency"], r["server"]) == (workload, c, key)
        )

    def paired(workload: str, c: int, a: str, b: str) -> list[float]:
        """Per-repeat ratios a/b (same server set): how stable the ratio is."""
        pairs = zip(runs[(workload, c, a)], runs[(workload, c, b)], strict=True)
        return [ratio(x["throughput_rps"], y["throughput_rps"]) for x, y in pairs]

    def rps(workload: str, c: int, key: str) -> float:
        return float(pick(workload, c, key)["throughput_rps"])

    ratios = {
        f"{w} c{c}": {
            "on_over_off": ratio(rps(w, c, "on"), rps(w, c, "off")),
            "per_repeat": paired(w, c, "on", "off"),
        }
        for w in ("8 starts", "64 starts")
        for c in CONCURRENCY
    }
    backends = {
        f"c{c}": {
            "onnx_over_torch": ratio(rps("8 starts", c, "on"), rps("8 starts", c, "torch")),
            "per_repeat": paired("8 starts", c, "on", "torch"),
        }
        for c in BACKEND_CONCURRENCY
    }
    versions = sorted(int(p.name) for p in (car_dir / "car").iterdir() if p.name.isdigit())
    manifest = json.loads((car_dir / "car" / str(versions[-1]) / "manifest.json").read_text())
    return {
        "batching": manifest["batching"],
        "rows": rows,
        "ratios": ratios,
        "backends": backends,
        "runs": [
            {"workload": w, "concurrency": c, "server": k, "runs": r}
            for (w, c, k), r in runs.items()
        ],
    }


def run(config: Config, models_dir: Path) -> dict[str, Any]:
    from tests.analytic import publish_search_models

    started = time.perf_counter()
    load_before = os.getloadavg()
    recipe = load_car_recipe(models_dir)
    root = Path(tempfile.mkdtemp(prefix="ebm-bench-predict-"))
    log_dir = root / "logs"
    log_dir.mkdir()
    quality_dir = root / "quality"
    publish_search_models(quality_dir)
    car_dir = car_only_dir(root, models_dir)
    shutil.copytree(car_dir / "car", quality_dir / "car")
    print(f"  set-up {time.perf_counter() - started:.0f} s", flush=True)

    t = time.perf_counter()
    with (
        running(quality_dir, log_dir, {"q": {"EBM_BACKEND": "onnx"}}) as servers,
        httpx.Client(base_url=servers["q"].url, timeout=300) as client,
    ):
        recovery = recovery_analytic(client, config.analytic_requests)
        recovery += recovery_car(client, recipe, config.car_situations, config.car_chunk)
    recovery_s = time.perf_counter() - t
    for r in recovery:
        print(
            f"  {r['model']:15} {r['method']:8} recall {r['recall']:.3f} precision "
            f"{r['precision']:.3f} all-found {r['all_modes_found_share']:.3f}",
            flush=True,
        )

    t = time.perf_counter()
    load_report = throughput(config, car_dir, log_dir, recipe)
    throughput_s = time.perf_counter() - t
    shutil.rmtree(root, ignore_errors=True)

    car_auto = next(r for r in recovery if r["model"] == "car" and r["method"] == "auto")
    ratios = load_report["ratios"]
    bars = {
        f"car, default settings (auto): both continuations within {CAR_HIT_M} m >= 99%": car_auto[
            "all_modes_found_share"
        ]
        >= 0.99,
        "8 starts, c32: batching on >= 3x off": ratios["8 starts c32"]["on_over_off"] >= 3.0,
        "64 starts, c32: batching on >= off": ratios["64 starts c32"]["on_over_off"] >= 1.0,
    }
    return {
        "date": date.today().isoformat(),
        "config": dataclasses.asdict(config),
        "cpu_count": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "duration_s": {
            "total": time.perf_counter() - started,
            "recovery": recovery_s,
            "throughput": throughput_s,
        },
        "recovery": recovery,
        "throughput": load_report,
        "bars": bars,
    }


# ----------------------------------------------------------------------- reporting
def markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    quick = " (--quick: smoke numbers, not for the README)" if cfg["quick"] else ""
    load_avg = ", ".join(f"{v:.1f}" for v in report["loadavg_before"])
    lines = [
        f"Measured {report['date']} on a {report['cpu_count']}-core machine{quick}, "
        "`python -m tests.bench.bench_predict` (or `make bench`); load average before "
        f"the run {load_avg}; total {report['duration_s']['total']:.0f} s.",
        "",
        f"**Mode recovery at default settings** (requests set only `seed` and `method`; "
        f"backend onnx). Analytic energies: {cfg['analytic_requests']} seeded requests each, "
        f"hit radius {HIT_RADIUS}; double-well x0 uniform in [-1, 1]. car: "
        f"{cfg['car_situations']} held-out situations (recipe simulator, seed {CAR_SEED}) in "
        f"requests of {cfg['car_chunk']} rows, hit radius {CAR_HIT_M} m; *all found* is the "
        "share of situations with both continuations found.",
        "",
        "| model | method | recall | precision | all found | predictions/x "
        "| median error | steps run | server ms/request |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["recovery"]:
        method = r["method"] if r["method"] != "auto" else f"auto ({r['resolved_method']})"
        partial = f" ({r['partial_responses']} partial)" if r["partial_responses"] else ""
        lines.append(
            f"| {r['model']} | {method} | {r['recall']:.3f} | {r['precision']:.3f} "
            f"| {r['all_modes_found_share']:.3f} | {r['predictions_per_x']:.2f} "
            f"| {r['error_m_median']:.3f} | {r['steps_run_mean']:.0f} "
            f"| {r['server_ms_mean']:.0f}{partial} |"
        )
    tp = report["throughput"]
    lines += [
        "",
        f"**Throughput of one-x requests on car** ({STEPS} steps, gd; every request its own x "
        f"and seed; {cfg['seconds']:g} s per load run, {cfg['repeats']} repeats on fresh "
        "server processes, alternating order, medians; only requests completing inside the "
        "window after a warm-up count). on = the manifest's batching limits "
        f"({tp['batching']['max_batch_size']} rows, {tp['batching']['max_delay_ms']:g} ms); "
        "off = `EBM_MAX_BATCH_SIZE=1`. *coalesced* = mean `stats.coalesced_jobs` of the "
        "responses; *alone* = share of responses computed alone; *steps* = mean "
        "`stats.steps_run` (the manifest's `tol` stops converged searches early).",
        "",
        "| workload | concurrency | batching | req/s | p50 ms | p99 ms | coalesced | alone "
        "| steps | client CPU us/req | server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"on": 0, "off": 1}
    for r in sorted(
        (r for r in tp["rows"] if r["server"] in order),
        key=lambda r: (r["workload"] != "8 starts", r["concurrency"], order[r["server"]]),
    ):
        lines.append(_load_row([r["workload"], r["concurrency"], r["server"]], r))
    ratio_text = "; ".join(f"{k}: {v['on_over_off']:.2f}" for k, v in tp["ratios"].items())
    lines += ["", f"Throughput on/off: {ratio_text}.", ""]
    lines += [
        "**Backends** (8 starts, batching on, seeded requests unless said): onnx is the "
        "on row above; torch = `EBM_BACKEND=torch`. The torch backend fails the load-time "
        "row-independence check (a row's bits depend on the batch size), so seeded requests "
        "run alone to replay bit for bit (coalesced 1); unseeded ones share batches.",
        "",
        "| backend | concurrency | req/s | p50 ms | p99 ms | coalesced | alone "
        "| steps | client CPU us/req | server CPU ms/req |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in BACKEND_CONCURRENCY:
        for key, label in (
            ("on", "onnx"),
            ("torch", "torch"),
            ("torch-unseeded", "torch, unseeded"),
        ):
            row = next(
                (
                    r
                    for r in tp["rows"]
                    if r["workload"] == "8 starts" and r["concurrency"] == c and r["server"] == key
                ),
                None,
            )
            if row is not None:
                lines.append(_load_row([label, c], row))
    backend_text = "; ".join(f"{k}: {v['onnx_over_torch']:.2f}" for k, v in tp["backends"].items())
    errors = sum(r["errors"] for r in tp["rows"])
    partial = sum(r["partial"] for r in tp["rows"])
    lines += [
        "",
        f"Throughput onnx/torch (seeded): {backend_text}. Load errors: {errors}; partial "
        f"answers: {partial}.",
        "Bars: " + "; ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in report["bars"].items()),
    ]
    return "\n".join(lines)


def _load_row(head: list[Any], r: dict[str, Any]) -> str:
    rps = r["throughput_rps"]
    cells = [
        *head,
        f"{rps:.0f}" if rps >= 10 else f"{rps:.1f}",
        f"{r['latency_ms_p50']:.1f}",
        f"{r['latency_ms_p99']:.1f}",
        f"{r['coalesced_mean']:.1f}",
        f"{r['coalesced_alone_share']:.0%}",
        f"{r['steps_run_mean']:.0f}",
        f"{r['client_cpu_us_per_request']:.0f}",
        f"{r['server_cpu_ms_per_request']:.1f}",
    ]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def finite(value: Any) -> Any:
    """The report with inf and NaN as null: JSON has no literal for them."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; results to a temp dir")
    parser.add_argument("--seconds", type=float, help="per load run")
    parser.add_argument("--repeats", type=int, help="fresh server sets")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--out", type=Path, help="where results are written")
    args = parser.parse_args(argv)
    config = dataclasses.replace(QUICK if args.quick else Config(), quick=args.quick)
    if args.seconds is not None:
        config = dataclasses.replace(config, seconds=args.seconds)
    if args.repeats is not None:
        config = dataclasses.replace(config, repeats=args.repeats)
    out = args.out or (Path(tempfile.mkdtemp(prefix="ebm-bench-quick-")) if args.quick else RESULTS)
    report = run(config, args.models_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict.json").write_text(json.dumps(finite(report), indent=2) + "\n")
    table = markdown(report)
    (out / "predict.md").write_text(table + "\n")
    print(table)
    print(f"(written to {out}/predict.{{md,json}})")
    return 0 if all(report["bars"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
