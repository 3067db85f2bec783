"""The energy scale of a landscape as the search sees it: the spread of a set of energies.

One number per x, ``mean - min`` of the finite energies of its candidates: it scales with
the energy (so settings derived from it mean the same whatever the model's energy units)
and is large while candidates are spread over the landscape, small once they have settled.
"""

from __future__ import annotations

import numpy as np

from app.registry.backends.base import Array


def energy_spread(energy: Array, firsts: np.ndarray) -> np.ndarray:
    """Per block of contiguous rows (blocks start at ``firsts``): mean - min of its finite
    energies, float64 ``[blocks]``; 0 for a block with none."""
    e = np.asarray(energy, np.float64)
    finite = np.isfinite(e)
    count = np.add.reduceat(finite, firsts)
    total = np.add.reduceat(np.where(finite, e, 0.0), firsts)
    low = np.minimum.reduceat(np.where(finite, e, np.inf), firsts)
    spread: np.ndarray = np.where(count > 0, total / np.maximum(count, 1) - low, 0.0)
    return spread
