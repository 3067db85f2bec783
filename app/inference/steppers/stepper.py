"""The Stepper contract: what the search loop knows of an optimiser.

Every method is the same loop over rows: score the trial points, ``accept`` some into the
anchors, ``propose`` the next trials. A method is an optional *lead* descent, an optional
*exploration* (langevin chains, dfo rounds), then a *descent* (Adam with backtracking) that
settles each anchor in its basin; ``gd`` is descent only, ``enumerate`` scores its labels
once. A job's evaluation index ``t`` picks the phase of each row, so jobs admitted mid-run
(at other steps) share one backend call whatever phase they are in.

Evaluation ``t = 0`` scores the starts, ``1 .. lead`` the lead descent's trials, ``lead + 1
.. lead + explore`` the exploration's, then the final descent's; the last trial is scored
when the job stops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from app.inference.params import SearchParams
from app.inference.schedule import cosine_decay
from app.inference.space import Space
from app.inference.spread import energy_spread
from app.inference.steppers import chain, descent, jitter
from app.inference.steppers.rows import RowState
from app.registry.backends.base import Array

LANGEVIN_REFINE_SHARE = 0.5  # descent steps after the chains, as a share of their steps
#: Descent steps before the chains, as a share of their steps: chains start in the basin
#: their start descends into (a narrow one included) instead of diffusing past it.
LANGEVIN_LEAD_SHARE = 0.2
DFO_REFINE_STEPS = 40  # descent steps after the dfo rounds
CHAIN_TEMPERATURE_SHARE = 0.03  # langevin's T when unset: this share of the starts' spread


@dataclass(frozen=True)
class Plan:
    """One job's settings as the steppers read them (one value per row of the job)."""

    explore: int
    refine: int
    lr0: float  # the descent's first step
    lead: int = 0  # descent steps before the exploration
    h: float = 0.0  # langevin: first chain step
    temperature: float = 1.0  # langevin: T
    sigma0: float = 0.0  # dfo: first jitter

    @property
    def steps(self) -> int:
        return self.lead + self.explore + self.refine

    @property
    def settles_from(self) -> int:
        """The evaluation after which the final descent runs (convergence may stop it)."""
        return self.lead + self.explore


@dataclass(frozen=True)
class StepView:
    """The rows being stepped: indices into the row state and their fresh scores."""

    ix: slice | np.ndarray
    t: np.ndarray  # [n] each row's evaluation index (its job's)
    block: np.ndarray  # [n] each row's x (rows of one x are contiguous)
    energy: Array  # [n]
    grad: Array | None  # [n, D]
    uniform: Array | None  # [n] exploration draws (ones for rows that draw none)
    normal: Array | None  # [n, D]

    def where(self, mask: np.ndarray) -> StepView | None:
        """The sub-view of the rows in ``mask``: itself when all are, None when none are."""
        if mask.all():
            return self
        if not mask.any():
            return None
        # a slice view is every row of the state (slice(None))
        index = np.arange(len(self.t)) if isinstance(self.ix, slice) else self.ix
        return replace(
            self,
            ix=index[mask],
            t=self.t[mask],
            block=self.block[mask],
            energy=self.energy[mask],
            grad=None if self.grad is None else self.grad[mask],
            uniform=None if self.uniform is None else self.uniform[mask],
            normal=None if self.normal is None else self.normal[mask],
        )

    @property
    def firsts(self) -> np.ndarray:
        """Index of the first row of each x within the view."""
        change = np.concatenate(([True], self.block[1:] != self.block[:-1]))
        return np.flatnonzero(change)


class Stepper:
    """Descent only (``gd``); subclasses add an exploration phase."""

    name = "gd"
    explores = False  # has an exploration phase (draws randomness, mixes phases)
    explores_with_gradient = True

    def plan(self, params: SearchParams) -> Plan:
        return Plan(explore=0, refine=params.steps, lr0=params.step_size)

    def needs_gradient(self, t: int, plan: Plan) -> bool:
        exploring = plan.lead < t <= plan.settles_from or (t == plan.lead == 0 < plan.explore)
        return self.explores_with_gradient or not exploring

    def draws(self, t: int, plan: Plan) -> tuple[bool, bool]:
        """(uniform, normal): what a job at evaluation ``t`` draws from its generator, in
        that order: a uniform per row to accept an exploration trial, a normal per row and
        component to propose the next."""
        return plan.lead < t <= plan.settles_from, plan.lead < t + 1 <= plan.settles_from

    # --- the loop's calls ----------------------------------------------------------
    def begin(self, st: RowState, view: StepView) -> None:
        """The starts have been scored (``view``: rows at evaluation 0)."""

    def accept(self, st: RowState, view: StepView, space: Space, measure: bool) -> None:
        """``measure``: estimate each accepted anchor's distance to a stationary point (only
        needed where convergence can stop a job, and at the end)."""
        if not self.explores:  # descent only: every row in the same phase
            descent.accept(st, view.ix, view.energy, view.grad, space, measure)
            return
        lead = st.lead[view.ix, 0]
        exploring = (view.t > lead) & (view.t <= lead + st.explore[view.ix, 0])
        explore = view.where(exploring)
        if explore is not None:
            self._accept_exploration(st, explore, space)
        settle = view.where(~exploring)
        if settle is not None:
            descent.accept(st, settle.ix, settle.energy, settle.grad, space, measure)

    def propose(self, st: RowState, view: StepView, space: Space) -> None:
        if not self.explores:
            self._final_descent(st, view, space)
            return
        lead = st.lead[view.ix, 0]
        settles_from = lead + st.explore[view.ix, 0]
        trial = view.t + 1
        explore = view.where((trial > lead) & (trial <= settles_from))
        if explore is not None:
            self._propose_exploration(st, explore, space)
        leading = view.where(trial <= lead)
        if leading is not None:
            i, steps = leading.t, st.lead[leading.ix, 0]
            lr = st.lr0[leading.ix] * cosine_decay(i, steps)[:, None]
            descent.propose(st, leading.ix, lr, space)
        settle = view.where(trial > settles_from)
        if settle is not None:
            self._final_descent(st, settle, space)

    def _final_descent(self, st: RowState, view: StepView, space: Space) -> None:
        i = view.t  # its own step count (all of gd's steps are descent)
        if self.explores:
            i = i - (st.lead[view.ix, 0] + st.explore[view.ix, 0])
        lr = st.lr0[view.ix] * cosine_decay(i, st.refine[view.ix, 0])[:, None]
        if np.count_nonzero(i) < i.size:  # the final descent starts afresh (some i == 0)
            first = view.where(i == 0)
            assert first is not None
            st.restart_descent(first.ix)
        descent.propose(st, view.ix, lr, space)

    def _accept_exploration(self, st: RowState, view: StepView, space: Space) -> None:
        raise NotImplementedError  # gd never explores

    def _propose_exploration(self, st: RowState, view: StepView, space: Space) -> None:
        raise NotImplementedError


class Chains(Stepper):
    """``langevin``: Metropolis-adjusted chains, then descent. T = noise_scale^2 when set;
    unset, T is a share of the spread of the x's starting energies, so the chains explore
    alike whatever the energy's units and a basin they reached stays metastable."""

    name = "langevin"
    explores = True

    def begin(self, st: RowState, view: StepView) -> None:
        unset = np.isnan(st.temperature[view.ix, 0])
        if unset.any():
            spread = energy_spread(view.energy, view.firsts)
            counts = np.diff(np.append(view.firsts, len(view.t)))
            derived = np.repeat(np.maximum(spread * CHAIN_TEMPERATURE_SHARE, 1e-12), counts)
            t = st.temperature[view.ix, 0]
            st.temperature[view.ix, 0] = np.where(unset, derived, t).astype(np.float32)

    def plan(self, params: SearchParams) -> Plan:
        steps = params.steps
        return Plan(
            lead=math.ceil(steps * LANGEVIN_LEAD_SHARE),
            explore=steps,
            refine=max(1, math.ceil(steps * LANGEVIN_REFINE_SHARE)) if steps else 0,
            lr0=params.refine_step_size,
            h=params.step_size,
            temperature=np.nan if params.noise_scale is None else max(params.noise_scale**2, 1e-12),
        )

    def _accept_exploration(self, st: RowState, view: StepView, space: Space) -> None:
        assert view.grad is not None
        assert view.uniform is not None
        chain.accept(st, view.ix, view.energy, view.grad, view.uniform, adapt=True)

    def _propose_exploration(self, st: RowState, view: StepView, space: Space) -> None:
        assert view.normal is not None
        chain.propose(st, view.ix, view.normal, space)


class Rounds(Stepper):
    """``dfo``: derivative-free rounds of jitter, then descent from their survivors."""

    name = "dfo"
    explores = True
    explores_with_gradient = False

    def plan(self, params: SearchParams) -> Plan:
        rounds = params.steps
        return Plan(
            explore=rounds,
            refine=DFO_REFINE_STEPS if rounds else 0,
            lr0=params.refine_step_size,
            sigma0=params.noise_scale or 0.0,
        )

    def _accept_exploration(self, st: RowState, view: StepView, space: Space) -> None:
        assert view.uniform is not None
        jitter.accept(st, view.ix, view.energy, view.uniform, view.firsts)

    def _propose_exploration(self, st: RowState, view: StepView, space: Space) -> None:
        assert view.normal is not None
        sigma = st.sigma0[view.ix] * np.power(np.float32(jitter.SHRINK), view.t[:, None])
        jitter.propose(st, view.ix, sigma.astype(np.float32), view.normal, space)


class Labels(Stepper):
    """``enumerate``: every label of a discrete y is a candidate, scored once."""

    name = "enumerate"
    explores_with_gradient = False

    def plan(self, params: SearchParams) -> Plan:
        return Plan(explore=0, refine=0, lr0=0.0)

    def needs_gradient(self, t: int, plan: Plan) -> bool:
        return False


STEPPERS: dict[str, Stepper] = {s.name: s for s in (Stepper(), Chains(), Rounds(), Labels())}


def planned_steps(params: SearchParams) -> int:
    """Every step a job of ``params`` takes, all its phases together (its cost per start)."""
    return STEPPERS[params.method].plan(params).steps
