"""Publish a trained energy module as one model version of the repository.

Writes the artifacts (``energy.onnx`` with gradients, ``score.onnx``, ``energy.pt2``), a
golden probe computed by the eager torch module, and ``manifest.json`` with sha256 hashes;
then loads the version back through the registry on every backend it can, so a recipe never
publishes a model the service would refuse.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.config import BackendChoice, Settings
from app.registry.hashing import sha256_of
from app.registry.loader import LoadedModel, load_version
from app.registry.manifest import (
    MANIFEST_FILE,
    NAME_PATTERN,
    Artifact,
    Artifacts,
    Batching,
    Card,
    InferenceDefaults,
    Manifest,
    Probe,
    TensorSpec,
    Training,
)
from app.training.export import (
    export_decoder_onnx,
    export_onnx,
    export_pt2,
    extract_score_onnx,
)

ENERGY_ONNX = "energy.onnx"
SCORE_ONNX = "score.onnx"
ENERGY_PT2 = "energy.pt2"
DECODER_ONNX = "decoder.onnx"
DECODER_PT2 = "decoder.pt2"


def _probe(
    module: nn.Module,
    inputs: Mapping[str, torch.Tensor],
    grad_names: list[str],
    decoder: nn.Module | None,
    decoder_inputs: list[str],
) -> Probe:
    decoded = None
    if decoder is not None:
        with torch.no_grad():
            decoded = decoder(*(inputs[n] for n in decoder_inputs)).tolist()
    with torch.enable_grad():
        leaves = {n: t.detach().clone().requires_grad_(n in grad_names) for n, t in inputs.items()}
        energy = module(*leaves.values())
        grads = (
            torch.autograd.grad(energy.sum(), [leaves[n] for n in grad_names]) if grad_names else ()
        )
    return Probe(
        inputs={n: t.tolist() for n, t in inputs.items()},
        energy=energy.detach().tolist(),
        grads={n: g.tolist() for n, g in zip(grad_names, grads, strict=True)},
        decoded=decoded,
    )


def publish(
    module: nn.Module,
    *,
    models_dir: Path,
    name: str,
    version: int,
    y: TensorSpec,
    x: TensorSpec | None = None,
    z: TensorSpec | None = None,
    probe_inputs: Mapping[str, torch.Tensor],
    card: Card,
    training: Training,
    metrics: Mapping[str, float | int | str],
    description: str = "",
    inference: InferenceDefaults | None = None,
    batching: Batching | None = None,
    decoder: nn.Module | None = None,
) -> LoadedModel:
    """Export ``module`` (inputs in the order x, y, z) and write ``models_dir/name/version``.

    ``probe_inputs`` holds a few rows per input in the order of the module's arguments: at
    least 2 (so no batch size of 1 gets specialised into the traced graphs) and a count equal
    to no per-row dimension (the tracer may tie equal sizes together). The round trip also
    checks batch sizes 1 and 13.
    ``decoder`` (latent models) maps ``(x, z)``, or ``z`` for unconditional models, to y.
    """
    module = module.eval()
    input_names = list(probe_inputs)
    _check_before_export(module, name, version, probe_inputs, x, y, z)
    final = models_dir / name / str(version)
    # Export into a staging folder and swap it in only after the round trip succeeded: a
    # failed export never destroys the version that was there.
    out = final.with_name(f".{final.name}.staging")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        examples = [probe_inputs[n] for n in input_names]
        specs = {"x": x, "y": y, "z": z}
        grad_names: list[str] = [
            n for n in ("y", "z") if n in input_names and (s := specs[n]) and s.kind == "continuous"
        ]
        export_onnx(module, examples, input_names, out / ENERGY_ONNX, grad_names)
        if grad_names:  # without gradients energy.onnx is already the forward graph
            extract_score_onnx(out / ENERGY_ONNX, input_names, out / SCORE_ONNX)
        export_pt2(module, examples, input_names, out / ENERGY_PT2)
        decoder_inputs: list[str] = [n for n in ("x", "z") if n in input_names]
        if decoder is not None:
            decoder = decoder.eval()
            decoder_examples = [probe_inputs[n] for n in decoder_inputs]
            export_decoder_onnx(decoder, decoder_examples, decoder_inputs, out / DECODER_ONNX)
            export_pt2(decoder, decoder_examples, decoder_inputs, out / DECODER_PT2)

        def artifact(file: str) -> Artifact:
            return Artifact(file=file, sha256=sha256_of(out / file))

        manifest = Manifest(
            name=name,
            version=version,
            description=description,
            x=x,
            y=y,
            z=z,
            artifacts=Artifacts(
                energy_onnx=artifact(ENERGY_ONNX),
                score_onnx=artifact(SCORE_ONNX) if grad_names else None,
                energy_pt2=artifact(ENERGY_PT2),
                decoder_onnx=artifact(DECODER_ONNX) if decoder is not None else None,
                decoder_pt2=artifact(DECODER_PT2) if decoder is not None else None,
            ),
            inference=inference or InferenceDefaults(),
            batching=batching or Batching(),
            training=training,
            metrics=dict(metrics),
            card=card,
            probe=_probe(module, probe_inputs, grad_names, decoder, decoder_inputs),
        )
        payload: dict[str, Any] = manifest.model_dump(mode="json", exclude_none=True)
        (out / MANIFEST_FILE).write_text(json.dumps(payload, indent=2) + "\n")
        # Round trip: hashes, both backends, probe parity; raises if the service would refuse it.
        # Explicit settings: EBM_* variables of the shell must not loosen the check.
        settings = Settings(
            models_dir=models_dir,
            backend=BackendChoice.AUTO,
            parity_rtol=1e-4,
            intra_op_threads=1,
            cross_check=True,
            device="cpu",
        )
        model = load_version(out, settings, expected_dir=final)
        if final.exists():
            shutil.rmtree(final)
        out.rename(final)
        model.directory = final  # the sessions already hold the graphs; only the path moved
        return model
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a failed publish leaves nothing behind
        raise


def _check_before_export(
    module: nn.Module,
    name: str,
    version: int,
    probe_inputs: Mapping[str, torch.Tensor],
    x: TensorSpec | None,
    y: TensorSpec,
    z: TensorSpec | None,
) -> None:
    """The mistakes a recipe can make, refused with a plain message before the (slow)
    exports rather than by the exporters' or the manifest's validation afterwards."""
    if not re.match(NAME_PATTERN, name):
        raise ValueError(f"model name {name!r} must match {NAME_PATTERN} (lowercase, digits, -_)")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")
    input_names = list(probe_inputs)
    expected = [n for n, spec in (("x", x), ("y", y), ("z", z)) if spec is not None]
    if input_names != expected:
        raise ValueError(f"probe inputs {input_names} must be {expected}, in that order")
    rows = {n: int(t.shape[0]) for n, t in probe_inputs.items()}
    if len(set(rows.values())) != 1 or min(rows.values()) < 2:
        raise ValueError(
            f"probe inputs need the same number of rows, at least 2 (a batch of 1 would be "
            f"traced into the graphs as a constant); got {rows}"
        )
    with torch.no_grad():
        energy = module(*probe_inputs.values())
    batch = next(iter(rows.values()))
    if tuple(energy.shape) != (batch,):
        raise ValueError(
            f"the energy must have shape [B] (one scalar per row); for {batch} probe rows it "
            f"has shape {list(energy.shape)}: squeeze the last dimension"
        )
