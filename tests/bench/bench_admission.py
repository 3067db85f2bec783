"""Step admission against search admission (EBM_ADMISSION), two real servers, one run.

- /predict on `car` (one x, 8 starts, 100 steps, tol 0 so every search runs its 100
  steps) at concurrency 1, 8 and 32 on each server, measured alternately: throughput,
  p50 and p99. Bars at c=32: step admission's p50 at most 0.6x search admission's, its
  throughput at least search admission's.
- Fairness: a long search on `spiral` (unconditional, 8,192 starts x 1,200 steps, cut at
  its 20 s deadline)
  while `car` serves one-x /predict requests one at a time: their latency against their
  solo latency on the same server, and the long search's step time. Bar (step admission):
  at most 2x solo plus one step of the long search.

- Per-step overhead, in process: a search of 32 one-x jobs of 8 starts each, admitted at
  different steps (so every job is at its own step), against the raw onnxruntime
  energy+gradient call on the same 256 rows, the best of 60 interleaved rounds each. Bar: search
  rows/s at least 80% of raw rows/s.

    python -m tests.bench.bench_admission [--seconds 4] [--long-seconds 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from app.client.loadtest import run_load_sync
from app.config import BackendChoice, Settings
from app.inference.params import resolve
from app.inference.search import Search, SearchJob
from app.registry.loader import load_registry
from tests.bench.saving import save
from tests.servers import REPO, Server, start_server, stop_server

RESULTS = REPO / "tests" / "bench" / "results"
SHORT = {"x": [[0.2, 20.0, 10.0]], "num_starts": 8, "steps": 100, "tol": 0.0, "seed": 0}
CONCURRENCY = (1, 8, 32)


def _load(server: Server, concurrency: int, seconds: float) -> dict[str, float]:
    result = run_load_sync(
        f"{server.url}/v1/models/car/predict",
        orjson.dumps(SHORT),
        concurrency=concurrency,
        duration_s=seconds,
        warmup_requests=2 * concurrency,
    )
    assert result.errors == 0, result.status_counts
    return {
        "rps": result.throughput_rps,
        "p50_ms": result.latency_ms_p50,
        "p99_ms": result.latency_ms_p99,
    }


def _one_predict_ms(client: httpx.Client) -> float:
    started = time.perf_counter()
    response = client.post("/v1/models/car/predict", json=SHORT)
    assert response.status_code == 200, response.text
    return (time.perf_counter() - started) * 1000


def _fairness(server: Server, long_seconds: float) -> dict[str, float]:
    with server.client(timeout=long_seconds + 30) as client:
        solo = statistics.median(_one_predict_ms(client) for _ in range(15))
        long_body = {"num_starts": 8192, "steps": 1200, "tol": 0.0, "seed": 1}
        long_body["deadline_ms"] = long_seconds * 1000
        answer: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: answer.append(client.post("/v1/models/spiral/predict", json=long_body))
        )
        thread.start()
        time.sleep(1.0)  # the long search is running
        during = []
        while thread.is_alive() and len(during) < 40:
            during.append(_one_predict_ms(client))
        thread.join()
    assert answer[0].status_code == 200, answer[0].text
    stats = answer[0].json()["stats"]
    step_ms = stats["time_ms"] / max(stats["steps_run"], 1)
    worst = max(during) if during else float("nan")
    return {
        "solo_ms": solo,
        "during_p50_ms": statistics.median(during) if during else float("nan"),
        "during_max_ms": worst,
        "long_step_ms": step_ms,
        "bound_ms": 2 * solo + step_ms,
        "long_steps_run": stats["steps_run"],
    }


def _step_overhead(rounds: int = 60, steps: int = 25) -> dict[str, float]:
    settings = Settings(backend=BackendChoice.ONNX)
    model = load_registry(settings, frozenset({"car"})).get("car")
    x = np.array(SHORT["x"], np.float32)

    def one(seed: int) -> SearchJob:
        params = resolve(model.manifest, {**SHORT, "seed": seed, "steps": 100_000})
        return SearchJob(x, 1, params)

    search = Search(model, [one(0)])
    for seed in range(1, 32):
        search.advance(lambda i, found: None)
        search.admit([one(seed)])
    inputs = search.inputs(slice(None))

    def searched() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            search.advance(lambda i, found: None)
        return (time.perf_counter() - started) / steps

    def raw() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            model.backend.energy(inputs, True)
        return (time.perf_counter() - started) / steps

    # Short rounds, interleaved in alternating order, the best of each: this VM's speed
    # drifts by tens of percent within seconds, and the bar compares the two.
    step_s, raw_s = [], []
    for round_ in range(rounds):
        if round_ % 2:
            step_s.append(searched())
            raw_s.append(raw())
        else:
            raw_s.append(raw())
            step_s.append(searched())
    rows = search.rows
    return {
        "rows": rows,
        "search_rows_per_s": rows / min(step_s),
        "raw_rows_per_s": rows / min(raw_s),
        "ratio": min(raw_s) / min(step_s),
    }


def run(seconds: float, long_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as logs:
        servers = {
            # the long search is over the default admission limits on purpose
            mode: start_server(
                REPO / "models",
                Path(logs),
                EBM_ADMISSION=mode,
                EBM_MAX_SEARCH_SECONDS="120",
                EBM_MAX_SEARCH_COST="20000000",
            )
            for mode in ("search", "step")
        }
        try:
            load: dict[str, dict[int, dict[str, float]]] = {m: {} for m in servers}
            for concurrency in CONCURRENCY:
                for mode, server in servers.items():
                    load[mode][concurrency] = _load(server, concurrency, seconds)
            fairness = {mode: _fairness(server, long_seconds) for mode, server in servers.items()}
        finally:
            for server in servers.values():
                stop_server(server)
    overhead = _step_overhead()
    c32 = {mode: load[mode][32] for mode in servers}
    bars = {
        "p50_ratio_c32": c32["step"]["p50_ms"] / c32["search"]["p50_ms"],
        "throughput_ratio_c32": c32["step"]["rps"] / c32["search"]["rps"],
    }
    met = {
        "p50 at c=32 <= 0.6x": bars["p50_ratio_c32"] <= 0.6,
        "throughput at c=32 >= 1x": bars["throughput_ratio_c32"] >= 1.0,
        "fairness <= 2x solo + one long step": fairness["step"]["during_max_ms"]
        <= fairness["step"]["bound_ms"],
        "search rows/s >= 0.8x raw": overhead["ratio"] >= 0.8,
    }
    return {
        "load": load,
        "fairness": fairness,
        "overhead": overhead,
        "ratios": bars,
        "bars": met,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| admission | c | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|",
    ]
    for concurrency in CONCURRENCY:
        for mode in ("search", "step"):
            r = report["load"][mode][concurrency]
            lines.append(
                f"| {mode} | {concurrency} | {r['rps']:.0f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} |"
            )
    ratios = report["ratios"]
    lines.append(
        f"\nAt c=32, step / search: p50 x{ratios['p50_ratio_c32']:.2f}, "
        f"throughput x{ratios['throughput_ratio_c32']:.2f}.\n"
    )
    lines.append(
        "| admission | car /predict solo ms | during a long spiral search: p50 / max ms "
        "| long search step ms | bound (2x solo + 1 step) ms |"
    )
    lines.append("|---|---|---|---|---|")
    for mode in ("search", "step"):
        f = report["fairness"][mode]
        lines.append(
            f"| {mode} | {f['solo_ms']:.1f} | {f['during_p50_ms']:.1f} / "
            f"{f['during_max_ms']:.1f} | {f['long_step_ms']:.1f} | {f['bound_ms']:.1f} |"
        )
    o = report["overhead"]
    lines.append(
        f"\nPer-step overhead ({o['rows']} rows, every job at its own step): search "
        f"{o['search_rows_per_s']:,.0f} rows/s, raw backend {o['raw_rows_per_s']:,.0f} rows/s "
        f"(x{o['ratio']:.2f}).\n"
    )
    lines += [f"- {bar}: {'met' if ok else 'MISSED'}" for bar, ok in report["bars"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per load point")
    parser.add_argument("--long-seconds", type=float, default=20.0, help="the long search")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.seconds, args.long_seconds)
    save(args.out, "admission", report, markdown(report))
    return 0 if all(report["bars"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
