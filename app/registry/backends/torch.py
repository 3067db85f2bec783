"""torch backend: a torch.export program, gradients by autograd through it.

Imported only when the torch backend or the parity check needs it, so the serving install
works without torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from app.errors import BackendError
from app.registry.backends.base import Array, EnergyOutput


def _load(program: Path) -> torch.nn.Module:
    try:
        # torch.export.load reads a serialized graph and tensors: no pickled code runs.
        module: torch.nn.Module = torch.export.load(str(program)).module()
    except Exception as exc:  # torch raises many unrelated types on a bad archive
        raise BackendError(f"torch cannot load {program.name}: {exc}") from exc
    return module


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        program: Path,
        decoder: Path | None,
        input_names: Sequence[str],
        grad_names: Sequence[str],
        threads: int,
    ) -> None:
        if threads > 0:
            torch.set_num_threads(threads)
        self._module = _load(program)
        self._decoder = _load(decoder) if decoder else None
        self._input_names = list(input_names)
        self._grad_names = list(grad_names)
        self._decoder_names = [n for n in ("x", "z") if n in self._input_names]

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._input_names}
        if not grad or not self._grad_names:
            with torch.inference_mode():
                energy = self._module(*(tensors[n] for n in self._input_names))
            return EnergyOutput(energy=energy.numpy())
        with torch.enable_grad():
            for n in self._grad_names:
                tensors[n] = tensors[n].clone().requires_grad_(True)
            energy = self._module(*(tensors[n] for n in self._input_names))
            grads = torch.autograd.grad(energy.sum(), [tensors[n] for n in self._grad_names])
        return EnergyOutput(
            energy=energy.detach().numpy(),
            grads={n: g.numpy() for n, g in zip(self._grad_names, grads, strict=True)},
        )

    @property
    def has_decoder(self) -> bool:
        return self._decoder is not None

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        if self._decoder is None:
            raise BackendError("this model has no decoder")
        tensors = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self._decoder_names]
        with torch.inference_mode():
            y: Array = self._decoder(*tensors).numpy()
        return y
