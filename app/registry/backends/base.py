"""What every backend offers: energies, and gradients on request, for one batch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EnergyOutput:
    """``energy`` is ``[B]``; ``grads[name]`` is ``[B, *spec(name).shape]``."""

    energy: Array
    grads: dict[str, Array] = field(default_factory=dict)


class EnergyBackend(Protocol):
    name: str

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        """Energies of a batch; with ``grad`` also dE/d(input) for each differentiable input."""
        ...

    @property
    def has_decoder(self) -> bool: ...

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        """y = Dec(x, z) ``[B, *y]`` for latent models with a decoder (inputs x?, z)."""
        ...


def resolve_device(setting: str, library: str, gpu_available: bool) -> str:
    """``EBM_DEVICE`` for one backend library: ``cpu`` or ``cuda:N``. ``auto`` takes the GPU
    when the library sees one; an explicit ``cuda`` that the library cannot use is an error
    (silently computing on the CPU would hide a broken GPU install)."""
    if setting == "cpu" or (setting == "auto" and not gpu_available):
        return "cpu"
    if not gpu_available:
        from app.errors import BackendError

        raise BackendError(f"EBM_DEVICE={setting}, but {library} sees no CUDA device")
    return "cuda:0" if setting in ("auto", "cuda") else setting
