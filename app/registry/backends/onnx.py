"""onnxruntime backend: runs the exported energy(+gradient) graphs, no torch needed."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnxruntime as ort

from app.errors import BackendError
from app.registry.backends.base import Array, EnergyOutput, resolve_device


def providers_for(device: str) -> list[str | tuple[str, dict[str, str]]]:
    """onnxruntime execution providers for ``EBM_DEVICE`` (CUDA needs onnxruntime-gpu)."""
    gpu = "CUDAExecutionProvider" in ort.get_available_providers()
    resolved = resolve_device(device, "onnxruntime", gpu)
    if resolved == "cpu":
        return ["CPUExecutionProvider"]
    device_id = resolved.partition(":")[2] or "0"
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


def _session(path: Path, intra_op_threads: int, device: str = "cpu") -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning worker threads burn a core between calls; on a small machine that core is
    # needed by the HTTP event loop.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=providers_for(device))
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise BackendError(f"onnxruntime cannot load {path.name}: {exc}") from exc


class OnnxBackend:
    """``grad_graph`` outputs ``energy`` and ``grad_<input>``; ``score_graph`` only ``energy``."""

    name = "onnx"

    def __init__(
        self,
        grad_graph: Path,
        score_graph: Path | None,
        decoder_graph: Path | None,
        intra_op_threads: int,
        device: str = "cpu",
    ) -> None:
        def session(path: Path) -> ort.InferenceSession:
            return _session(path, intra_op_threads, device)

        self._grad = session(grad_graph)
        self._score = session(score_graph) if score_graph else None
        self._decoder = session(decoder_graph) if decoder_graph else None
        self.device = "cuda" if "CUDAExecutionProvider" in self._grad.get_providers() else "cpu"
        self._grad_outputs = [o.name for o in self._grad.get_outputs()]
        if not self._grad_outputs or self._grad_outputs[0] != "energy":
            raise BackendError(f"{grad_graph.name} must have 'energy' as its first output")

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        feed = dict(inputs)
        if not grad and self._score is not None:
            (energy,) = self._score.run(["energy"], feed)
            return EnergyOutput(energy=energy)
        outputs = self._grad.run(self._grad_outputs, feed)
        if not grad:
            return EnergyOutput(energy=outputs[0])
        grads = {
            name.removeprefix("grad_"): value
            for name, value in zip(self._grad_outputs[1:], outputs[1:], strict=True)
        }
        return EnergyOutput(energy=outputs[0], grads=grads)

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        if self._decoder is None:
            raise BackendError("this model has no decoder")
        (y,) = self._decoder.run(["y"], dict(inputs))
        decoded: Array = y
        return decoded
