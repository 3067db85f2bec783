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

#: Adam's bias corrections ``1 - beta**k`` by update count k (k = 0 read as 1). In float32
#: they are exactly 1 past ~160 updates, so the count is capped where the table ends and a
#: step reads its corrections instead of computing powers (the optimiser's arithmetic per
#: step is a few dozen tiny array operations: each one saved shows in rows/s).
CORRECTED_UPDATES = 256


def _corrections(beta: float) -> Array:
    k = np.maximum(np.arange(CORRECTED_UPDATES + 1, dtype=np.float32), 1)
    table = (1 - np.float32(beta) ** k).astype(np.float32)
    assert table[-1] == 1.0
    return table


BIAS1, BIAS2 = _corrections(BETAS[0]), _corrections(BETAS[1])
B1, B2 = np.float32(BETAS[0]), np.float32(BETAS[1])
C1, C2 = 1 - B1, 1 - B2
SHRINK, REGROW, TINY = np.float32(BACKTRACK), np.float32(GROW), np.float32(EPS)


def every(mask: np.ndarray) -> bool:
    """``mask.all()`` without the reduction machinery (a few us less on a small array)."""
    return int(np.count_nonzero(mask)) == mask.size


def full_mask(rows: np.ndarray, width: int) -> np.ndarray:
    """A row mask ``[R]`` as ``[R, width]``: numpy's masked operations run ~5x faster on a
    mask of the array's own shape than on a broadcast ``[R, 1]`` one."""
    return rows[:, None].repeat(width, axis=1)


def _put(target: np.ndarray, ix: Rows, values: np.ndarray, where: np.ndarray) -> None:
    """``target[ix] = values`` where ``where``, the rest unchanged (in place on a slice)."""
    if isinstance(ix, slice):
        np.copyto(target[ix], values, where=where)
    else:
        target[ix] = np.where(where, values, target[ix])


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
    every_g = every(has_g)
    ok = energy <= e_a  # an unset anchor (+inf) takes any finite energy; NaN never
    if grad is not None and not every_g:  # a row scoring its own anchor for a gradient
        ok |= ~has_g & np.isfinite(energy)  # takes it (two graphs may differ in the last bit)
    v = st.v[ix]
    if grad is not None and measure:
        dist = stationary_distance(space, v, grad, st.a[ix], st.g_a[ix], has_g, st.dist[ix])
        _put(st.dist, ix, dist, ok)
    if every(ok):  # every trial taken
        st.a[ix], st.e_a[ix] = v, energy
        if grad is not None:
            st.g_a[ix], st.has_g[ix] = grad, True
        st.moved[ix] = True
        return
    column = ok[:, None]
    took = full_mask(ok, v.shape[1])
    if grad is not None:
        _put(st.g_a, ix, grad, took)
        if not every_g:
            st.has_g[ix] = has_g | ok
    _put(st.a, ix, v, took)
    _put(st.e_a, ix, energy, ok)
    st.moved[ix] = ok
    if isinstance(ix, slice):
        scale = st.scale[ix]
        np.multiply(scale, SHRINK, out=scale, where=~column)
    else:
        st.scale[ix] = np.where(column, st.scale[ix], st.scale[ix] * SHRINK)


def propose(st: RowState, ix: Rows, lr: Array, space: Space) -> None:
    """The next trial of each row: one Adam step of ``lr * scale`` from its anchor. Where
    the last trial was rejected, the momentum is dropped (it may point uphill: halving a
    step along it would never succeed) and the step follows the preconditioned gradient,
    always a descent direction. A row whose anchor has no gradient yet scores the anchor
    itself first."""
    moved = st.moved[ix]
    if isinstance(ix, slice):  # views: the step writes the state in place
        _adam(st.m1[ix], st.m2[ix], st.updates[ix], st.scale[ix], st, ix, moved, lr, st.v[ix])
    else:  # copies of the rows, stepped, written back
        m1, m2, updates, scale = st.m1[ix], st.m2[ix], st.updates[ix], st.scale[ix]
        trial = np.empty_like(m1)
        _adam(m1, m2, updates, scale, st, ix, moved, lr, trial)
        st.m1[ix], st.m2[ix], st.updates[ix], st.scale[ix], st.v[ix] = (
            m1,
            m2,
            updates,
            scale,
            trial,
        )
    st.moved[ix] = False
    st.place(ix, space)


def _adam(
    m1: Array,
    m2: Array,
    updates: np.ndarray,
    scale: Array,
    st: RowState,
    ix: Rows,
    moved_rows: np.ndarray,
    lr: Array,
    trial: Array,
) -> None:
    """The step of :func:`propose` on the rows' own arrays, each updated in place (a step is
    a few dozen operations on tiny arrays: temporaries and write-backs are a visible share
    of it)."""
    g, a, has_g = st.g_a[ix], st.a[ix], st.has_g[ix]
    moved = moved_rows[:, None]  # ([R, 1] like updates and scale)
    moved_d = full_mask(moved_rows, g.shape[1])  # ([R, D] like the moments)
    np.add(updates, moved, out=updates)
    np.minimum(updates, CORRECTED_UPDATES, out=updates)
    bias1 = BIAS1[updates]
    np.multiply(m1, B1, out=m1)
    np.add(m1, C1 * g, out=m1)
    np.multiply(g, bias1, out=m1, where=~moved_d)  # a rejected row restarts at its gradient
    np.add(B2 * m2, C2 * g * g, out=m2, where=moved_d)
    np.multiply(scale, REGROW, out=scale, where=moved)
    np.minimum(scale, 1, out=scale)  # (a row that stayed is at most 1 already)
    direction = (m1 / bias1) / (np.sqrt(m2 / BIAS2[updates]) + TINY)
    np.multiply(lr * scale, direction, out=trial)
    np.subtract(a, trial, out=trial)
    if not every(has_g):
        np.copyto(trial, a, where=~has_g[:, None])
