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


#: A candidate still on its way down is absorbed by a mode within its estimated remaining
#: distance, up to this many merge radii (a far-off estimate must not swallow a basin).
REACH_CAP = 4.0


def select_modes(
    y: Array,
    energy: Array,
    k: int,
    merge_radius: float,
    temperature: float,
    gap: float = 0.0,
    reach: Array | None = None,
    settled: np.ndarray | None = None,
) -> list[Mode]:
    """Up to ``k`` modes among candidates ``y [S, D]`` with energies ``[S]``, answered
    lowest energy first.

    Candidates are taken in tiers: the lowest energy not yet absorbed, and with it every
    candidate within ``gap`` of that energy. Within a tier, modes are chosen farthest point
    first (each the candidate farthest from every mode so far), so when many candidates
    share nearly the lowest energy (a continuum of minima: a ring, a valley floor) the
    modes spread over that set instead of crowding one end of it; between tiers, lower
    energy comes first. Each mode absorbs every remaining candidate within ``merge_radius``
    (plus the candidate's ``reach [S]``: its estimated distance to the stationary point it
    is heading for, so a few stragglers of one deep basin do not take the places of other
    basins' minima). ``settled [S]`` (converged candidates, when known): after the lowest
    candidate of all, the settled ones are considered before the rest, which fill any places
    left (a candidate still on its way is not a mode yet). With ``gap = 0``, no reach and
    nothing settled this is greedy non-maximum suppression by energy. Non-finite energies
    are never chosen.
    """
    weights = gibbs_weights(np.where(np.isfinite(energy), energy, np.inf), temperature)
    order = np.argsort(energy, kind="stable")
    taken = ~np.isfinite(energy)
    flat = np.asarray(y, np.float64).reshape(len(energy), -1)
    nearest = np.full(len(energy), np.inf)  # squared distance to the closest mode so far
    radius = np.full(len(energy), merge_radius)
    if reach is not None:
        extra = np.where(np.isfinite(reach), reach, 0.0)
        radius += np.minimum(extra, REACH_CAP * merge_radius)
    radius2 = radius**2
    modes: list[Mode] = []
    if settled is None:
        _select_pass(flat, energy, order, k, radius2, gap, weights, taken, nearest, modes)
    else:
        for part in (order[:1], order[settled[order]], order):  # best, settled, the rest
            _select_pass(flat, energy, part, k, radius2, gap, weights, taken, nearest, modes)
    modes.sort(key=lambda mode: float(energy[mode.index]))
    return modes


def _select_pass(
    flat: np.ndarray,
    energy: Array,
    order: np.ndarray,
    k: int,
    radius2: np.ndarray,
    gap: float,
    weights: np.ndarray,
    taken: np.ndarray,
    nearest: np.ndarray,
    modes: list[Mode],
) -> None:
    """Tiers and farthest points among the candidates of ``order`` (lowest energy first);
    ``taken``, ``nearest`` and ``modes`` are updated in place."""
    eligible = np.zeros(len(energy), bool)
    eligible[order] = True
    at = 0
    while len(modes) < k:
        while at < len(order) and taken[order[at]]:
            at += 1
        if at == len(order):
            return
        i = int(order[at])
        tier = eligible & (energy <= energy[i] + gap) & ~taken
        if modes:  # a tier is spread from the modes already chosen, its first pick too
            i = int(np.argmax(np.where(tier, nearest, -1.0)))
        while len(modes) < k:
            d2 = np.sum((flat - flat[i]) ** 2, axis=1)
            near = ~taken & (d2 <= radius2)
            near[i] = True
            taken |= near
            modes.append(Mode(i, float(weights[near].sum()), int(near.sum())))
            np.minimum(nearest, d2, out=nearest)
            open_ = tier & ~taken
            if not open_.any():
                break
            i = int(np.argmax(np.where(open_, nearest, -1.0)))
