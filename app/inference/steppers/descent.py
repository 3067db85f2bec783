"""Descent: Adam with backtracking, the local finish of every continuous search.

Adam's step is about ``lr`` per component whatever the gradient's scale, so one step size
crosses a box of any energy scale, but it ignores curvature: in a basin narrower than the
step it jumps out. Here a trial that raises the energy is rejected and retried at half the
step along the preconditioned gradient (the moments are not updated by a rejected point),
and every accepted step lets the multiplier grow back towards 1. The energy of a row's anchor never
rises, so a row stays in the basin it descends, however narrow.

Each accepted step also estimates how far the anchor is from a stationary point, from the
secant curvature along the step: ``|g| / c`` with ``c = s.(g - g_prev) / |s|^2``. The
estimate is in y's units and does not change when the energy is scaled, so convergence can
be judged against the bounds rather than in gradient units.
"""

from __future__ import annotations

import numpy as np

from app.inference.space import Space
from app.inference.steppers.rows import RowState
from app.registry.backends.base import Array

BETAS = (0.9, 0.9)  # second-moment memory ~10 steps (see the module doc)
EPS = 1e-12
BACKTRACK = 0.5  # a rejected step is retried at half its length
GROW = 1.5  # each accepted step lets the multiplier grow back (up to 1)
TINY_MOVE_SHARE = 1e-5  # a move below this share of the width measures no curvature

Rows = slice | np.ndarray


def stationary_distance(
    space: Space,
    v: Array,
    g: Array,
    prev_v: Array,
    prev_g: Array,
    known: np.ndarray,
    previous: Array,
) -> Array:
    """Per row: |projected g| / (secant curvature along v - prev_v); 0 where the projected
    gradient vanishes (a minimum on a bound); inf where the curvature is unknown or not
    positive (no previous gradient, a concave stretch). A step too small to measure a
    curvature in float32 (a row settled to the last bits) keeps its ``previous`` estimate."""
    s = v - prev_v
    ss = np.einsum("rd,rd->r", s, s)
    sy = np.einsum("rd,rd->r", s, g - prev_g)
    norm = space.stationarity(v, g)
    tiny = (TINY_MOVE_SHARE * space.typical_width) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        curvature = sy / ss
        dist = np.where(known & (ss > 0) & (sy > 0), norm / curvature, np.inf)
    dist = np.where(known & (ss <= tiny), np.minimum(dist, previous), dist)
    return np.where(norm == 0, 0.0, dist).astype(np.float32)


def accept(
    st: RowState, ix: Rows, energy: Array, grad: Array | None, space: Space, measure: bool
) -> None:
    """Take each trial whose energy is not above its anchor's; shrink the step of the rest;
    with ``measure``, estimate the accepted anchors' distance to a stationary point."""
    e_a = st.e_a[ix]
    has_g = st.has_g[ix]
    ok = energy <= e_a  # an unset anchor (+inf) takes any finite energy; NaN never
    if grad is not None and not has_g.all():  # a row scoring its own anchor for a gradient
        ok |= ~has_g & np.isfinite(energy)  # takes it (two graphs may differ in the last bit)
    v = st.v[ix]
    if grad is not None and measure:
        dist = stationary_distance(space, v, grad, st.a[ix], st.g_a[ix], has_g, st.dist[ix])
        st.dist[ix] = np.where(ok, dist, st.dist[ix])
    if ok.all():  # the common step: every trial taken
        st.a[ix], st.e_a[ix] = v, energy
        if grad is not None:
            st.g_a[ix], st.has_g[ix] = grad, True
        st.moved[ix] = True
        return
    column = ok[:, None]
    if grad is not None:
        st.g_a[ix] = np.where(column, grad, st.g_a[ix])
        st.has_g[ix] = has_g | ok
    st.a[ix] = np.where(column, v, st.a[ix])
    st.e_a[ix] = np.where(ok, energy, e_a)
    st.moved[ix] = ok
    st.scale[ix] = np.where(column, st.scale[ix], st.scale[ix] * np.float32(BACKTRACK))


def propose(st: RowState, ix: Rows, lr: Array, space: Space) -> None:
    """The next trial of each row: one Adam step of ``lr * scale`` from its anchor. Where
    the last trial was rejected, the momentum is dropped (it may point uphill: halving a
    step along it would never succeed) and the step follows the preconditioned gradient,
    always a descent direction. A row whose anchor has no gradient yet scores the anchor
    itself first."""
    b1, b2 = np.float32(BETAS[0]), np.float32(BETAS[1])
    moved_rows = st.moved[ix]
    g = st.g_a[ix]
    if moved_rows.all():  # the common step: every anchor moved, plain Adam
        updates = st.updates[ix] + 1
        bias1 = 1 - b1**updates
        m1 = b1 * st.m1[ix] + (1 - b1) * g
        m2 = b2 * st.m2[ix] + (1 - b2) * g * g
        scale = np.minimum(st.scale[ix] * np.float32(GROW), 1)
    else:
        moved = moved_rows[:, None]
        updates = st.updates[ix] + moved
        bias1 = 1 - b1 ** np.maximum(updates, 1)
        m1 = np.where(moved, b1 * st.m1[ix] + (1 - b1) * g, g * bias1)
        m2 = np.where(moved, b2 * st.m2[ix] + (1 - b2) * g * g, st.m2[ix])
        scale = np.where(moved, np.minimum(st.scale[ix] * np.float32(GROW), 1), st.scale[ix])
    bias2 = 1 - b2 ** np.maximum(updates, 1)
    direction = (m1 / bias1) / (np.sqrt(m2 / bias2) + np.float32(EPS))
    a = st.a[ix]
    trial = a - lr * scale * direction
    has_g = st.has_g[ix]
    if not has_g.all():
        trial = np.where(has_g[:, None], trial, a)
    st.m1[ix], st.m2[ix], st.updates[ix], st.scale[ix] = m1, m2, updates, scale
    st.moved[ix] = False
    st.place(ix, trial, space)
