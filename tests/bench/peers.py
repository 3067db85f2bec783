"""Peer benchmark: ebm-serve against a plain FastAPI endpoint and LitServe, one network.

The network is an MLP energy E(x, y), x 4-d, y 2-d, input concat(x, y), 3 hidden layers
of 256 with SiLU, a scalar out; torch with a fixed seed and *random weights* (this measures
speed, not quality), published into a temporary models dir by the repository's own tooling
(``app.training.publish``: manifest, energy+gradient graph, energy-only ``score.onnx``,
torch program, probe). The servers, each its own fresh process per run:

- ebm-serve (``ebm serve``, embedded mode, onnxruntime), JSON and msgpack bodies
  (``app.binary.pack``: tensor maps) on the same process;
- a plain FastAPI endpoint (``tests.bench.peer_servers.plain``): pydantic body, one
  onnxruntime call per request;
- LitServe (``tests.bench.peer_servers.litserve_app``): one CPU worker, batches of up to 64
  requests, 5 ms batch timeout.

The peers load the same ``score.onnx`` with the session options ebm-serve uses (one intra-op
thread, no spinning) and serve with the same uvicorn settings (one process, uvloop,
httptools). One load client for all (``app.client.loadtest``: raw keep-alive HTTP/1.1,
closed loop), on the same machine as the servers.

- one-pair requests at concurrency 1, 16 and 64: req/s, p50, p99;
- one request of 4,096 pairs, repeated one after another: rows/s (ebm-serve JSON and msgpack,
  plain FastAPI, and LitServe for reference);
- the same graph in process on ready float32 arrays (onnxruntime, best of several rounds):
  the ceiling for any server.

Servers are measured one at a time (each alone on the machine), in the order ebm-serve,
plain, LitServe in odd runs and reversed in even runs; the tables give the medians over runs
and every run's req/s. Before its load runs, every server answers a one-pair and the 4,096-pair
request, and its energies must match onnxruntime's in process. A variant that does not
answer (msgpack while the server side is unfinished) is reported as not available, with the
reason, and its bars as missed.

    make bench            # all benchmarks
    python -m tests.bench.peers [--quick] [--seconds 5] [--runs 2]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import torch
from torch import nn

from app.binary import MSGPACK, pack, unpack
from app.client.loadtest import LoadResult, run_load_sync
from app.registry.manifest import Card, TensorSpec, Training
from app.training.publish import SCORE_ONNX, publish
from tests.bench.peer_servers import onnx_session
from tests.bench.saving import save
from tests.servers import REPO, free_port, start_server, stop_server

RESULTS = REPO / "tests" / "bench" / "results"
MODEL = "mlp"
X_DIM, Y_DIM, HIDDEN, LAYERS = 4, 2, 256, 3
BULK_ROWS = 4096
CONCURRENCY = (1, 16, 64)
SERVERS = ("ebm-serve", "plain", "litserve")
# Energies cross JSON as float32's shortest repr: a relative 1e-6 is far above the rounding,
# far below any real difference between two computations.
RTOL, ATOL = 1e-5, 1e-6

# --- the bars of the issue --------------------------------------------------------------
C64_OVER_PLAIN = 1.0
C64_OVER_LITSERVE = 3.0
C1_P50_OVER_PLAIN = 1.15
BULK_MSGPACK_OVER_RAW = 0.5


# --- the network -------------------------------------------------------------------------
class MLPEnergy(nn.Module):
    """E(x, y) = MLP(concat(x, y)): 6 -> 256 -> 256 -> 256 -> 1, SiLU between."""

    def __init__(self) -> None:
        super().__init__()
        widths = [X_DIM + Y_DIM, *[HIDDEN] * LAYERS]
        layers: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(widths):
            layers += [nn.Linear(n_in, n_out), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(HIDDEN, 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        energy: torch.Tensor = self.net(torch.cat([x, y], dim=-1)).squeeze(-1)
        return energy


def publish_mlp(models_dir: Path) -> Path:
    """Publish the MLP as ``mlp`` version 1; returns its energy-only graph."""
    torch.manual_seed(0)  # random weights, fixed: every run serves the same network
    gen = torch.Generator().manual_seed(1)
    publish(
        MLPEnergy(),
        models_dir=models_dir,
        name=MODEL,
        version=1,
        x=TensorSpec(shape=[X_DIM]),
        y=TensorSpec(shape=[Y_DIM], low=[-3.0] * Y_DIM, high=[3.0] * Y_DIM),
        # 5 rows: at least 2, and equal to no per-row size (see publish's docstring).
        probe_inputs={"x": torch.randn(5, X_DIM, generator=gen), "y": torch.randn(5, Y_DIM)},
        card=Card(task="speed benchmark", method="random weights (untrained)"),
        training=Training(recipe="tests/bench/peers.py", seed=0, method="none", data="none"),
        metrics={},
        description="MLP energy with random weights, for the peer benchmark",
    )
    return models_dir / MODEL / "1" / SCORE_ONNX


# --- requests ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    name: str
    server: str
    path: str
    msgpack: bool = False

    def headers(self) -> dict[str, str]:
        if self.msgpack:
            return {"Content-Type": MSGPACK, "Accept": MSGPACK}
        return {"Content-Type": "application/json"}

    def body(self, pairs: dict[str, np.ndarray]) -> bytes:
        if self.msgpack:
            return pack({n: a.astype(np.float32) for n, a in pairs.items()})
        return orjson.dumps({n: a.tolist() for n, a in pairs.items()})

    def energies(self, body: bytes) -> np.ndarray:
        answer = unpack(body) if self.msgpack else orjson.loads(body)
        return np.asarray(answer["energy"], dtype=np.float64)


VARIANTS = (
    Variant("ebm-serve, JSON", "ebm-serve", f"/v1/models/{MODEL}/energy"),
    Variant("ebm-serve, msgpack", "ebm-serve", f"/v1/models/{MODEL}/energy", msgpack=True),
    Variant("plain FastAPI", "plain", "/energy"),
    Variant("LitServe, batch 64", "litserve", "/predict"),
)
EBM_JSON, EBM_MSGPACK, PLAIN, LITSERVE = (v.name for v in VARIANTS)


def sample_pairs(rows: int, seed: int) -> dict[str, np.ndarray]:
    """Rounded to 4 decimals, so the JSON text is short and parses to the same float32."""
    rng = np.random.default_rng(seed)
    return {
        "x": np.round(rng.normal(size=(rows, X_DIM)), 4),
        "y": np.round(rng.uniform(-3, 3, size=(rows, Y_DIM)), 4),
    }


@dataclass(frozen=True)
class Workload:
    """The two request bodies' pairs and the energies onnxruntime gives for them in process."""

    one_pair: dict[str, np.ndarray]
    bulk: dict[str, np.ndarray]
    one_pair_energy: np.ndarray
    bulk_energy: np.ndarray


def make_workload(score_onnx: Path) -> Workload:
    session = onnx_session(score_onnx)

    def energy(pairs: dict[str, np.ndarray]) -> np.ndarray:
        feed = {n: a.astype(np.float32) for n, a in pairs.items()}
        return np.asarray(session.run(["energy"], feed)[0], dtype=np.float64)

    one, bulk = sample_pairs(1, seed=0), sample_pairs(BULK_ROWS, seed=1)
    return Workload(one, bulk, energy(one), energy(bulk))


def raw_rows_per_s(score_onnx: Path, pairs: dict[str, np.ndarray], rounds: int) -> float:
    """The graph alone on ready float32 arrays, same session options: the best of
    ``rounds`` rounds of ~0.3 s (the best is the least disturbed by the machine)."""
    session = onnx_session(score_onnx)
    feed = {n: a.astype(np.float32) for n, a in pairs.items()}
    rows = len(feed["x"])
    for _ in range(3):
        session.run(["energy"], feed)
    best = 0.0
    for _ in range(rounds):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < 0.3:
            session.run(["energy"], feed)
            calls += 1
        best = max(best, calls * rows / elapsed)
    return best


# --- servers ----------------------------------------------------------------------------
PEERS = {
    "plain": ("tests.bench.peer_servers.plain", "/healthz"),
    "litserve": ("tests.bench.peer_servers.litserve_app", "/health"),
}


def start_peer(server: str, score_onnx: Path, log_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A peer in its own process group (LitServe forks an API server and a worker, and all
    of them must go at the end); returns once its health endpoint answers 200 (LitServe
    answers 503 until its worker has run setup)."""
    module, health = PEERS[server]
    port = free_port()
    log = log_dir / f"{server}-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--model", str(score_onnx), "--port", str(port)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server} exited early:\n{log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url + health, timeout=1).status_code == 200:
                return process, url
        time.sleep(0.2)
    stop_peer(process)
    raise RuntimeError(f"{server} did not become healthy:\n{log.read_text(errors='replace')}")


def stop_peer(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the peer's process group, SIGKILL to whatever is left after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the group's other members (LitServe's children)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def wait_ready(url: str) -> None:
    """start_server returns on a 503 /readyz too (tests want failing models); here the model
    must serve before the first request."""
    deadline = time.monotonic() + 60
    while httpx.get(f"{url}/readyz", timeout=5).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("ebm-serve did not become ready")
        time.sleep(0.1)


@contextlib.contextmanager
def serving(server: str, models_dir: Path, score_onnx: Path, log_dir: Path) -> Iterator[str]:
    """A fresh server process for one measurement run, always stopped afterwards."""
    if server == "ebm-serve":
        ebm = start_server(models_dir, log_dir, EBM_BACKEND="onnx")
        try:
            wait_ready(ebm.url)
            yield ebm.url
        finally:
            stop_server(ebm)
        return
    process, url = start_peer(server, score_onnx, log_dir)
    try:
        yield url
    finally:
        stop_peer(process)


# --- measuring --------------------------------------------------------------------------
def unavailable_reason(variant: Variant, url: str, work: Workload) -> str | None:
    """None when the variant answers both requests with onnxruntime's energies, else why not."""
    checks = ((work.one_pair, work.one_pair_energy), (work.bulk, work.bulk_energy))
    with httpx.Client(base_url=url, timeout=60) as client:
        for pairs, expected in checks:
            rows = len(expected)
            try:
                response = client.post(
                    variant.path, content=variant.body(pairs), headers=variant.headers()
                )
            except httpx.HTTPError as exc:
                return f"{rows}-pair request failed: {exc!r}"
            if response.status_code != 200:
                return f"{rows}-pair request: HTTP {response.status_code}: {response.text[:300]}"
            try:
                got = variant.energies(response.content)
            except (ValueError, KeyError, TypeError) as exc:
                kind = response.headers.get("content-type")
                return f"{rows}-pair reply ({kind}) does not decode: {exc!r}"
            if got.shape != expected.shape or not np.allclose(got, expected, RTOL, ATOL):
                return f"{rows}-pair energies differ from onnxruntime's in process"
    return None


def load(
    variant: Variant, url: str, body: bytes, concurrency: int, seconds: float, warmup: int
) -> LoadResult:
    return run_load_sync(
        url + variant.path,
        body,
        concurrency=concurrency,
        duration_s=seconds,
        warmup_requests=warmup,
        headers=variant.headers(),
    )


@dataclass
class Measurements:
    """Every run's results, by variant: one-pair load per concurrency, and the bulk request."""

    one_pair: dict[tuple[str, int], list[LoadResult]]
    bulk: dict[str, list[LoadResult]]
    unavailable: dict[str, list[str]]


def measure_server(
    variants: list[Variant], url: str, work: Workload, seconds: float, into: Measurements
) -> None:
    ready = []
    for variant in variants:
        reason = unavailable_reason(variant, url, work)
        if reason is None:
            ready.append(variant)
        else:
            into.unavailable.setdefault(variant.name, []).append(reason)
            print(f"   {variant.name}: not available: {reason}")
    for concurrency in CONCURRENCY:
        for variant in ready:  # alternated with the other variant of the same server
            body = variant.body(work.one_pair)
            result = load(variant, url, body, concurrency, seconds, max(50, 4 * concurrency))
            into.one_pair.setdefault((variant.name, concurrency), []).append(result)
            print(
                f"   {variant.name:<20} c={concurrency:<3} {result.throughput_rps:8.0f} req/s "
                f"p50 {result.latency_ms_p50:7.2f} ms  p99 {result.latency_ms_p99:7.2f} ms"
            )
    for variant in ready:
        result = load(variant, url, variant.body(work.bulk), 1, seconds, warmup=3)
        into.bulk.setdefault(variant.name, []).append(result)
        print(f"   {variant.name:<20} 4,096 pairs {result.throughput_rps * BULK_ROWS:10.0f} rows/s")


def measure(
    runs: int, seconds: float, models_dir: Path, score_onnx: Path, work: Workload
) -> Measurements:
    into = Measurements({}, {}, {})
    log_dir = Path(tempfile.mkdtemp(prefix="ebm-peers-logs-"))
    for run in range(runs):
        # Reversed every other run: a server measured first and one measured last meet
        # different machines (caches, thermal state, other tenants) and trade places.
        order = SERVERS if run % 2 == 0 else SERVERS[::-1]
        for server in order:
            print(f"== run {run + 1}/{runs}: {server}")
            variants = [v for v in VARIANTS if v.server == server]
            if run % 2:
                variants.reverse()
            with serving(server, models_dir, score_onnx, log_dir) as url:
                measure_server(variants, url, work, seconds, into)
    print(f"(server logs: {log_dir})")
    return into


# --- the report -------------------------------------------------------------------------
def _median(results: list[LoadResult], key: Callable[[LoadResult], float]) -> float:
    return float(statistics.median(key(r) for r in results))


def summarise_load(results: list[LoadResult], rows_per_request: int = 1) -> dict[str, Any]:
    return {
        "throughput_rps": _median(results, lambda r: r.throughput_rps),
        "rows_per_s": _median(results, lambda r: r.throughput_rps) * rows_per_request,
        "latency_ms_p50": _median(results, lambda r: r.latency_ms_p50),
        "latency_ms_p99": _median(results, lambda r: r.latency_ms_p99),
        "client_cpu_us_per_request": _median(results, lambda r: r.client_cpu_us_per_request),
        "errors": sum(r.errors for r in results),
        "throughput_rps_per_run": [r.throughput_rps for r in results],
        "runs": [r.as_dict() for r in results],
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def summarise(m: Measurements, raw: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The medians per variant and load point, then the ratios the bars read."""
    one_pair = {f"{name} c={c}": summarise_load(rs) for (name, c), rs in m.one_pair.items()}
    bulk = {name: summarise_load(rs, BULK_ROWS) for name, rs in m.bulk.items()}

    def get(name: str, c: int, key: str) -> float | None:
        cell = one_pair.get(f"{name} c={c}")
        return None if cell is None else float(cell[key])

    def bulk_rows(name: str) -> float | None:
        return bulk[name]["rows_per_s"] if name in bulk else None

    ratios: dict[str, float | None] = {
        "c64 req/s, ebm-serve JSON / plain": ratio(
            get(EBM_JSON, 64, "throughput_rps"), get(PLAIN, 64, "throughput_rps")
        ),
        "c64 req/s, ebm-serve JSON / LitServe": ratio(
            get(EBM_JSON, 64, "throughput_rps"), get(LITSERVE, 64, "throughput_rps")
        ),
        "c64 p99, ebm-serve JSON / plain": ratio(
            get(EBM_JSON, 64, "latency_ms_p99"), get(PLAIN, 64, "latency_ms_p99")
        ),
        "c64 p99, ebm-serve JSON / LitServe": ratio(
            get(EBM_JSON, 64, "latency_ms_p99"), get(LITSERVE, 64, "latency_ms_p99")
        ),
        "c1 p50, ebm-serve JSON / plain": ratio(
            get(EBM_JSON, 1, "latency_ms_p50"), get(PLAIN, 1, "latency_ms_p50")
        ),
        "c64 req/s, ebm-serve msgpack / plain": ratio(
            get(EBM_MSGPACK, 64, "throughput_rps"), get(PLAIN, 64, "throughput_rps")
        ),
        "4,096 pairs rows/s, ebm-serve msgpack / raw": ratio(bulk_rows(EBM_MSGPACK), raw),
        "4,096 pairs rows/s, ebm-serve JSON / raw": ratio(bulk_rows(EBM_JSON), raw),
        "4,096 pairs rows/s, plain / raw": ratio(bulk_rows(PLAIN), raw),
        "4,096 pairs rows/s, LitServe / raw": ratio(bulk_rows(LITSERVE), raw),
    }
    return {"one_pair": one_pair, "bulk": bulk}, ratios


def judge(
    ratios: dict[str, float | None], m: Measurements, tables: dict[str, Any]
) -> dict[str, Any]:
    """Each bar: met (True), missed (False), with the figure it read."""

    def at_least(key: str, bar: float) -> bool:
        value = ratios[key]
        return value is not None and value >= bar

    def at_most(key: str, bar: float) -> bool:
        value = ratios[key]
        return value is not None and value <= bar

    errors = sum(cell["errors"] for t in tables.values() for cell in t.values())
    return {
        f"c64 throughput ebm-serve >= {C64_OVER_PLAIN:g}x plain FastAPI": at_least(
            "c64 req/s, ebm-serve JSON / plain", C64_OVER_PLAIN
        ),
        f"c64 throughput ebm-serve >= {C64_OVER_LITSERVE:g}x LitServe": at_least(
            "c64 req/s, ebm-serve JSON / LitServe", C64_OVER_LITSERVE
        ),
        "c64 p99 ebm-serve <= plain FastAPI's and LitServe's": at_most(
            "c64 p99, ebm-serve JSON / plain", 1.0
        )
        and at_most("c64 p99, ebm-serve JSON / LitServe", 1.0),
        f"c1 p50 ebm-serve <= {C1_P50_OVER_PLAIN:g}x plain FastAPI's": at_most(
            "c1 p50, ebm-serve JSON / plain", C1_P50_OVER_PLAIN
        ),
        f"4,096-pair msgpack request >= {BULK_MSGPACK_OVER_RAW:.0%} of raw rows/s": at_least(
            "4,096 pairs rows/s, ebm-serve msgpack / raw", BULK_MSGPACK_OVER_RAW
        ),
        "every server available, every load request answered 2xx": not m.unavailable
        and errors == 0,
    }


def run(seconds: float, runs: int, raw_rounds: int, quick: bool, work_dir: Path) -> dict[str, Any]:
    models_dir = work_dir / "models"
    score_onnx = publish_mlp(models_dir)
    work = make_workload(score_onnx)
    raw = raw_rows_per_s(score_onnx, work.bulk, raw_rounds)
    print(f"raw onnxruntime in process, {BULK_ROWS:,} rows: {raw:,.0f} rows/s")
    started = time.monotonic()
    m = measure(runs, seconds, models_dir, score_onnx, work)
    tables, ratios = summarise(m, raw)
    return {
        "quick": quick,
        "seconds_per_run": seconds,
        "runs": runs,
        "wall_s": time.monotonic() - started,
        "cpu_count": os.cpu_count(),
        "versions": {
            p: package_version(p) for p in ("onnxruntime", "fastapi", "uvicorn", "litserve")
        },
        "network": f"MLP {X_DIM}+{Y_DIM} -> {LAYERS}x{HIDDEN} SiLU -> 1, random weights (seed 0)",
        "raw_rows_per_s_4096": raw,
        "raw_rounds": raw_rounds,
        **tables,
        "unavailable": m.unavailable,
        "ratios": ratios,
        "bars": judge(ratios, m, tables),
    }


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def markdown(report: dict[str, Any]) -> str:
    lines = []
    if report["quick"]:
        lines += [
            "**Smoke run (`--quick`): short loads, for development; absolute figures are noise.**",
            "",
        ]
    lines += [
        f"{report['runs']} run(s), {report['seconds_per_run']:g} s per load point, "
        f"{report['cpu_count']} cores shared by the server and the load client; "
        f"{report['network']}.",
        "",
        "| server | c | req/s | p50 ms | p99 ms | req/s per run | client CPU us/req |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        for v in VARIANTS:
            cell = report["one_pair"].get(f"{v.name} c={c}")
            if cell is None:
                lines.append(f"| {v.name} | {c} | not available | | | | |")
                continue
            per_run = ", ".join(f"{x:.0f}" for x in cell["throughput_rps_per_run"])
            lines.append(
                f"| {v.name} | {c} | {cell['throughput_rps']:.0f} | "
                f"{cell['latency_ms_p50']:.2f} | {cell['latency_ms_p99']:.2f} | {per_run} | "
                f"{cell['client_cpu_us_per_request']:.0f} |"
            )
    raw = report["raw_rows_per_s_4096"]
    lines += [
        "",
        f"| {BULK_ROWS:,} pairs in one request | rows/s | ms per request (p50) | rows/s per run "
        "| of raw |",
        "|---|---|---|---|---|",
    ]
    for v in VARIANTS:
        cell = report["bulk"].get(v.name)
        if cell is None:
            lines.append(f"| {v.name} | not available | | | |")
            continue
        per_run = ", ".join(f"{x * BULK_ROWS:,.0f}" for x in cell["throughput_rps_per_run"])
        lines.append(
            f"| {v.name} | {cell['rows_per_s']:,.0f} | {cell['latency_ms_p50']:.1f} | "
            f"{per_run} | {cell['rows_per_s'] / raw:.0%} |"
        )
    lines.append(
        f"| raw onnxruntime, in process | {raw:,.0f} | {BULK_ROWS / raw * 1000:.1f} | "
        f"best of {report['raw_rounds']} rounds | 100% |"
    )
    lines += ["", "| ratio | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt_ratio(v)} |" for k, v in report["ratios"].items()]
    lines.append("")
    for name, reasons in report["unavailable"].items():
        lines.append(f"Not available: {name}: {reasons[0]}")
    lines += [f"- {bar}: {'met' if ok else 'MISSED'}" for bar, ok in report["bars"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s loads, one run")
    parser.add_argument("--seconds", type=float, default=None, help="per load point (5; 1 quick)")
    parser.add_argument("--runs", type=int, default=None, help="fresh servers each (2; 1 quick)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where results are written")
    args = parser.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    runs = args.runs or (1 if args.quick else 2)
    with tempfile.TemporaryDirectory(prefix="ebm-peers-") as work_dir:
        report = run(seconds, runs, 3 if args.quick else 9, args.quick, Path(work_dir))
    save(args.out, "peers", report, markdown(report))
    return 0 if all(report["bars"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
