"""Where every search and every chain starts: one decoder start and one clamping rule.

A latent model with a decoder starts on its manifold, y = Dec(x, z0); fill in the blanks
(``y_known``/``y_mask``) fixes the observed components of y at their values, for /predict
and /sample alike (the steppers keep them there: ``RowState.place``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from app.inference.space import Space
from app.registry.backends.base import Array, EnergyBackend


def decoded(space: Space, backend: EnergyBackend, x: Array | None, v: Array) -> Array:
    """``v [R, D]`` with y replaced by Dec(x, z) of its own z where the model decodes, in
    place and projected onto the bounds."""
    if space.z_size and backend.has_decoder:
        v[:, : space.y_size] = space.decode(backend, x, v[:, space.y_size :])
        space.project(v)
    return v


#: One job's clamping: (``y_mask [N, Dy]`` or None, ``y_known [N, Dy]`` or None, how many
#: rows each x has (starts or chains), the job's rows).
Clamped = tuple[np.ndarray | None, Array | None, int, int]


def clamping(space: Space, jobs: Sequence[Clamped]) -> tuple[Array, Array] | None:
    """(free ``[R, D]``, known ``[R, Dy]``) over the rows of ``jobs``, job after job: 0 in
    ``free`` where a component is observed; None when no job clamps anything."""
    if all(mask is None for mask, _, _, _ in jobs):
        return None
    free = np.ones((sum(rows for *_, rows in jobs), space.dim), np.float32)
    known = np.zeros((len(free), space.y_size), np.float32)
    at = 0
    for mask, values, repeat, rows in jobs:
        if mask is not None and values is not None:
            free[at : at + rows, : space.y_size] = 1.0 - np.repeat(
                mask.astype(np.float32), repeat, axis=0
            )
            known[at : at + rows] = np.repeat(values, repeat, axis=0)
        at += rows
    return free, known


def clamp(space: Space, v: Array, free: Array, known: Array) -> Array:
    """``v`` with its clamped components at their known values, in place."""
    y = v[:, : space.y_size]
    v[:, : space.y_size] = np.where(free[:, : space.y_size] == 0, known, y)
    return v
