"""What one row of a model costs to compute, measured when the model loads.

A search's size in evaluations (rows x starts x steps) says nothing about its time: one
row-step of the image model costs a hundred times one of the 2-D models. Admission turns a
request's evaluations into seconds with this figure and refuses, before any compute, a
search or sampling run that would take longer than ``EBM_MAX_SEARCH_SECONDS``.
"""

from __future__ import annotations

import time

import numpy as np

from app.registry.backends.base import EnergyBackend
from app.registry.manifest import Manifest
from app.registry.parity import probe_inputs

# Searches evaluate rows x starts candidates per step, batches of hundreds to thousands of
# rows: the per-row cost is measured at that size, where the per-call overhead is spread.
MEASURED_ROWS = 1024
REPEATS = 3


def seconds_per_row(backend: EnergyBackend, manifest: Manifest) -> float | None:
    """Best-of-``REPEATS`` seconds per row of one energy-and-gradient call on the probe
    rows tiled to ``MEASURED_ROWS``; None without a probe (nothing to measure on)."""
    if manifest.probe is None:
        return None
    probe = probe_inputs(manifest)
    index = np.arange(MEASURED_ROWS) % len(next(iter(probe.values())))
    batch = {name: np.ascontiguousarray(values[index]) for name, values in probe.items()}
    grad = bool(manifest.grad_names)
    backend.energy(batch, grad)  # the first call pays one-time allocations
    best = float("inf")
    for _ in range(REPEATS):
        started = time.perf_counter()
        backend.energy(batch, grad)
        best = min(best, time.perf_counter() - started)
    return best / MEASURED_ROWS
