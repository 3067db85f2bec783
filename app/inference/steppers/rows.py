"""Every per-row array of a search, in one place, so admission and compaction touch them all.

A search's candidates are rows; each row carries its trial point (the next to evaluate),
its anchor (the best point accepted so far: what the caller gets), the optimiser state of
every stepper, and its job's settings as columns. Rows of one job are contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from app.inference.space import Space
from app.inference.starts import clamp
from app.registry.backends.base import Array


@dataclass
class RowState:
    v: Array  # [R, D] trial points: the next positions the backend scores
    a: Array  # [R, D] anchors: the last accepted point of each row
    e_a: Array  # [R] the anchors' energies (+inf until the first evaluation)
    g_a: Array  # [R, D] the anchors' gradients (zeros when unknown)
    has_g: np.ndarray  # [R] bool: g_a is the anchor's gradient
    e0: Array  # [R] the start's energy (the landscape's scale, for the mode selection)
    dist: Array  # [R] estimated distance of the anchor to a stationary point (inf unknown)
    frozen: np.ndarray  # [R] bool: rows of an x that has converged and stopped searching
    # the jobs' settings, one value per row ([R, 1] columns broadcast against [R, D])
    lead: Array  # descent steps before the exploration (langevin)
    explore: Array  # exploration steps before the descent (langevin chains, dfo rounds)
    refine: Array  # descent steps after them
    lr0: Array  # the descent's first step
    h: Array  # langevin: the chain's step, adapted per row while it runs
    temperature: Array  # langevin: T of exp(-E/T)
    sigma0: Array  # dfo: the first round's jitter
    # the descent's state (Adam with backtracking)
    m1: Array  # [R, D]
    m2: Array  # [R, D]
    updates: np.ndarray  # [R, 1] int: moment updates so far (Adam's bias correction, capped)
    scale: Array  # [R, 1] backtracking multiplier of the step, at most 1
    moved: np.ndarray  # [R] bool: the anchor moved since the last descent proposal
    x: Array | None = None  # [R, *x] conditional models
    labels: Array | None = None  # [R, 1] discrete latent, assigned per candidate
    free: Array | None = None  # [R, D] 0 where a component is clamped (fill in the blanks)
    known: Array | None = None  # [R, Dy] the clamped values

    @classmethod
    def empty_optimiser(
        cls, v: Array, columns: dict[str, Array], **extra: Array | None
    ) -> RowState:
        """Rows about to start: anchors unset, optimiser state zero."""
        rows = len(v)
        zeros = np.zeros_like(v)
        return cls(
            v=v,
            a=v.copy(),
            e_a=np.full(rows, np.inf, np.float32),
            g_a=zeros.copy(),
            has_g=np.zeros(rows, bool),
            e0=np.full(rows, np.inf, np.float32),
            dist=np.full(rows, np.inf, np.float32),
            frozen=np.zeros(rows, bool),
            m1=zeros.copy(),
            m2=zeros.copy(),
            updates=np.zeros((rows, 1), np.intp),
            scale=np.ones((rows, 1), np.float32),
            moved=np.ones(rows, bool),
            **columns,
            **extra,  # type: ignore[arg-type]
        )

    def restart_descent(self, ix: slice | np.ndarray) -> None:
        """Fresh descent state for rows ``ix`` (the final descent after an exploration)."""
        self.m1[ix], self.m2[ix] = 0.0, 0.0
        self.updates[ix], self.scale[ix] = 0, 1.0
        self.moved[ix], self.dist[ix] = True, np.inf

    def place(self, ix: slice | np.ndarray, space: Space, trial: Array | None = None) -> None:
        """The next trial points of rows ``ix`` (``trial``, or those already written to
        ``v``): projected onto the bounds, clamped components (fill in the blanks) back at
        their known values."""
        if isinstance(ix, slice):  # a view: in place
            points = self.v[ix]
            if trial is not None:
                points[...] = trial
            self._settle(points, ix, space)
        else:  # (a fancy index reads a copy)
            points = self.v[ix] if trial is None else trial.astype(np.float32, copy=False)
            self.v[ix] = self._settle(points, ix, space)

    def _settle(self, trial: Array, ix: slice | np.ndarray, space: Space) -> Array:
        space.project(trial)
        if self.free is not None and self.known is not None:
            clamp(space, trial, self.free[ix], self.known[ix])
        return trial

    def extend(self, other: RowState) -> None:
        """Append ``other``'s rows (admission at a step boundary)."""
        if (self.free is None) != (other.free is None):  # one side clamps: both get masks
            known = self.known if self.known is not None else other.known
            assert known is not None
            for side in (self, other):
                if side.free is None:
                    side.free = np.ones_like(side.v)
                    side.known = np.zeros((len(side.v), known.shape[1]), np.float32)
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine is not None and theirs is not None:
                setattr(self, f.name, np.concatenate([mine, theirs]))

    def keep(self, rows: np.ndarray) -> None:
        """Keep only ``rows`` (compaction after jobs leave)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                setattr(self, f.name, value[rows])
