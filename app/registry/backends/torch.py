"""torch backend: a torch.export program, gradients by autograd through it.

Imported only when the torch backend or the parity check needs it, so the serving install
works without torch.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from app.errors import BackendError
from app.registry.backends.base import Array, EnergyOutput, resolve_device


def _load(program: Path, device: torch.device) -> torch.nn.Module:
    try:
        # torch.export.load reads a serialized graph and tensors: no pickled code runs.
        module: torch.nn.Module = torch.export.load(str(program)).module().to(device)
    except Exception as exc:  # torch raises many unrelated types on a bad archive
        raise BackendError(f"torch cannot load {program.name}: {exc}") from exc
    return module


# torch.set_num_threads only sets the calling thread's OpenMP team size: every thread
# that runs a backend call (the compute threads, the event loop) must set it itself, or it
# spins the library's default team next to every call (measured: 10-80 ms instead of 1-2 ms
# for an 8-row gradient in a compute thread with another core busy).
_configured = threading.local()


def _limit_threads(threads: int) -> None:
    if threads > 0 and getattr(_configured, "threads", None) != threads:
        torch.set_num_threads(threads)
        _configured.threads = threads


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        program: Path,
        decoder: Path | None,
        input_names: Sequence[str],
        grad_names: Sequence[str],
        threads: int,
        device: str = "cpu",
    ) -> None:
        self._threads = threads
        _limit_threads(threads)
        self._device = torch.device(resolve_device(device, "torch", torch.cuda.is_available()))
        self.device = self._device.type
        self._module = _load(program, self._device)
        self._decoder = _load(decoder, self._device) if decoder else None
        self._input_names = list(input_names)
        self._grad_names = list(grad_names)
        self._decoder_names = [n for n in ("x", "z") if n in self._input_names]

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        _limit_threads(self._threads)
        tensors = {n: self._tensor(inputs[n]) for n in self._input_names}
        if not grad or not self._grad_names:
            with torch.inference_mode():
                energy = self._module(*(tensors[n] for n in self._input_names))
            return EnergyOutput(energy=energy.cpu().numpy())
        with torch.enable_grad():
            for n in self._grad_names:
                tensors[n] = tensors[n].clone().requires_grad_(True)
            energy = self._module(*(tensors[n] for n in self._input_names))
            grads = torch.autograd.grad(energy.sum(), [tensors[n] for n in self._grad_names])
        return EnergyOutput(
            energy=energy.detach().cpu().numpy(),
            grads={n: g.cpu().numpy() for n, g in zip(self._grad_names, grads, strict=True)},
        )

    def _tensor(self, a: Array) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self._device)

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        if self._decoder is None:
            raise BackendError("this model has no decoder")
        _limit_threads(self._threads)
        tensors = [self._tensor(inputs[n]) for n in self._decoder_names]
        with torch.inference_mode():
            y: Array = self._decoder(*tensors).cpu().numpy()
        return y
