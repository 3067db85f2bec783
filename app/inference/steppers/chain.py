"""Langevin chains with a Metropolis correction and a step that adapts per chain (MALA).

A proposal ``y' = y - h dE/dy + sqrt(2 h T) xi`` is accepted with the Metropolis-Hastings
probability for exp(-E/T), so a chain samples its target at any step size instead of being
thrown out of a basin narrower than its step: a proposal that jumps out is simply refused.
Each chain's ``h`` then adapts towards an acceptance rate of about 0.6 (x1.1 on accept,
x0.85 on reject), so it follows the curvature of the basin it is in. /predict and /sample
run the same chains.
"""

from __future__ import annotations

import numpy as np

from app.inference.space import Space
from app.inference.steppers.rows import RowState
from app.registry.backends.base import Array

MOVE_CLIP = 0.1  # a proposal moves each component at most this share of its bound's width
GROW, SHRINK = np.float32(1.2), np.float32(0.8)  # equilibrium acceptance ~0.55

Rows = slice | np.ndarray


def accept(
    st: RowState,
    ix: Rows,
    energy: Array,
    grad: Array,
    uniform: Array,
    adapt: bool | np.ndarray,
) -> None:
    """Metropolis-Hastings for the trials just scored; adapts the step of each chain where
    ``adapt`` (a chain that keeps its states for /sample stops adapting after burn-in, so
    what it keeps is exactly distributed)."""
    v, a, g_a = st.v[ix], st.a[ix], st.g_a[ix]
    h, temperature = st.h[ix], st.temperature[ix]
    forward = v - a + h * g_a  # log q(v | a) = -|forward|^2 / (4 h T)
    backward = a - v + h * grad
    log_q = (
        np.einsum("rd,rd->r", forward, forward) - np.einsum("rd,rd->r", backward, backward)
    ) / (4 * h[:, 0] * temperature[:, 0])
    with np.errstate(invalid="ignore", over="ignore"):
        log_alpha = -(energy - st.e_a[ix]) / temperature[:, 0] + log_q
        ok = np.log(uniform) < log_alpha  # NaN never accepted
    column = ok[:, None]
    st.a[ix] = np.where(column, v, a)
    st.e_a[ix] = np.where(ok, energy, st.e_a[ix])
    st.g_a[ix] = np.where(column, grad, g_a)
    factor = np.where(column, GROW, SHRINK)
    if isinstance(adapt, np.ndarray):
        factor = np.where(adapt[:, None], factor, np.float32(1))
    if adapt is not False:
        st.h[ix] = h * factor


def propose(st: RowState, ix: Rows, normal: Array, space: Space) -> None:
    """The next proposal of every chain from its current state."""
    a, h, temperature = st.a[ix], st.h[ix], st.temperature[ix]
    delta = -h * st.g_a[ix] + np.sqrt(2 * h * temperature) * normal
    if st.free is not None:
        delta *= st.free[ix]
    clip = MOVE_CLIP * space.width
    trial = a + np.clip(delta, -clip, clip)
    st.place(ix, space, trial)
