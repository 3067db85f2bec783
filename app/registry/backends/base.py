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
