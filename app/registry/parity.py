"""Parity checks at load: a backend must reproduce the export-time probe, and two backends
must agree with each other, on energies and on every gradient."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from app.errors import BackendError
from app.registry.backends.base import Array, EnergyBackend, EnergyOutput
from app.registry.manifest import Manifest


def relative_difference(actual: Array, expected: Array) -> float:
    """max |actual - expected| over the scale of ``expected`` (its max magnitude).

    Scaled by the whole tensor, not element-wise, so a gradient component that is near zero
    does not turn float32 round-off into a huge ratio.
    """
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-12)
    return float(np.max(np.abs(actual.astype(np.float64) - expected), initial=0.0)) / scale


def compare_outputs(actual: EnergyOutput, expected: EnergyOutput) -> dict[str, float]:
    """Relative difference per output: ``energy`` and ``grad_<name>``."""
    diffs = {"energy": relative_difference(actual.energy, expected.energy)}
    for name, grad in expected.grads.items():
        got = actual.grads.get(name)
        diffs[f"grad_{name}"] = float("inf") if got is None else relative_difference(got, grad)
    return diffs


def probe_inputs(manifest: Manifest) -> dict[str, Array]:
    assert manifest.probe is not None
    return {
        name: np.asarray(values, dtype=np.float32) for name, values in manifest.probe.inputs.items()
    }


def expected_probe_output(manifest: Manifest) -> EnergyOutput:
    assert manifest.probe is not None
    grads = {n: np.asarray(g, dtype=np.float32) for n, g in manifest.probe.grads.items()}
    return EnergyOutput(energy=np.asarray(manifest.probe.energy, dtype=np.float32), grads=grads)


def _raise_if_apart(diffs: Mapping[str, float], rtol: float, what: str) -> dict[str, float]:
    # A NaN is the worst of all: max() alone would skip it (NaN compares false).
    failing = [k for k, v in diffs.items() if not v <= rtol]
    if failing:
        worst = next((k for k in failing if math.isnan(diffs[k])), None) or max(
            failing, key=lambda k: diffs[k]
        )
        raise BackendError(
            f"{what}: {worst} differs by {diffs[worst]:.3g} relative; allowed is {rtol:g}"
        )
    return dict(diffs)


def _decoder_inputs(manifest: Manifest, inputs: Mapping[str, Array]) -> dict[str, Array]:
    return {n: inputs[n] for n in manifest.decoder_input_names}


def _tiled(inputs: Mapping[str, Array], size: int) -> tuple[np.ndarray, dict[str, Array]]:
    """The probe rows repeated to ``size`` rows: (which probe row each is, the batch)."""
    index = np.arange(size) % len(next(iter(inputs.values())))
    return index, {n: np.ascontiguousarray(v[index]) for n, v in inputs.items()}


def _batch_size_diffs(
    backend: EnergyBackend, manifest: Manifest, inputs: Mapping[str, Array]
) -> dict[str, float]:
    """The probe rows at batch sizes 1 and 13 must give the probe's energies too.

    A tracer can tie the batch axis to a per-row dimension of the same size (an 8-row probe
    of 8x8 images froze the batch at 8); the probe's own size would never show it.
    """
    expected = expected_probe_output(manifest).energy
    diffs: dict[str, float] = {}
    for size in (1, 13):
        index, tiled = _tiled(inputs, size)
        try:
            energy = backend.energy(tiled, grad=bool(manifest.grad_names)).energy
        except Exception as exc:  # a frozen batch axis fails inside the runtime
            raise BackendError(f"{backend.name} backend fails at batch size {size}: {exc}") from exc
        diffs[f"energy_batch_{size}"] = relative_difference(energy, expected[index])
    return diffs


def check_probe(backend: EnergyBackend, manifest: Manifest, rtol: float) -> dict[str, float]:
    """The backend reproduces the energies, gradients (and decoded y) of the export."""
    assert manifest.probe is not None
    inputs = probe_inputs(manifest)
    actual = backend.energy(inputs, grad=bool(manifest.grad_names))
    diffs = compare_outputs(actual, expected_probe_output(manifest))
    diffs.update(_batch_size_diffs(backend, manifest, inputs))
    if manifest.probe.decoded is not None:
        decoded = backend.decode(_decoder_inputs(manifest, inputs))
        expected = np.asarray(manifest.probe.decoded, dtype=np.float32)
        diffs["decoded"] = relative_difference(decoded, expected)
    return _raise_if_apart(diffs, rtol, f"{backend.name} backend vs export-time probe")


def check_agreement(
    first: EnergyBackend, second: EnergyBackend, manifest: Manifest, rtol: float
) -> dict[str, float]:
    """Both backends give the same energies and gradients (all of them) on the probe."""
    inputs = probe_inputs(manifest)
    grad = bool(manifest.grad_names)
    diffs = compare_outputs(first.energy(inputs, grad), second.energy(inputs, grad))
    if first.has_decoder or second.has_decoder:
        decoder_inputs = _decoder_inputs(manifest, inputs)
        diffs["decoded"] = relative_difference(
            first.decode(decoder_inputs), second.decode(decoder_inputs)
        )
    return _raise_if_apart(diffs, rtol, f"{first.name} vs {second.name} backend")


def rows_independent(backend: EnergyBackend, manifest: Manifest) -> bool:
    """Whether a row's energy and gradients are the same bits whatever batch it is in.

    Kernels may pick another code path by batch size (torch's matrix-vector path at one
    row, blocking at a few rows), and then a search coalesced with other requests would not
    replay a lone one bit for bit. Checked on the probe rows tiled to 97, cut at 1, 8 and 40,
    for the energy (and gradients) and the decoder.
    """
    if manifest.probe is None:
        return False
    _, tiled = _tiled(probe_inputs(manifest), 97)
    cuts = ((0, 1), (1, 8), (8, 40), (40, 97))
    grad = bool(manifest.grad_names)
    whole = backend.energy(tiled, grad)
    for a, b in cuts:
        part = backend.energy({n: v[a:b] for n, v in tiled.items()}, grad)
        if not np.array_equal(part.energy, whole.energy[a:b]):
            return False
        if any(not np.array_equal(g, whole.grads[n][a:b]) for n, g in part.grads.items()):
            return False
    if backend.has_decoder:  # searches and samples decode their starts in one call too
        decoder_inputs = _decoder_inputs(manifest, tiled)
        decoded = backend.decode(decoder_inputs)
        for a, b in cuts:
            part_inputs = {n: v[a:b] for n, v in decoder_inputs.items()}
            if not np.array_equal(backend.decode(part_inputs), decoded[a:b]):
                return False
    return True
