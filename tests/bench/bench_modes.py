"""Mode-recovery benchmark (issue 10): do the searches find known modes at *default* settings?

The analytic landscapes of tests/bench/landscapes.py (wells 20x apart in width, unequal
depths, modes on the bounds, 3-D and 6-D mixtures, a ring of minima in 3-D, a conditional
energy whose modes move with x) are published into a temporary models dir with manifests
that state only the bounds and k, and loaded on the ONNX backend as the service loads them.
For each landscape and method (gd, langevin, dfo, auto) a request sets only ``method``,
``seed`` and ``k`` (= the number of true modes); it runs in process, through ``Search`` and
the service's own mode selection (``to_predictions``), once per seed (the conditional one
with all its x in one request).

- recall: share of the true modes with a prediction within the mode's hit radius;
- precision: share of the predictions within the hit radius of some true mode;
  hit radius = min(5% of the box width (0.3), the well's std): a prediction must sit in the
  well (within one std its energy is within 0.5 of the minimum), and even a wide well's
  centre must be found to 0.3;
- the ring (k = 8): precision = share of predictions within 0.3 of the circle; recall =
  share of the circle within 360/k degrees of an on-circle prediction (8 evenly spread
  predictions cover it with 2x slack); also the median largest angular gap (ideal 45).

Means over seeds (and x). The issue's bar: recall and precision >= 0.95 for every method,
>= 0.99 for auto; the exit code is 1 when any cell is below it.

    python -m tests.bench.bench_modes [--seeds 10] [--out tests/bench/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from app.config import BackendChoice, Settings
from app.inference.params import resolve
from app.inference.predict import to_predictions
from app.inference.search import Search, SearchJob
from app.registry.loader import LoadedModel, load_registry
from tests.bench.landscapes import Landscape, all_landscapes
from tests.servers import REPO

RESULTS = REPO / "tests" / "bench" / "results"
METHODS = ("gd", "langevin", "dfo", "auto")
BAR = 0.95
AUTO_BAR = 0.99
RING_GRID = 720  # points of the circle for its coverage


@dataclass
class Cell:
    recalls: list[float]
    precisions: list[float]
    gaps: list[float]  # ring only: largest angular gap between on-ring predictions, degrees
    mode_hits: list[np.ndarray]  # per request row: which true modes were found [K] bool
    counts: list[int]  # predictions returned per request row
    resolved: str  # the method auto resolved to, and the default settings used
    seconds: float

    @property
    def recall(self) -> float:
        return float(np.mean(self.recalls))

    @property
    def precision(self) -> float:
        return float(np.mean(self.precisions))


def point_scores(
    found: np.ndarray, truth: np.ndarray, tols: np.ndarray
) -> tuple[np.ndarray, float]:
    """(which true modes have a prediction within their radius, precision)."""
    if len(found) == 0:
        return np.zeros(len(truth), bool), 0.0
    hit = np.linalg.norm(found[:, None, :] - truth[None], axis=2) <= tols[None]
    return hit.any(axis=0), float(hit.any(axis=1).mean())


def ring_scores(found: np.ndarray, radius: float, tol: float, k: int) -> tuple[float, float, float]:
    """(coverage, precision, largest angular gap in degrees) of predictions on the circle."""
    r = np.hypot(found[:, 0], found[:, 1])
    off = np.hypot(r - radius, np.linalg.norm(found[:, 2:], axis=1))
    on = off <= tol
    angles = np.sort(np.degrees(np.arctan2(found[on, 1], found[on, 0])) % 360)
    if len(angles) == 0:
        return 0.0, 0.0, 360.0
    gaps = np.diff(np.concatenate([angles, angles[:1] + 360]))
    grid = np.arange(RING_GRID) * 360 / RING_GRID
    apart = np.abs(grid[:, None] - angles[None]) % 360
    apart = np.minimum(apart, 360 - apart)
    coverage = float((apart.min(axis=1) <= 360 / k).mean())
    return coverage, float(on.mean()), float(gaps.max())


def run_cell(model: LoadedModel, land: Landscape, method: str, seeds: list[int]) -> Cell:
    recalls: list[float] = []
    precisions: list[float] = []
    gaps: list[float] = []
    mode_hits: list[np.ndarray] = []
    counts: list[int] = []
    resolved = ""
    started = time.perf_counter()
    for seed in seeds:
        params = resolve(model.manifest, {"method": method, "seed": seed, "k": land.k})
        resolved = (
            f"{params.method}: starts {params.num_starts}, steps {params.steps}, "
            f"step {params.step_size:g}, noise {params.noise_scale}, "
            f"merge {params.merge_radius:g}"
        )
        xs = None if land.xs is None else land.xs.astype(np.float32)
        job = SearchJob(x=xs, rows_x=1 if xs is None else len(xs), params=params)
        found = Search(model, [job]).run()[0]
        assert found is not None
        outcome = to_predictions(model, job, found, 1)
        for row, predictions in enumerate(outcome.predictions):
            y = np.array([p["y"] for p in predictions], dtype=np.float64).reshape(-1, land.dim)
            counts.append(len(y))
            if land.ring_radius is not None:
                cover, precision, gap = ring_scores(y, land.ring_radius, land.tol, land.k)
                recalls.append(cover)
                precisions.append(precision)
                gaps.append(gap)
            else:
                truth = land.minima(None if land.xs is None else land.xs[row])
                hits, precision = point_scores(y, truth, land.tols)
                mode_hits.append(hits)
                recalls.append(float(hits.mean()))
                precisions.append(precision)
    elapsed = time.perf_counter() - started
    return Cell(recalls, precisions, gaps, mode_hits, counts, resolved, elapsed)


def bar(method: str) -> float:
    return AUTO_BAR if method == "auto" else BAR


def report(cells: dict[str, dict[str, Cell]], lands: list[Landscape], seeds: int) -> str:
    lines = [
        f"# Mode recovery at default settings ({date.today().isoformat()})",
        "",
        f"`python -m tests.bench.bench_modes`: {seeds} seeds per cell (the conditional "
        "`moving` also 6 x per request); recall / precision, means; **bold** = below the bar "
        f"({BAR} per method, {AUTO_BAR} for auto). Ring: recall = share of the circle within "
        "360/k degrees of an on-circle prediction, precision = share of predictions within "
        "0.3 of it, gap = median largest angular gap (ideal 45).",
        "",
        "| landscape | k | " + " | ".join(METHODS) + " |",
        "|---|---|" + "---|" * len(METHODS),
    ]
    for land in lands:
        row = [land.name, str(land.k)]
        for method in METHODS:
            cell = cells[land.name][method]

            def fmt(v: float, method: str = method) -> str:
                return f"**{v:.2f}**" if v < bar(method) else f"{v:.2f}"

            text = f"{fmt(cell.recall)} / {fmt(cell.precision)}"
            if cell.gaps:
                text += f", gap {statistics.median(cell.gaps):.0f}°"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Landscapes (hit radius per mode):", ""]
    for land in lands:
        tol = land.tol if land.ring_radius is not None else sorted(set(land.tols.tolist()))
        lines.append(f"- `{land.name}`: {land.description}; y in [-3, 3]^{land.dim}; tol {tol}")
    first = lands[0].name
    lines += [
        "",
        f"Defaults each method ran with on `{lands[0].name}` (every landscape's manifest states "
        "only bounds and k, and the bounds are the same; the project's own energies run with "
        "the manifests their tests use):",
        "",
    ]
    for method in METHODS:
        lines.append(f"- {method} -> {cells[first][method].resolved}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="requests per landscape and method")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for modes.json/.md")
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    lands = all_landscapes()
    cells: dict[str, dict[str, Cell]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = Path(tmp)
        for land in lands:
            land.publish(models_dir)
        exported = time.perf_counter()
        registry = load_registry(Settings(models_dir=models_dir, backend=BackendChoice.ONNX))
        assert registry.unavailable == [], registry.unavailable
        loaded = time.perf_counter()
        for land in lands:
            model = registry.get(land.name)
            cells[land.name] = {m: run_cell(model, land, m, seeds) for m in METHODS}
            print(
                land.name,
                {
                    m: (round(c.recall, 3), round(c.precision, 3))
                    for m, c in cells[land.name].items()
                },
                flush=True,
            )
    finished = time.perf_counter()
    text = report(cells, lands, args.seeds)
    print(text)
    timing = {
        "export_s": round(exported - started, 1),
        "load_s": round(loaded - exported, 1),
        "search_s": round(finished - loaded, 1),
        "total_s": round(finished - started, 1),
    }
    print(f"timing: {timing}")
    failing = [
        f"{name}/{method}"
        for name, row in cells.items()
        for method, cell in row.items()
        if min(cell.recall, cell.precision) < bar(method)
    ]
    payload: dict[str, Any] = {
        "date": date.today().isoformat(),
        "seeds": args.seeds,
        "bar": {"method": BAR, "auto": AUTO_BAR},
        "timing": timing,
        "landscapes": {
            land.name: {
                "description": land.description,
                "dim": land.dim,
                "k": land.k,
                "tols": land.tols.tolist() if land.ring_radius is None else land.tol,
                "xs": None if land.xs is None else land.xs.ravel().tolist(),
                "methods": {
                    method: {
                        "recall": round(cell.recall, 4),
                        "precision": round(cell.precision, 4),
                        "recall_min": round(min(cell.recalls), 4),
                        "precision_min": round(min(cell.precisions), 4),
                        "per_mode_recall": (
                            np.mean(cell.mode_hits, axis=0).round(3).tolist()
                            if cell.mode_hits
                            else None
                        ),
                        "predictions_per_row": round(float(np.mean(cell.counts)), 2),
                        "median_max_gap_deg": (
                            round(statistics.median(cell.gaps), 1) if cell.gaps else None
                        ),
                        "defaults": cell.resolved,
                        "seconds": round(cell.seconds, 2),
                    }
                    for method, cell in cells[land.name].items()
                },
            }
            for land in lands
        },
        "failing": failing,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "modes.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "modes.md").write_text(text)
    if failing:
        print(f"below the bar: {', '.join(failing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
