"""Energy-minimising search for many jobs at once: propose -> refine -> re-score.

All candidates of all jobs in a batch are rows of one state (``steppers.rows``): every
step makes one backend call for every live row, whatever job it belongs to, so concurrent
requests share the per-call cost. The method is a :class:`Stepper` (the loop never asks
which); each row's settings are columns, so jobs with different settings share a batch.

Reproducibility: each job draws its starts and noise from its own generator seeded by its
seed, in the same order whether it runs alone or with others; rows never mix across jobs,
and every per-row computation is elementwise. With a backend whose rows do not depend on
the batch around them (checked at load), a seeded job therefore gives the same bits alone
or coalesced, and admitted at any step of a running search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from operator import attrgetter

import numpy as np

from app.inference.batch import per_row
from app.inference.control import Control, seconds_left
from app.inference.modes import merge_seconds
from app.inference.params import SearchParams, converged_distance
from app.inference.space import Space
from app.inference.spread import energy_spread
from app.inference.starts import clamp, clamping, decoded
from app.inference.steppers.rows import RowState
from app.inference.steppers.stepper import STEPPERS, Plan, StepView
from app.registry.backends.base import Array
from app.registry.loader import LoadedModel

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
    """A finished job's candidates, ``[N, S, ...]``, at their final (best accepted) points."""

    y: Array  # [N, S, Dy]
    z: Array | None  # [N, S, Dz] continuous or [N, S] labels
    energy: Array  # [N, S]
    grad_norm: Array | None  # [N, S]; None where no gradient was taken
    converged: np.ndarray | None  # [N, S] bool: stationary (see params.converged_distance)
    distance: Array | None  # [N, S] estimated distance to a stationary point (inf unknown)
    energy_scale: Array  # [N] spread (mean - min) of each x's starting energies; 0 unknown
    trajectory: Array | None  # [T, N, S, Dy] with return_trajectory
    steps_run: int
    evaluations: int
    partial: bool
    elapsed_s: float


@dataclass
class _Segment:
    job: SearchJob
    plan: Plan
    start: int
    stop: int
    rng: np.random.Generator
    done: bool = False
    dropped: bool = False  # cancelled or expired with nobody left to answer: no result
    finish_s: float = 0.0  # kept before the deadline for post-processing (the merge)
    frozen_any: bool = False  # some of its x have converged and stopped searching
    partial: bool = False
    evaluations: int = 0
    trajectory: list[Array] = field(default_factory=list)
    t: int = 0  # its own evaluation count: jobs admitted mid-run are at different steps
    started: float = field(default_factory=time.monotonic)
    steps: int = 0  # its whole budget, every phase (read every step: kept, not derived)
    paths: bool = False  # it keeps its trajectory
    stops_from: int | None = None  # the first t at which convergence may stop it (tol != 0)

    def __post_init__(self) -> None:
        self.steps = self.plan.steps
        self.paths = self.job.params.return_trajectory
        if self.job.params.tol != 0:
            self.stops_from = self.plan.settles_from + MIN_STEPS_BEFORE_TOL - 1


_cancelled = attrgetter("cancelled")


@dataclass
class _Calm:
    """What the per-job pass at a step boundary would find, while nothing changes: every
    job live and searching all its rows, none starting, stopping or keeping a path. Then a
    step needs no pass over the jobs (its per-job Python would cost about as much as the
    optimiser's arithmetic), only these numbers and a look at each job's cancel flag."""

    row_t: np.ndarray  # [R] each row's evaluation index at the next step
    controls: list[Control]
    quiet_until: float  # wall time by which some job must stop for its deadline
    steps_left: int  # steps before the first job reaches its budget
    stops_in: int  # steps before convergence may stop some job (<= 0: it may now)


def _repeat_rows(a: Array, times: int) -> Array:
    return np.repeat(a, times, axis=0)


class Search:
    """One batch of jobs of one method on one model."""

    def __init__(
        self,
        model: LoadedModel,
        jobs: list[SearchJob],
        space: Space | None = None,
        *,
        joining: bool = False,
    ) -> None:
        self.model = model
        self.space = space or Space.of(model.manifest)
        self.method = jobs[0].params.method
        self.stepper = STEPPERS[self.method]
        self.segments: list[_Segment] = []
        at = 0
        for job in jobs:
            rng = np.random.default_rng(job.params.seed)
            plan = self.stepper.plan(job.params)
            segment = _Segment(job, plan, at, at + job.rows, rng)
            # Time to keep for merging its candidates into modes after the search (at most
            # half its budget: the search itself gets at least the other half).
            merge_s = job.rows_x * merge_seconds(job.params.k, job.params.num_starts)
            segment.finish_s = min(merge_s, 0.5 * max(0.0, seconds_left(job.control.deadline)))
            self.segments.append(segment)
            at += job.rows
        self.rows = at
        self._calm: _Calm | None = None  # set while steps need no pass over the jobs
        self._calm_next = False  # the last step found nothing to change: try a calm one
        self._unsettled = 0  # calm steps not yet counted into each job's t and evaluations
        self.state = self._start_rows()
        if not joining:  # (a search it joins re-indexes all its jobs)
            self._index_blocks()
        self._results: dict[int, Candidates] = {}  # by segment, until delivered and compacted
        self._dropped = 0  # segments dropped since the last compaction
        self._last_step_s = 0.0

    # --- iteration-level admission ------------------------------------------------------
    def admit(self, jobs: list[SearchJob]) -> None:
        """Add jobs at a step boundary: their rows are set up exactly as if they had started
        a search of their own (same generator draws), then join every later backend call."""
        self._settle()
        newcomer = Search(self.model, jobs, self.space, joining=True)
        offset = self.rows
        self.state.extend(newcomer.state)
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
        if not self._results and not self._dropped:  # the usual step: nobody left
            return list(range(len(self.segments)))
        kept = [i for i in range(len(self.segments)) if not self._finished(i)]
        self._settle()
        keep = [self.segments[i] for i in kept]
        rows = (
            np.concatenate([np.arange(s.start, s.stop) for s in keep])
            if keep
            else np.zeros(0, np.intp)
        )
        self.state.keep(rows)
        at = 0
        for s in keep:
            size = s.stop - s.start
            s.start, s.stop = at, at + size
            at += size
        self.segments, self.rows, self._results, self._dropped = keep, at, {}, 0
        if keep:
            self._index_blocks()
        return kept

    @property
    def live(self) -> bool:
        """Some job still has steps to take or an answer to deliver."""
        return len(self._results) + self._dropped < len(self.segments)

    # --- set-up -------------------------------------------------------------------------
    def _column(self, value: Callable[[_Segment], float]) -> Array:
        return per_row([value(s) for s in self.segments], [s.stop - s.start for s in self.segments])

    def _start_rows(self) -> RowState:
        """The starts (the stepper's proposals: uniform in the bounds, or every label), each
        job's settings as columns, clamped components fixed."""
        space, manifest = self.space, self.model.manifest
        x = None
        if manifest.x is not None:
            x = np.concatenate(
                [_repeat_rows(s.job.x, s.job.params.num_starts) for s in self.segments]  # type: ignore[arg-type]
            )
        if self.method == "enumerate":
            labels = [
                np.tile(np.arange(s.job.params.num_starts, dtype=np.float32), s.job.rows_x)
                for s in self.segments
            ]
            v = np.concatenate(labels)[:, None]
        else:
            v = np.concatenate([space.sample(s.rng, s.stop - s.start) for s in self.segments])
        # A discrete latent is assigned, not searched: starts cycle through its labels.
        z_labels = None
        if space.z_labels:
            z_labels = np.concatenate(
                [np.arange(s.stop - s.start) % space.z_labels for s in self.segments]
            ).astype(np.float32)[:, None]
        if self.method != "enumerate":  # latent models with a decoder start on it
            decoded(space, self.model.backend, x, v)
        masks = clamping(
            space,
            [
                (s.job.y_mask, s.job.y_known, s.job.params.num_starts, s.stop - s.start)
                for s in self.segments
            ],
        )
        free, known = masks if masks is not None else (None, None)
        if free is not None and known is not None:
            clamp(space, v, free, known)
        columns = {
            "lead": self._column(lambda s: float(s.plan.lead)),
            "explore": self._column(lambda s: float(s.plan.explore)),
            "refine": self._column(lambda s: float(s.plan.refine)),
            "lr0": self._column(lambda s: s.plan.lr0),
            "h": self._column(lambda s: s.plan.h),
            "temperature": self._column(lambda s: s.plan.temperature),
            "sigma0": self._column(lambda s: s.plan.sigma0),
        }
        return RowState.empty_optimiser(v, columns, x=x, labels=z_labels, free=free, known=known)

    def _index_blocks(self) -> None:
        """Blocks: one x's starts within one job (contiguous rows, in row order from row 0),
        each stopping on its own: for every row its block, and for every block its job,
        first row, size and convergence threshold. Vectorised over jobs: it runs at every
        admission and compaction."""
        per_x = [s.job.rows_x for s in self.segments]
        starts = [s.job.params.num_starts for s in self.segments]
        distance = converged_distance(self.model.manifest)
        # tol unset: stationary by distance; tol > 0: by gradient norm; 0: never early
        limits = [
            distance if s.job.params.tol is None else (s.job.params.tol or -np.inf)
            for s in self.segments
        ]
        by_grad = [s.job.params.tol is not None for s in self.segments]
        self._calm, self._calm_next = None, False  # the jobs changed
        self.block_rows = np.repeat(starts, per_x)
        self.block_ids = np.arange(len(self.block_rows))
        self.block = np.repeat(self.block_ids, self.block_rows)
        self.block_segment = np.repeat(np.arange(len(self.segments)), per_x)
        self.block_first_row = np.concatenate(([0], np.cumsum(self.block_rows)[:-1]))
        self.block_limit = np.repeat(np.asarray(limits, np.float64), per_x)
        self.block_by_grad = np.repeat(by_grad, per_x)
        settles = [s.plan.settles_from for s in self.segments]
        self.block_settles_from = np.repeat(np.asarray(settles, np.int64), per_x)

    # --- evaluation -------------------------------------------------------------------
    def inputs(self, rows: slice | np.ndarray) -> dict[str, Array]:
        """The backend's inputs for the trial points of ``rows``."""
        st = self.state
        x = None if st.x is None else st.x[rows]
        labels = None if st.labels is None else st.labels[rows]
        return self.space.energy_inputs(st.v[rows], x, labels)

    def _evaluate(self, rows: slice | np.ndarray, grad: bool) -> tuple[Array, Array | None]:
        st = self.state
        out = self.model.backend.energy(self.inputs(rows), grad)
        if not grad:
            return out.energy, None
        g = self.space.join_grads(out.grads, len(out.energy))
        if st.free is not None:
            g = g * st.free[rows]
        return out.energy, g

    def _view(
        self,
        live: list[_Segment],
        counts: list[int],
        ts: list[int],
        rows: slice | np.ndarray,
        grad: bool,
    ) -> StepView:
        """Score the live rows and draw each job's randomness for this step."""
        view = self._scored(rows, np.repeat(np.array(ts), counts), grad)
        uniform = normal = None
        wants = [self.stepper.draws(s.t, s.plan) for s in live] if self.stepper.explores else []
        if any(u or z for u, z in wants):  # in order per job: its uniforms, then its normals
            uniforms, normals = [], []
            dim = self.space.dim
            for s, n, (u, z) in zip(live, counts, wants, strict=True):
                uniforms.append(s.rng.random(n, dtype=np.float32) if u else np.ones(n, np.float32))
                normals.append(
                    s.rng.standard_normal((n, dim), dtype=np.float32)
                    if z
                    else np.zeros((n, dim), np.float32)
                )
            uniform, normal = np.concatenate(uniforms), np.concatenate(normals)
            view = replace(view, uniform=uniform, normal=normal)
        return view

    def _scored(self, rows: slice | np.ndarray, t: np.ndarray, grad: bool) -> StepView:
        """The rows' fresh scores as a view (no exploration draws)."""
        energy, g = self._evaluate(rows, grad)
        block = self.block if isinstance(rows, slice) else self.block[rows]
        return StepView(ix=rows, t=t, block=block, energy=energy, grad=g, uniform=None, normal=None)

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
        """One step boundary, then one step, in one backend call. At the boundary every job
        that must stop does: at its step budget, converged, near its deadline (partial), or
        with its caller gone (cancelled or expired: it leaves with no result). A stopping
        job's last trials are scored in this step's call with everyone else's; it is then
        answered, ``deliver(segment index, candidates)``, while the others take their step.
        Returns whether any job is still live."""
        now = time.monotonic()
        wall = time.time()  # deadlines are wall-clock (see Control)
        margin = max(margin_s, 3 * self._last_step_s)
        if self._calm is None and self._calm_next:
            self._calm = self._calm_state()
        calm = self._calm
        if (
            calm is not None
            and calm.steps_left > 0
            and wall + margin < calm.quiet_until
            and not any(map(_cancelled, calm.controls))
        ):
            self._calm_step(calm)
        else:
            self._settle()
            self._calm = None
            if not self._full_step(deliver, wall, margin):
                return False
        self._last_step_s = time.monotonic() - now
        return True

    def _calm_step(self, calm: _Calm) -> None:
        """A step with nothing to change at its boundary: every row, no pass over the jobs."""
        measure = calm.stops_in <= 0
        view = self._scored(slice(None), calm.row_t, True)
        self.stepper.accept(self.state, view, self.space, measure=measure)
        if measure and self._stop_converged(self.segments, view):
            self._calm = None  # an x stopped searching: the next boundary has work
        self.stepper.propose(self.state, view, self.space)
        calm.row_t = calm.row_t + 1  # a new array: the view keeps this step's
        calm.steps_left -= 1
        calm.stops_in -= 1
        self._unsettled += 1

    def _calm_state(self) -> _Calm | None:
        """The calm of the coming steps, or None when a step needs the per-job pass."""
        if self.stepper.explores or not self.segments:  # per-job draws and phases
            return None
        for i, s in enumerate(self.segments):
            if s.done or s.dropped or s.frozen_any or s.paths or s.t == 0 or i in self._results:
                return None
        sizes = [s.stop - s.start for s in self.segments]
        stops = [s.stops_from - s.t for s in self.segments if s.stops_from is not None]
        return _Calm(
            row_t=np.repeat(np.array([s.t for s in self.segments]), sizes),
            controls=[s.job.control for s in self.segments],
            quiet_until=min(s.job.control.deadline - s.finish_s for s in self.segments),
            steps_left=min(s.steps - s.t for s in self.segments),
            stops_in=min(stops, default=1 << 62),
        )

    def _settle(self) -> None:
        """Count the calm steps into each job's own step and evaluation counts."""
        if self._unsettled:
            for s in self.segments:
                s.t += self._unsettled
                s.evaluations += self._unsettled * (s.stop - s.start)
            self._unsettled = 0

    def _full_step(
        self, deliver: Callable[[int, Candidates], None], wall: float, margin: float
    ) -> bool:
        """A step with the per-job pass at its boundary: which jobs stop now, and what this
        step needs of each."""
        stopping: list[int] = []
        live: list[_Segment] = []
        counts: list[int] = []
        ts: list[int] = []
        grad = self.stepper.explores_with_gradient
        can_stop = paths = frozen = starting = False
        for i, s in enumerate(self.segments):
            if s.dropped or i in self._results:
                continue
            if not s.done:
                control = s.job.control
                if control.cancelled or wall >= control.deadline:  # nobody waits: no answer
                    s.done = s.dropped = True
                    self._dropped += 1
                    continue
                if s.t >= s.steps:
                    s.done = True
                elif wall + margin + s.finish_s >= control.deadline:  # answer while we can
                    s.done, s.partial = True, True
            if s.done:  # (or converged during the last step): its last trials, all its rows
                stopping.append(i)
                counts.append(s.stop - s.start)
            else:
                counts.append(s.stop - s.start if not s.frozen_any else self._searching(s))
                can_stop = can_stop or (s.stops_from is not None and s.t >= s.stops_from)
            live.append(s)
            ts.append(s.t)
            grad = grad or self.stepper.needs_gradient(s.t, s.plan)
            paths = paths or s.paths
            frozen = frozen or s.frozen_any
            starting = starting or s.t == 0
        if not live:
            return False
        rows: slice | np.ndarray = slice(None)  # every row: the usual step
        if frozen or len(live) < len(self.segments):
            rows = np.concatenate([self._step_rows(s) for s in live])
        view = self._view(live, counts, ts, rows, grad)
        if starting:
            first = view.where(view.t == 0)
            assert first is not None
            self.state.e0[first.ix] = first.energy
            self.stepper.begin(self.state, first)
        self.stepper.accept(self.state, view, self.space, measure=can_stop or bool(stopping))
        if paths:  # a path is its anchors: the start, then the point kept after each step
            for s in live:
                if s.paths:
                    anchors = self.state.a[s.start : s.stop, : self.space.y_size]
                    s.trajectory.append(anchors.copy())
        for i in stopping:
            candidates = self._candidates(self.segments[i])
            self._results[i] = candidates
            deliver(i, candidates)
        if can_stop:  # one reduction over the rows
            self._stop_converged(live, view)
        self.stepper.propose(self.state, view, self.space)
        for s, n in zip(live, counts, strict=True):
            s.t += 1
            s.evaluations += n
        # Nothing stopped, froze or started, and no job is missing from the rows: the next
        # boundary has nothing to change unless time, a budget or a cancel says otherwise.
        subset = not isinstance(rows, slice)
        self._calm_next = not (stopping or frozen or paths or starting or subset)
        return True

    def _step_rows(self, s: _Segment) -> np.ndarray:
        """The rows a job sends to this step's call: all of them when it stops (its last
        trials), else those still searching."""
        return np.arange(s.start, s.stop) if s.done else self._live_rows(s)

    def _live_rows(self, s: _Segment) -> np.ndarray:
        """The rows of a running job still searching: those of its x not yet converged."""
        rows = np.arange(s.start, s.stop)
        return rows[~self.state.frozen[s.start : s.stop]] if s.frozen_any else rows

    def _searching(self, s: _Segment) -> int:
        """How many of a running job's rows still search."""
        if not s.frozen_any:
            return s.stop - s.start
        return int((~self.state.frozen[s.start : s.stop]).sum())

    def _metric(self, rows: slice | np.ndarray) -> Array:
        """Per row, what its x's threshold is compared with: the anchor's estimated distance
        to a stationary point, or its gradient norm where the job set an absolute tol."""
        st = self.state
        dist = st.dist[rows]
        if not self.block_by_grad.any():
            return dist
        norms = self.space.stationarity(st.a[rows], st.g_a[rows])
        return np.where(self.block_by_grad[self.block[rows]], norms, dist)

    def _stop_converged(self, live: list[_Segment], view: StepView) -> bool:
        """Each x of a job stops searching once every one of its starts is stationary; the
        job stops when all its x have. One pass over all rows: the searching rows are whole
        blocks of one x's starts, in order, so a reduceat finds each x's worst. Returns
        whether any x stopped."""
        rows = view.ix
        metric = self._metric(rows)
        if isinstance(rows, slice):  # every row searching: the boundaries are known
            firsts, ids = self.block_first_row, self.block_ids
        else:
            blocks = self.block[rows]
            firsts = np.flatnonzero(np.concatenate(([True], blocks[1:] != blocks[:-1])))
            ids = blocks[firsts]
        flat = np.maximum.reduceat(metric, firsts) <= self.block_limit[ids]
        # a flat start must move first
        flat &= view.t[firsts] + 1 >= self.block_settles_from[ids] + MIN_STEPS_BEFORE_TOL
        if not flat.any():
            return False
        for block in ids[flat]:
            first = self.block_first_row[block]
            self.state.frozen[first : first + self.block_rows[block]] = True
            self.segments[self.block_segment[block]].frozen_any = True
        for s in live:
            if s.frozen_any and self.state.frozen[s.start : s.stop].all():
                s.done = True
        return True

    # --- the end: the answer ---------------------------------------------------------
    def _candidates(self, s: _Segment) -> Candidates:
        """A stopped job's answer, its rows' anchors: each candidate is its row's best
        accepted point, with its energy, gradient and estimated distance to stationarity
        (its last trials were just scored and accepted or not)."""
        st, rows = self.state, slice(s.start, s.stop)
        n, starts = s.job.rows_x, s.job.params.num_starts
        a = st.a[rows]
        y_flat = a[:, : self.space.y_size]
        z: Array | None = None
        if self.space.z_size:
            z = a[:, self.space.y_size :].reshape(n, starts, -1).copy()
        elif st.labels is not None:
            z = st.labels[rows, 0].reshape(n, starts).copy()
        trajectory = None
        if s.paths:
            trajectory = np.stack(s.trajectory).reshape(len(s.trajectory), n, starts, -1)
        gradient = bool(st.has_g[rows].all())
        norms = self.space.stationarity(a, st.g_a[rows])
        tol = s.job.params.tol
        limit = converged_distance(self.model.manifest) if tol is None else max(tol, 1e-12)
        metric = norms if tol is not None else st.dist[rows]
        return Candidates(
            y=y_flat.reshape(n, starts, -1).copy(),
            z=z,
            energy=st.e_a[rows].reshape(n, starts).copy(),
            grad_norm=norms.reshape(n, starts) if gradient else None,
            converged=(metric <= limit).reshape(n, starts) if gradient else None,
            distance=st.dist[rows].reshape(n, starts).copy() if gradient else None,
            energy_scale=_spread(st.e0[rows].reshape(n, starts)),
            trajectory=trajectory,
            steps_run=s.t,
            evaluations=s.evaluations + (s.stop - s.start),
            partial=s.partial,
            elapsed_s=time.monotonic() - s.started,
        )


def _spread(e0: Array) -> Array:
    """Per x ``[N]`` of ``e0 [N, S]``: the spread of its starting energies (0 unknown)."""
    firsts = np.arange(0, e0.size, e0.shape[1])
    return energy_spread(e0.ravel(), firsts).astype(np.float32)
