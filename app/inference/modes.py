"""From candidates to modes: greedy merge by energy within a radius (non-maximum
suppression in y space), each mode weighted by the Gibbs mass of the candidates it took in."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.registry.backends.base import Array

#: Measured cost of the greedy merge per (mode kept x candidate) on the development machine
#: (1,000 modes of 4,096 candidates: 0.21 s), used to reserve time for it before a deadline.
MERGE_S_PER_PAIR = 50e-9


def merge_seconds(k: int, candidates: int) -> float:
    """Expected seconds of ``select_modes`` for one x (at most ``k`` modes)."""
    return min(k, candidates) * candidates * MERGE_S_PER_PAIR


@dataclass(frozen=True)
class Mode:
    index: int  # the representative candidate (the lowest energy of its group)
    mass: float  # share of softmax(-E / T) over all candidates held by its group
    members: int


def gibbs_weights(energy: Array, temperature: float) -> np.ndarray:
    """softmax(-E / T) over candidates ``[S]``, in float64 (energies can be large)."""
    logits = -np.asarray(energy, np.float64) / temperature
    if not np.isfinite(logits).any():
        return np.zeros(len(logits))
    logits -= logits.max()
    w = np.exp(logits)
    total: np.ndarray = w / w.sum()
    return total


def select_modes(
    y: Array, energy: Array, k: int, merge_radius: float, temperature: float
) -> list[Mode]:
    """Up to ``k`` modes among candidates ``y [S, D]`` with energies ``[S]``.

    Candidates are taken lowest energy first; each one not yet absorbed becomes a mode and
    absorbs every remaining candidate within ``merge_radius`` of it. Two returned modes are
    therefore never closer than ``merge_radius``. Non-finite energies are never chosen.
    """
    weights = gibbs_weights(np.where(np.isfinite(energy), energy, np.inf), temperature)
    order = np.argsort(energy, kind="stable")
    taken = ~np.isfinite(energy)
    flat = np.asarray(y, np.float64).reshape(len(energy), -1)
    modes: list[Mode] = []
    for i in order:
        if len(modes) == k:
            break
        if taken[i]:
            continue
        near = ~taken & (np.sum((flat - flat[i]) ** 2, axis=1) <= merge_radius**2)
        near[i] = True
        taken |= near
        modes.append(Mode(int(i), float(weights[near].sum()), int(near.sum())))
    return modes
