"""Energy-minimising search for many jobs at once: propose -> refine -> re-score.

All candidates of all jobs in a batch are rows of one array ``v [R, D]`` (see ``space``);
every step makes one backend call for every live row, whatever job it belongs to, so
concurrent requests share the per-call cost. Per-row settings (step size, noise, steps) are
arrays, so jobs with different settings still share a batch.

Reproducibility: each job draws its starts and noise from its own generator seeded by its
seed, in the same order whether it runs alone or with others; rows never mix across jobs.
With a backend whose rows do not depend on the batch around them (checked at load), a
seeded job therefore gives the same bits alone or coalesced.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from app.inference.batch import per_row
from app.inference.control import Control, seconds_left
from app.inference.modes import merge_seconds
from app.inference.params import SearchParams
from app.inference.space import Space
from app.registry.backends.base import Array
from app.registry.loader import LoadedModel

ADAM_BETAS = (0.9, 0.99)  # second-moment memory ~100 steps, the length of a typical run
FINAL_STEP_SHARE = 0.01  # every schedule decays the step to 1% of step_size
LANGEVIN_MOVE_CLIP = 0.1  # a Langevin move is clipped to this share of each bound's width
LANGEVIN_REFINE_SHARE = 0.5  # noise-free steps after the chain, as a share of its steps
DFO_SHRINK = 0.5  # the resampling noise halves every iteration
MIN_STEPS_BEFORE_TOL = 5  # a flat start must not look converged before it has moved


@dataclass
class SearchJob:
    """One request: ``x [N, *x]`` (None if unconditional); ``y_known``/``y_mask`` ``[N, Dy]``."""

    x: Array | None
    rows_x: int
    params: SearchParams
    y_known: Array | None = None
    y_mask: np.ndarray | None = None
    control: Control = field(default_factory=Control)

    @property
    def rows(self) -> int:
        return self.rows_x * self.params.num_starts


@dataclass
class Candidates:
    """A finished job's candidates, ``[N, S, ...]``, re-scored at their final positions."""

    y: Array  # [N, S, Dy]
    z: Array | None  # [N, S, Dz] continuous or [N, S] labels
    energy: Array  # [N, S]
    grad_norm: Array | None  # [N, S]; None for gradient-free methods
    trajectory: Array | None  # [T, N, S, Dy] with return_trajectory
    steps_run: int
    evaluations: int
    partial: bool
    elapsed_s: float


@dataclass
class _Segment:
    job: SearchJob
    start: int
    stop: int
    rng: np.random.Generator
    steps: int
    done: bool = False
    dropped: bool = False  # cancelled or expired with nobody left to answer: no result
    finish_s: float = 0.0  # kept before the deadline for post-processing (the merge)
    frozen_any: bool = False  # some of its x have converged and stopped searching
    partial: bool = False
    steps_run: int = 0
    evaluations: int = 0
    trajectory: list[Array] = field(default_factory=list)
    t: int = 0  # its own step count: jobs admitted mid-run are at different steps
    started: float = field(default_factory=time.monotonic)
    adam: Array | None = None  # gd: (step size, bias corrections) per step, see _adam_table


def _adam_table(step_size: float, steps: int) -> Array:
    """A gd job's whole schedule, ``[steps, 3]`` float32: its step size (cosine decay) and
    Adam's bias corrections 1 - beta^(t+1) at every step t. Computed once, per job, in
    float64 from that job alone: a step then reads one row instead of recomputing per job,
    and the bits do not depend on which jobs share the batch."""
    b1, b2 = ADAM_BETAS
    return np.array(
        [
            (step_size * _cosine_decay(t, steps), 1 - b1 ** (t + 1), 1 - b2 ** (t + 1))
            for t in range(max(steps, 1))
        ],
        dtype=np.float32,
    )


def _cosine_decay(t: int, steps: int) -> float:
    """From 1 at step 0 to FINAL_STEP_SHARE at the last step."""
    frac = min(t / max(steps, 1), 1.0)
    return FINAL_STEP_SHARE + (1 - FINAL_STEP_SHARE) * 0.5 * (1 + math.cos(math.pi * frac))


def _repeat_rows(a: Array, times: int) -> Array:
    return np.repeat(a, times, axis=0)


class Search:
    """One batch of jobs of one method on one model."""

    free: Array | None  # [R, D]: 0 where a component is clamped (fill in the blanks)
    known: Array  # [R, Dy]: the clamped values (with free)
    frozen: np.ndarray  # [R] bool: rows of an x that has converged

    def __init__(self, model: LoadedModel, jobs: list[SearchJob]) -> None:
        self.model = model
        self.space = Space.of(model.manifest)
        self.method = jobs[0].params.method
        self.segments: list[_Segment] = []
        at = 0
        for job in jobs:
            steps = job.params.steps
            if self.method == "langevin":
                steps += max(1, math.ceil(steps * LANGEVIN_REFINE_SHARE)) if steps else 0
            rng = np.random.default_rng(job.params.seed)
            segment = _Segment(job, at, at + job.rows, rng, steps)
            # Time to keep for merging its candidates into modes after the search (at most
            # half its budget: the search itself gets at least the other half).
            merge_s = job.rows_x * merge_seconds(job.params.k, job.params.num_starts)
            segment.finish_s = min(merge_s, 0.5 * max(0.0, seconds_left(job.control.deadline)))
            self.segments.append(segment)
            at += job.rows
        self.rows = at
        self._init_rows()
        self._results: dict[int, Candidates] = {}  # by segment, until delivered and compacted
        self._last_step_s = 0.0

    # --- iteration-level admission ------------------------------------------------------
    #: Per-row arrays, in row order; admit() appends to them and compact() filters them.
    _ROW_ARRAYS = ("v", "m1", "m2", "x", "labels", "step_size", "noise", "refine_step", "steps")

    def admit(self, jobs: list[SearchJob]) -> None:
        """Add jobs at a step boundary: their rows are set up exactly as if they had started
        a search of their own (same generator draws), then join every later backend call."""
        newcomer = Search(self.model, jobs)
        offset = self.rows
        for name in self._ROW_ARRAYS:
            mine, theirs = getattr(self, name), getattr(newcomer, name)
            if mine is not None:
                setattr(self, name, np.concatenate([mine, theirs]))
        if self.free is not None or newcomer.free is not None:
            mine_free, mine_known = self._clamping()
            their_free, their_known = newcomer._clamping()
            self.free = np.concatenate([mine_free, their_free])
            self.known = np.concatenate([mine_known, their_known])
        self.frozen = np.concatenate([self.frozen, newcomer.frozen])
        for segment in newcomer.segments:
            segment.start += offset
            segment.stop += offset
            self.segments.append(segment)
        self.rows += newcomer.rows
        self._index_blocks()

    def _finished(self, i: int) -> bool:
        """Answered (re-scored and delivered) or dropped: nothing more to do for it. A job
        that converged during the last step is done but answered at the next boundary."""
        return self.segments[i].dropped or i in self._results

    def compact(self) -> list[int]:
        """Forget the finished jobs and their rows; returns the (old) indices of the jobs
        kept, in order, so a caller can re-index its own bookkeeping."""
        kept = [i for i in range(len(self.segments)) if not self._finished(i)]
        if len(kept) == len(self.segments):
            return kept
        keep = [self.segments[i] for i in kept]
        rows = (
            np.concatenate([np.arange(s.start, s.stop) for s in keep])
            if keep
            else np.zeros(0, np.intp)
        )
        for name in self._ROW_ARRAYS:
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value[rows])
        if self.free is not None:
            self.free, self.known = self.free[rows], self.known[rows]
        self.frozen = self.frozen[rows]
        at = 0
        for s in keep:
            size = s.stop - s.start
            s.start, s.stop = at, at + size
            at += size
        self.segments, self.rows, self._results = keep, at, {}
        if keep:
            self._index_blocks()
        return kept

    @property
    def live(self) -> bool:
        """Some job still has steps to take or an answer to deliver."""
        return any(not self._finished(i) for i in range(len(self.segments)))

    # --- set-up -------------------------------------------------------------------------
    def _per_row(self, value: Callable[[SearchJob], float]) -> Array:
        return per_row(
            [value(s.job) for s in self.segments], [s.stop - s.start for s in self.segments]
        )

    def _init_rows(self) -> None:
        space, manifest = self.space, self.model.manifest
        self.x = None
        if manifest.x is not None:
            self.x = np.concatenate(
                [_repeat_rows(s.job.x, s.job.params.num_starts) for s in self.segments]  # type: ignore[arg-type]
            )
        if self.method == "enumerate":
            labels = [
                np.tile(np.arange(s.job.params.num_starts, dtype=np.float32), s.job.rows_x)
                for s in self.segments
            ]
            self.v = np.concatenate(labels)[:, None]
        else:
            self.v = np.concatenate([space.sample(s.rng, s.stop - s.start) for s in self.segments])
        # A discrete latent is assigned, not searched: starts cycle through its labels.
        self.labels = None
        if space.z_labels:
            self.labels = np.concatenate(
                [np.arange(s.stop - s.start) % space.z_labels for s in self.segments]
            ).astype(np.float32)[:, None]
        if space.z_size and self.model.backend.has_decoder and self.method != "enumerate":
            # Latent models with a decoder start on their manifold: y = Dec(x, z0).
            self.v[:, : space.y_size] = space.decode(
                self.model.backend, self.x, self.v[:, space.y_size :]
            )
            space.project(self.v)
        # Clamped components (fill in the blanks): values fixed, gradients zeroed.
        self.free = None
        if any(s.job.y_mask is not None for s in self.segments):
            free = np.ones((self.rows, space.dim), np.float32)
            known = np.zeros((self.rows, space.y_size), np.float32)
            for s in self.segments:
                if s.job.y_mask is not None and s.job.y_known is not None:
                    reps = s.job.params.num_starts
                    observed = _repeat_rows(s.job.y_mask.astype(np.float32), reps)
                    free[s.start : s.stop, : space.y_size] = 1.0 - observed
                    known[s.start : s.stop] = _repeat_rows(s.job.y_known, reps)
            self.free, self.known = free, known
            self._clamp(slice(None))
        self.step_size = self._per_row(lambda j: j.params.step_size)
        self.noise = self._per_row(lambda j: j.params.noise_scale)
        self.refine_step = self._per_row(lambda j: j.params.refine_step_size)
        self.steps = self._per_row(lambda j: float(j.params.steps))
        self.m1 = np.zeros_like(self.v)
        self.m2 = np.zeros_like(self.v)
        self.frozen = np.zeros(self.rows, bool)  # rows of x that have converged
        self._index_blocks()

    def _index_blocks(self) -> None:
        """Blocks: one x's starts within one job (contiguous rows), each stopping on its own:
        for every row its block, and for every block its job, first row, size, tol."""
        block, segment, first, size, tol, chain = [], [], [], [], [], []
        count = 0
        for i, s in enumerate(self.segments):
            n, starts = s.job.rows_x, s.job.params.num_starts
            block.append(count + np.repeat(np.arange(n), starts))
            segment.append(np.full(n, i))
            first.append(s.start + starts * np.arange(n))
            size.append(np.full(n, starts))
            tol.append(np.full(n, s.job.params.tol if s.job.params.tol > 0 else -np.inf))
            chain.append(np.full(n, s.job.params.steps))
            count += n
        self.block = np.concatenate(block)
        self.block_ids = np.arange(count)
        self.block_starts = np.concatenate(first)  # rows are in block order from row 0
        self.block_segment = np.concatenate(segment)
        self.block_first_row = np.concatenate(first)
        self.block_rows = np.concatenate(size)
        self.block_tol = np.concatenate(tol)
        self.block_chain_steps = np.concatenate(chain)

    def _clamping(self) -> tuple[Array, Array]:
        """(free, known) of every row; all free when no job clamps anything."""
        if self.free is not None:
            return self.free, self.known
        free = np.ones((self.rows, self.space.dim), np.float32)
        return free, np.zeros((self.rows, self.space.y_size), np.float32)

    def _clamp(self, rows: slice | np.ndarray) -> None:
        if self.free is not None:
            y = self.v[rows, : self.space.y_size]
            clamped = self.free[rows, : self.space.y_size] == 0
            self.v[rows, : self.space.y_size] = np.where(clamped, self.known[rows], y)

    # --- evaluation -------------------------------------------------------------------
    def _inputs(self, rows: slice | np.ndarray) -> dict[str, Array]:
        x = None if self.x is None else self.x[rows]
        labels = None if self.labels is None else self.labels[rows]
        return self.space.energy_inputs(self.v[rows], x, labels)

    def _evaluate(self, rows: slice | np.ndarray, grad: bool) -> tuple[Array, Array | None]:
        out = self.model.backend.energy(self._inputs(rows), grad)
        if not grad:
            return out.energy, None
        g = self.space.join_grads(out.grads, len(out.energy))
        if self.free is not None:
            g = g * self.free[rows]
        return out.energy, g

    # --- the loop ---------------------------------------------------------------------
    def run(
        self, deliver: Callable[[int, Candidates], None] | None = None, margin_s: float = 0.02
    ) -> list[Candidates | None]:
        """Run every job to its step budget, convergence or deadline, re-scoring each job as
        it stops; ``deliver(i, candidates)`` hands job i's result over at once (a job that
        stopped early does not wait for the rest of the batch)."""
        results: dict[int, Candidates] = {}

        def keep(i: int, found: Candidates) -> None:
            results[i] = found
            if deliver is not None:
                deliver(i, found)

        count = len(self.segments)
        while self.advance(keep, margin_s):
            pass
        return [results.get(i) for i in range(count)]

    def advance(self, deliver: Callable[[int, Candidates], None], margin_s: float = 0.02) -> bool:
        """One step boundary, then one step. At the boundary every job that must stop does:
        at its step budget, converged, near its deadline (re-scored, partial), or with its
        caller gone (cancelled or expired: it leaves with no result); each stopped job is
        re-scored and handed to ``deliver(segment index, candidates)``. Then every live row
        takes one step, in one backend call. Returns whether any job is still live."""
        gradient_free = self.method in ("dfo", "enumerate")
        now = time.monotonic()
        wall = time.time()  # deadlines are wall-clock (see Control)
        margin = max(margin_s, 3 * self._last_step_s)
        for s in self.segments:
            if s.done:
                continue
            control = s.job.control
            if control.cancelled or wall >= control.deadline:  # nobody waits: no answer
                s.done = s.dropped = True
            elif s.t >= s.steps:
                s.done = True
            elif wall + margin + s.finish_s >= control.deadline:  # answer while we can
                s.done, s.partial = True, True
        stopped = [
            i
            for i, s in enumerate(self.segments)
            if s.done and not s.dropped and i not in self._results
        ]
        if stopped:
            finished = self._finish(stopped, gradient_free)
            for i, candidates in zip(stopped, finished, strict=True):
                self._results[i] = candidates
                deliver(i, candidates)
        live = [s for s in self.segments if not s.done]
        if not live:
            return False
        counts = [self._searching(s) for s in live]
        rows = self._rows_of(live)
        for s in live:
            if s.job.params.return_trajectory:
                s.trajectory.append(self.v[s.start : s.stop, : self.space.y_size].copy())
        energy, g = self._evaluate(rows, grad=not gradient_free)
        if self.method == "gd":
            assert g is not None
            self._adam_step(rows, live, counts, g)
        elif self.method == "langevin":
            assert g is not None
            self._langevin_step(rows, live, counts, g)
        elif self.method == "dfo":
            self._dfo_step(live, energy)
        # Convergence is checked only where it can stop something (tol > 0; past the first
        # steps): one reduction over the rows, skipped entirely otherwise.
        if g is not None and any(
            s.job.params.tol > 0 and s.t + 1 >= MIN_STEPS_BEFORE_TOL for s in live
        ):
            norms = self.space.stationarity(self.v[rows], g)
            self._stop_converged(live, rows, norms)
        for s, n in zip(live, counts, strict=True):
            s.t += 1
            s.steps_run += 1
            s.evaluations += n
        self._last_step_s = time.monotonic() - now
        return True

    def _live_rows(self, s: _Segment) -> np.ndarray:
        """The rows of a running job still searching: those of its x not yet converged."""
        rows = np.arange(s.start, s.stop)
        return rows[~self.frozen[s.start : s.stop]] if s.frozen_any else rows

    def _searching(self, s: _Segment) -> int:
        """How many of a running job's rows still search."""
        if not s.frozen_any:
            return s.stop - s.start
        return int((~self.frozen[s.start : s.stop]).sum())

    def _rows_of(self, live: list[_Segment]) -> slice | np.ndarray:
        if len(live) == len(self.segments) and not any(s.frozen_any for s in live):
            return slice(None)
        return np.concatenate([self._live_rows(s) for s in live])

    def _stop_converged(self, live: list[_Segment], rows: slice | np.ndarray, norms: Array) -> None:
        """Each x of a job stops searching once every one of its starts is stationary
        (norms from before the step just taken: the step only moved it closer); the job
        stops when all its x have. A Langevin chain is never cut short: only its
        noise-free finish stops early. One pass over all rows: the searching rows are
        whole blocks of one x's starts, in order, so a reduceat finds each x's worst."""
        if isinstance(rows, slice):  # every row searching: the boundaries are known
            firsts, ids = self.block_starts, self.block_ids
        else:
            blocks = self.block[rows]
            firsts = np.flatnonzero(np.concatenate(([True], blocks[1:] != blocks[:-1])))
            ids = blocks[firsts]
        flat = np.maximum.reduceat(norms, firsts) < self.block_tol[ids]
        block_t = np.array([s.t for s in self.segments])[self.block_segment[ids]]
        flat &= block_t + 1 >= MIN_STEPS_BEFORE_TOL  # a flat start must move first
        if self.method == "langevin":
            flat &= block_t >= self.block_chain_steps[ids]
        if not flat.any():
            return
        for block in ids[flat]:
            first = self.block_first_row[block]
            self.frozen[first : first + self.block_rows[block]] = True
            self.segments[self.block_segment[block]].frozen_any = True
        for s in live:
            if s.frozen_any and self.frozen[s.start : s.stop].all():
                s.done = True

    @staticmethod
    def _per_job(values: list[float], counts: list[int]) -> np.float32 | Array:
        """One float32 per job, computed by the caller in float64 from that job alone (so
        its bits do not depend on company): a scalar when all agree, else ``[r, 1]``."""
        per_job = [np.float32(v) for v in values]
        if all(v == per_job[0] for v in per_job):
            return per_job[0]
        return per_row(per_job, counts)

    def _step_sizes(self, live: list[_Segment], counts: list[int]) -> np.float32 | Array:
        """Each job's step at its own step count (cosine decay to 1%)."""
        return self._per_job(
            [s.job.params.step_size * _cosine_decay(s.t, s.job.params.steps) for s in live],
            counts,
        )

    def _adam_step(
        self, rows: slice | np.ndarray, live: list[_Segment], counts: list[int], g: Array
    ) -> None:
        for s in live:
            if s.adam is None:
                s.adam = _adam_table(s.job.params.step_size, s.job.params.steps)
        table = np.stack([s.adam[s.t] for s in live])  # type: ignore[index]
        if len(live) == 1 or (table == table[0]).all():  # one schedule: scalars
            lr, bias1, bias2 = table[0]
            self._adam_move(rows, g, bias1, bias2, lr)
            return
        per_row = np.repeat(table, counts, axis=0)
        self._adam_move(rows, g, per_row[:, 1:2], per_row[:, 2:3], per_row[:, 0:1])

    def _adam_move(
        self,
        rows: slice | np.ndarray,
        g: Array,
        bias1: np.floating | Array,
        bias2: np.floating | Array,
        lr: np.floating | Array,
    ) -> None:
        """One Adam step of size ``lr`` with bias corrections 1 - beta^(t+1), projected."""
        b1, b2 = ADAM_BETAS
        if isinstance(rows, slice):  # every row live: update the moments in place
            m1, m2 = self.m1, self.m2
            m1 *= b1
            m1 += (1 - b1) * g
            m2 *= b2
            m2 += (1 - b2) * g * g
        else:
            m1 = b1 * self.m1[rows] + (1 - b1) * g
            m2 = b2 * self.m2[rows] + (1 - b2) * g * g
            self.m1[rows], self.m2[rows] = m1, m2
        m1_hat = m1 / bias1
        m2_hat = m2 / bias2
        move = lr * m1_hat / (np.sqrt(m2_hat) + 1e-12)
        self._move(rows, move.astype(np.float32, copy=False), sign=-1.0)

    def _move(self, rows: slice | np.ndarray, delta: Array, sign: float) -> None:
        if isinstance(rows, slice):
            if sign < 0:
                self.v -= delta
            else:
                self.v += delta
            self.space.project(self.v)
        else:
            v = self.v[rows] - delta if sign < 0 else self.v[rows] + delta
            self.v[rows] = self.space.project(v)
        self._clamp(rows)

    def _noise(self, live: list[_Segment], counts: list[int] | None = None) -> Array:
        """Standard normal draws ``[r, D]``, each job's from its own generator (one row per
        searching row of the job: ``counts``, default all its rows)."""
        counts = counts if counts is not None else [s.stop - s.start for s in live]
        draws = [
            s.rng.standard_normal((n, self.space.dim), dtype=np.float32)
            for s, n in zip(live, counts, strict=True)
        ]
        return np.concatenate(draws) if len(draws) > 1 else draws[0]

    def _langevin_step(
        self,
        rows: slice | np.ndarray,
        live: list[_Segment],
        counts: list[int],
        g: Array,
    ) -> None:
        """Implicit-BC style: a polynomially decaying step, a separate noise scale, a clip on
        each move and on the bounds. The chain's ``steps`` are followed by noise-free Adam
        refinement steps (started at the model's gd step size), which settle each sample at
        the bottom of its valley."""
        lr0, steps = self.step_size[rows], self.steps[rows]
        t = per_row([float(s.t) for s in live], counts)  # each job's own step count
        frac = np.minimum(t / np.maximum(steps - 1, 1.0), 1.0)
        final = lr0 * FINAL_STEP_SHARE
        lr = (lr0 - final) * (1 - frac) ** 2 + final
        xi = self._noise(live, counts)
        delta = -lr * g + self.noise[rows] * np.sqrt(2 * lr) * xi
        clip = LANGEVIN_MOVE_CLIP * self.space.width
        chain = (t < steps)[:, 0]
        if chain.all():
            self._move(rows, np.clip(delta, -clip, clip).astype(np.float32), sign=1.0)
            return
        index = np.arange(self.rows)[rows]
        self._move(index[chain], np.clip(delta[chain], -clip, clip), sign=1.0)
        refining = ~chain
        t_ref = t[refining] - steps[refining]
        refine_steps = np.maximum(np.ceil(steps[refining] * LANGEVIN_REFINE_SHARE), 1.0)
        decay = FINAL_STEP_SHARE + (1 - FINAL_STEP_SHARE) * 0.5 * (
            1 + np.cos(np.pi * np.minimum(t_ref / refine_steps, 1.0))
        )
        lr_ref = self.refine_step[rows][refining] * decay
        b1, b2 = ADAM_BETAS
        bias1 = (1 - b1 ** (t_ref.astype(np.float64) + 1)).astype(np.float32)
        bias2 = (1 - b2 ** (t_ref.astype(np.float64) + 1)).astype(np.float32)
        self._adam_move(index[refining], g[refining], bias1, bias2, lr_ref.astype(np.float32))

    def _dfo_step(self, live: list[_Segment], energy: Array) -> None:
        """Implicit-BC derivative-free step: resample each x's population in proportion to
        softmax(-E/T), then jitter with a noise that halves every iteration. The population
        is scored once more at the end (``_finish``), so the choice uses fresh energies."""
        at = 0
        targets, sources = [], []
        for s in live:
            n = s.stop - s.start
            if s.t < s.steps:
                starts, rows_x = s.job.params.num_starts, s.job.rows_x
                logits = -energy[at : at + n].reshape(rows_x, starts).astype(np.float64)
                logits /= s.job.params.temperature
                p = np.exp(logits - logits.max(axis=1, keepdims=True))
                cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
                u = s.rng.random((rows_x, starts))
                # Inverse-CDF sampling for all x at once: shift row i's CDF and draws by i.
                shift = np.arange(rows_x)[:, None]
                flat = np.searchsorted((cdf + shift).ravel(), (u + shift).ravel(), side="right")
                pick = np.minimum(flat.reshape(rows_x, starts), (shift + 1) * starts - 1)
                sources.append(s.start + pick)
                targets.append(np.arange(s.start, s.stop))
            at += n
        if not targets:
            return
        target, source = np.concatenate(targets), np.concatenate([p.ravel() for p in sources])
        self.v[target] = self.v[source]
        if self.labels is not None:
            self.labels[target] = self.labels[source]
        resampling = [s for s in live if s.t < s.steps]
        shrink = per_row(
            [DFO_SHRINK**s.t for s in resampling], [s.stop - s.start for s in resampling]
        )
        scale = self.noise[target] * shrink  # noise_scale is in y's units
        self._move(target, (scale * self._noise(resampling)).astype(np.float32), sign=1.0)

    # --- the end: re-score ------------------------------------------------------------
    def _finish(self, indices: list[int], gradient_free: bool) -> list[Candidates]:
        """Re-score the stopped jobs' candidates at their final positions (one call)."""
        segments = [self.segments[i] for i in indices]
        rows: slice | np.ndarray = slice(None)  # every row, the converged x's included
        if len(segments) < len(self.segments):
            rows = np.concatenate([np.arange(s.start, s.stop) for s in segments])
        energy, g = self._evaluate(rows, grad=not gradient_free)
        v = self.v[rows]
        norms = None if g is None else self.space.stationarity(v, g)
        labels = None if self.labels is None else self.labels[rows, 0]
        out, at = [], 0
        for s in segments:
            n, starts = s.job.rows_x, s.job.params.num_starts
            part = slice(at, at + s.stop - s.start)
            at += s.stop - s.start
            y_flat = v[part, : self.space.y_size]
            z: Array | None = None
            if self.space.z_size:
                z = v[part, self.space.y_size :].reshape(n, starts, -1).copy()
            elif labels is not None:
                z = labels[part].reshape(n, starts).copy()
            trajectory = None
            if s.job.params.return_trajectory:
                frames = [*s.trajectory, y_flat]
                trajectory = np.stack(frames).reshape(len(frames), n, starts, -1)
            out.append(
                Candidates(
                    y=y_flat.reshape(n, starts, -1).copy(),
                    z=z,
                    energy=energy[part].reshape(n, starts).copy(),
                    grad_norm=None if norms is None else norms[part].reshape(n, starts).copy(),
                    trajectory=trajectory,
                    steps_run=s.steps_run,
                    evaluations=s.evaluations + (s.stop - s.start),
                    partial=s.partial,
                    elapsed_s=time.monotonic() - s.started,
                )
            )
        return out
