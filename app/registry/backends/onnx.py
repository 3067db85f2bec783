"""onnxruntime backend: runs the exported energy(+gradient) graphs, no torch needed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


# ``InferenceSession.run``'s signature: output names, input feed, run options.
Run = Callable[[Sequence[str], Mapping[str, Array], None], list[Array]]

_ENERGY = ("energy",)


def runner(session: ort.InferenceSession) -> Run:
    """The run to call per batch. On CPU, the compiled session's own run: the Python wrapper
    in front of it only re-checks the feed (inputs present, WebGPU capture, OrtValue owners)
    for ~2 us a call, 5% of an 8-row `car` call. It is the same C++ call, so the outputs are
    the same bits, and a missing input still fails there. On CUDA the wrapper stays: it
    retries on the CPU provider when the CUDA provider fails.
    """
    on_cuda = "CUDAExecutionProvider" in session.get_providers()
    run: Run = session.run if on_cuda else session._sess.run
    return run


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
        # Everything a call needs is fixed here: the search calls energy() ~100 times a
        # request, and on small batches its Python work is a visible share of the step.
        self._grad_names = [name.removeprefix("grad_") for name in self._grad_outputs[1:]]
        self._run_grad = runner(self._grad)
        self._run_score = runner(self._score) if self._score else None

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        # onnxruntime returns fresh arrays that own their memory each call: outputs a caller
        # keeps across calls are never overwritten, so nothing is copied here.
        if not grad and self._run_score is not None:
            (energy,) = self._run_score(_ENERGY, inputs, None)
            return EnergyOutput(energy)
        energy, *grads = self._run_grad(self._grad_outputs, inputs, None)
        if not grad:
            return EnergyOutput(energy)
        return EnergyOutput(energy, dict(zip(self._grad_names, grads, strict=True)))

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        if self._decoder is None:
            raise BackendError("this model has no decoder")
        (y,) = self._decoder.run(["y"], dict(inputs))
        decoded: Array = y
        return decoded
