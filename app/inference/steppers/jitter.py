"""Derivative-free rounds (dfo): every candidate tries a jittered copy of itself.

Each round, each candidate proposes ``y' = y + sigma_t xi`` with a jitter that halves every
round, and takes it when its energy is lower, or with probability exp(-dE / T) when higher.
T is set each round from the population itself: a share of the spread (mean - min) of the
energies of the x's candidates, so it means the same whatever the energy's scale, and cools
as the population settles.

Why not resample the population in proportion to softmax(-E/T) (Implicit BC's scheme):
resampling moves candidates between basins, and a T that concentrates the population
empties the shallower wells within a few rounds (measured at T = 1 on the benchmark's
landscapes: recall 0.20 on five wells of depths 1 to 5, 0.28 on six wells in 6-D). Here each
candidate competes only with its own jittered copy, so every basin that holds a candidate at
the start keeps one; the gradient descent that follows the rounds then settles each.
"""

from __future__ import annotations

import numpy as np

from app.inference.space import Space
from app.inference.spread import energy_spread
from app.inference.steppers.rows import RowState
from app.registry.backends.base import Array

SHRINK = 0.5  # the jitter halves every round
TEMPERATURE_SHARE = 0.05  # T = this share of the x's energy spread (mean - min)

Rows = slice | np.ndarray


def round_temperature(e_a: Array, firsts: np.ndarray) -> Array:
    """Per row: T of its x this round, from its x's candidates (contiguous blocks that start
    at ``firsts``)."""
    spread = energy_spread(e_a, firsts) * TEMPERATURE_SHARE
    counts = np.diff(np.append(firsts, len(e_a)))
    tiny = np.finfo(np.float32).tiny
    return np.repeat(np.maximum(spread, tiny), counts).astype(np.float32)


def accept(st: RowState, ix: Rows, energy: Array, uniform: Array, firsts: np.ndarray) -> None:
    e_a = st.e_a[ix]
    temperature = round_temperature(e_a, firsts)
    with np.errstate(over="ignore", invalid="ignore"):
        uphill = uniform < np.exp(-(energy - e_a) / temperature)
    ok = (energy <= e_a) | (uphill & np.isfinite(energy))
    st.a[ix] = np.where(ok[:, None], st.v[ix], st.a[ix])
    st.e_a[ix] = np.where(ok, energy, e_a)
    st.moved[ix] = st.moved[ix] | ok


def propose(st: RowState, ix: Rows, sigma: Array, normal: Array, space: Space) -> None:
    """``sigma [r, 1]``: each row's jitter this round."""
    delta = sigma * normal
    if st.free is not None:
        delta *= st.free[ix]
    st.place(ix, space, st.a[ix] + delta)
