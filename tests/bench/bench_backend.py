"""Per-call overhead of the onnxruntime backend on the shipped `car` model, one run.

The search calls ``backend.energy({"x": x, "y": y}, grad=True)`` ~100 times a request on
the same batch shapes, so every microsecond a call spends outside the graph is search
throughput lost. At 8, 64, 256 and 1,024 rows (uniform inside the manifest's bounds), each
measured interleaved with the others, several rounds, medians:

- raw: ``session.run(output_names, feed)`` on the backend's own energy+gradient session;
- old: ``OnnxBackend.energy`` as it was before its fast path (kept here, on the same
  session, so old and new are compared within one run: two runs differ by up to 2x here);
- new: ``OnnxBackend.energy(..., grad=True)``;
- iobinding: the candidate ``energy`` on an IOBinding, outputs bound to arrays allocated per
  batch size and copied out each call (onnxruntime's own run already returns its outputs
  without a copy, so this only wins if binding is cheaper than its allocations).

Every variant's outputs are checked bit for bit against raw's first. Bar: the backend's
rows/s at least 0.95x raw's at every batch size.

    python -m tests.bench.bench_backend [--rounds 9] [--seconds 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from app.config import BackendChoice, Settings
from app.registry.backends.base import Array, EnergyOutput
from app.registry.backends.onnx import OnnxBackend
from app.registry.loader import load_registry
from tests.bench.bench_energy import sample_pairs
from tests.bench.saving import save
from tests.servers import REPO

RESULTS = REPO / "tests" / "bench" / "results"
ROWS = (8, 64, 256, 1024)
VARIANTS = ("raw", "old", "new", "iobinding")

Feed = dict[str, Array]
# A variant's outputs: raw's list of arrays, or the backend's EnergyOutput.
Call = Callable[[Feed], list[Array] | EnergyOutput]


def _raw(backend: OnnxBackend) -> Call:
    return partial(backend._grad.run, backend._grad_outputs)


def _old(backend: OnnxBackend) -> Call:
    """``OnnxBackend.energy(grad=True)`` before the fast path, verbatim."""
    session, names = backend._grad, backend._grad_outputs

    def energy(inputs: Mapping[str, Array]) -> EnergyOutput:
        feed = dict(inputs)
        outputs = session.run(names, feed)
        grads = {
            name.removeprefix("grad_"): value
            for name, value in zip(names[1:], outputs[1:], strict=True)
        }
        return EnergyOutput(energy=outputs[0], grads=grads)

    return energy


def _new(backend: OnnxBackend) -> Call:
    return partial(backend.energy, grad=True)


def _iobinding(backend: OnnxBackend) -> Call:
    """What an IOBinding ``energy`` would do: a binding per thread, its outputs bound to
    arrays allocated per batch size and copied out (returning the bound arrays would let
    the next call overwrite what a caller kept). The compiled binding and run are called
    directly, so that the Python wrapper's checks do not count against it."""
    session, names = backend._grad, backend._grad_outputs
    grad_names = [name.removeprefix("grad_") for name in names[1:]]
    row_shapes = [tuple(output.shape[1:]) for output in session.get_outputs()]
    cpu = ort.OrtDevice.make("cpu", 0)._get_c_device()
    local = threading.local()

    def energy(inputs: Mapping[str, Array]) -> EnergyOutput:
        if not hasattr(local, "binding"):
            local.binding = ort.capi._pybind_state.SessionIOBinding(session._sess)
            local.rows = None
        binding = local.binding
        for name, value in inputs.items():
            binding.bind_input(name, value)
        rows = len(value)
        if local.rows != rows:
            local.buffers = [np.empty((rows, *shape), np.float32) for shape in row_shapes]
            binding.clear_binding_outputs()
            for name, buffer in zip(names, local.buffers, strict=True):
                binding.bind_output(name, cpu, np.float32, list(buffer.shape), buffer.ctypes.data)
            local.rows = rows
        session._sess.run_with_iobinding(binding, None)
        energy, *grads = [buffer.copy() for buffer in local.buffers]
        return EnergyOutput(energy, dict(zip(grad_names, grads, strict=True)))

    return energy


def _outputs(result: list[Array] | EnergyOutput) -> list[Array]:
    if isinstance(result, EnergyOutput):
        return [result.energy, *result.grads.values()]
    return result


def _seconds_per_call(call: Call, feed: Feed, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        call(feed)
    return (time.perf_counter() - started) / calls


def _measure(calls: dict[str, Call], feed: Feed, rounds: int, seconds: float) -> dict[str, Any]:
    """Medians over ``rounds``; each round times every variant once, in a rotated order."""
    expected = _outputs(calls["raw"](feed))
    for name, call in calls.items():
        got = _outputs(call(feed))
        assert all(np.array_equal(a, b) for a, b in zip(expected, got, strict=True)), name
    repeat = max(10, round(seconds / _seconds_per_call(calls["raw"], feed, 10)))
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for index in range(rounds):
        for name in order[index % len(order) :] + order[: index % len(order)]:
            samples[name].append(_seconds_per_call(calls[name], feed, repeat))
    rows = len(feed["x"])
    result: dict[str, Any] = {"calls_per_sample": repeat}
    for name, values in samples.items():
        median = statistics.median(values)
        result[name] = {
            "us_per_call": median * 1e6,
            "rows_per_s": rows / median,
            "us_min": min(values) * 1e6,
            "us_max": max(values) * 1e6,
        }
    return result


def run(rounds: int, seconds: float) -> dict[str, Any]:
    settings = Settings(models_dir=REPO / "models", backend=BackendChoice.ONNX)
    model = load_registry(settings, frozenset({"car"})).get("car")
    backend = model.backend
    assert isinstance(backend, OnnxBackend), backend
    calls = {
        "raw": _raw(backend),
        "old": _old(backend),
        "new": _new(backend),
        "iobinding": _iobinding(backend),
    }
    sizes: dict[int, dict[str, Any]] = {}
    for rows in ROWS:
        body = sample_pairs(model, rows, seed=rows)
        feed = {n: np.asarray(v, dtype=np.float32) for n, v in body.items()}
        sizes[rows] = _measure(calls, feed, rounds, seconds)
    ratios = {
        rows: {v: r[v]["rows_per_s"] / r["raw"]["rows_per_s"] for v in VARIANTS}
        for rows, r in sizes.items()
    }
    bars = {"new >= 0.95x raw rows/s at every size": all(r["new"] >= 0.95 for r in ratios.values())}
    return {
        "model": "car",
        "onnxruntime": ort.__version__,
        "rounds": rounds,
        "sizes": sizes,
        "ratio_to_raw": ratios,
        "bars": bars,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`car`, energy + gradient, onnxruntime {report['onnxruntime']}, medians of "
        f"{report['rounds']} interleaved rounds; x raw = rows/s over raw's.",
        "",
        "| rows | variant | us/call | rows/s | x raw | us min-max |",
        "|---|---|---|---|---|---|",
    ]
    for rows, r in report["sizes"].items():
        for variant in VARIANTS:
            v = r[variant]
            lines.append(
                f"| {rows} | {variant} | {v['us_per_call']:.1f} | {v['rows_per_s']:,.0f} "
                f"| {report['ratio_to_raw'][rows][variant]:.3f} "
                f"| {v['us_min']:.1f}-{v['us_max']:.1f} |"
            )
    lines.append("")
    lines += [f"- {bar}: {'met' if ok else 'MISSED'}" for bar, ok in report["bars"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per size")
    parser.add_argument("--seconds", type=float, default=0.05, help="per variant per round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = run(args.rounds, args.seconds)
    save(args.out, "backend", report, markdown(report))
    return 0 if all(report["bars"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
