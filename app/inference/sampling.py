"""Sampling: diverse answers rather than the best ones.

- A latent model with a decoder samples z from its prior and decodes, y = Dec(x, z): one
  decoder call and one energy call for all samples of all jobs.
- Any other model runs the Langevin chains of /predict (``steppers.chain``: proposals
  y' = y - h dE/dy + sqrt(2 h T) xi, projected onto the bounds, with a Metropolis-Hastings
  correction for exp(-E/T)); a discrete latent is drawn from its prior once per chain. Each
  chain's step adapts during the ``steps`` steps of burn-in and is fixed after; then every
  chain keeps its state every ``thin`` steps until each x has ``n`` samples.

Fill in the blanks (``y_known``/``y_mask``) always takes the chain path: observed components
stay clamped, the chains move the rest (starting, for decoder models, from decoded prior
samples).

Like the search, all jobs of a batch share every backend call and each job draws from its
own generator, so a seeded job replays bit for bit when rows are batch-independent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.inference.batch import deterministic_groups, per_row
from app.inference.control import Control
from app.inference.space import Space
from app.inference.starts import clamp, clamping, decoded
from app.inference.steppers import chain
from app.inference.steppers.rows import RowState
from app.registry.backends.base import Array
from app.registry.loader import LoadedModel


@dataclass(frozen=True)
class SampleParams:
    n: int  # samples per x
    chains: int  # Langevin chains per x
    steps: int  # burn-in steps
    thin: int  # steps between kept states of a chain
    step_size: float
    temperature: float
    seed: int
    seeded: bool
    return_trajectory: bool = False

    @property
    def kept_per_chain(self) -> int:
        return math.ceil(self.n / self.chains)

    @property
    def chain_steps(self) -> int:
        """Steps a chain runs: burn-in, then one kept state every ``thin`` steps."""
        return self.steps + (self.kept_per_chain - 1) * self.thin + 1


@dataclass
class SampleJob:
    x: Array | None  # [N, *x] or None
    rows_x: int
    params: SampleParams
    y_known: Array | None = None  # [N, Dy]
    y_mask: np.ndarray | None = None  # [N, Dy]
    decodes: bool = False  # the model has a decoder for its continuous z
    control: Control = field(default_factory=Control)  # past its deadline: 504, no partial

    @property
    def uses_chains(self) -> bool:
        return self.y_mask is not None or not self.decodes

    @property
    def rows(self) -> int:
        per_x = self.params.n if not self.uses_chains else self.params.chains
        return self.rows_x * per_x


@dataclass(frozen=True)
class SampleOutcome:
    samples: list[list[dict[str, Any]]]  # per x
    stats: dict[str, Any]


def draw_prior(space: Space, rng: np.random.Generator, rows: int, temperature: float) -> Array:
    """Continuous z ``[rows, Dz]`` from its prior: N(0, T) (clipped to any bounds) or uniform."""
    z_low, z_high = space.low[space.y_size :], space.high[space.y_size :]
    normal = space.normal_prior[space.y_size :]
    u = rng.random((rows, space.z_size), dtype=np.float32)
    g = rng.standard_normal((rows, space.z_size), dtype=np.float32) * np.float32(
        math.sqrt(temperature)
    )
    uniform = np.where(np.isfinite(z_low), z_low, -1) + u * np.where(
        np.isfinite(z_high - z_low), z_high - z_low, 2
    )
    z = np.where(normal, g, uniform).astype(np.float32)
    return np.clip(z, z_low, z_high)


class Sampler:
    """One batch of sample jobs on one model; ``decodes`` picks the prior-and-decode path."""

    def __init__(self, model: LoadedModel, jobs: list[SampleJob]) -> None:
        self.model = model
        self.space = Space.of(model.manifest)
        self.jobs = jobs
        self.rngs = [np.random.default_rng(job.params.seed) for job in jobs]
        self.started = time.monotonic()

    def _x_rows(self, per_x: Sequence[int]) -> Array | None:
        if self.model.manifest.x is None:
            return None
        return np.concatenate(
            [np.repeat(job.x, k, axis=0) for job, k in zip(self.jobs, per_x, strict=True)]  # type: ignore[arg-type]
        )

    def _labels(self, rows: Sequence[int]) -> Array | None:
        if not self.space.z_labels:
            return None
        draws = [
            rng.integers(0, self.space.z_labels, n) for rng, n in zip(self.rngs, rows, strict=True)
        ]
        return np.concatenate(draws).astype(np.float32)[:, None]

    # --- prior and decode -------------------------------------------------------------
    def decode_samples(self) -> list[SampleOutcome]:
        per_x = [job.params.n for job in self.jobs]
        rows = [job.rows_x * n for job, n in zip(self.jobs, per_x, strict=True)]
        x = self._x_rows(per_x)
        z = np.concatenate(
            [
                draw_prior(self.space, rng, r, job.params.temperature)
                for job, rng, r in zip(self.jobs, self.rngs, rows, strict=True)
            ]
        )
        v = np.concatenate([self.space.decode(self.model.backend, x, z), z], axis=1)
        inputs = self.space.energy_inputs(v, x, None)
        energy = self.model.backend.energy(inputs, grad=False).energy
        return self._outcomes(v, energy, None, rows, per_x, [None] * len(self.jobs), 0)

    # --- Langevin chains --------------------------------------------------------------
    def chain_samples(self) -> list[SampleOutcome | None]:
        """Run every job's chains; a job leaves the batch (its rows leave every later
        backend call) once it has all its states, or at once when its caller is gone
        (cancelled, or past its deadline: no partial samples, the caller gets 504)."""
        space, jobs = self.space, self.jobs
        per_x = [job.params.chains for job in jobs]
        rows = [job.rows_x * c for job, c in zip(jobs, per_x, strict=True)]
        x = self._x_rows(per_x)
        labels = self._labels(rows)
        v = np.concatenate([space.sample(rng, r) for rng, r in zip(self.rngs, rows, strict=True)])
        decoded(space, self.model.backend, x, v)
        masks = clamping(
            space,
            [(job.y_mask, job.y_known, c, r) for job, c, r in zip(jobs, per_x, rows, strict=True)],
        )
        free, known = masks if masks is not None else (None, None)
        if free is not None and known is not None:
            clamp(space, v, free, known)
        zero = per_row([0.0] * len(jobs), rows)
        columns = {
            "lead": zero,
            "explore": zero,
            "refine": zero,
            "lr0": zero,
            "h": per_row([j.params.step_size for j in jobs], rows),
            "temperature": per_row([j.params.temperature for j in jobs], rows),
            "sigma0": zero,
        }
        st = RowState.empty_optimiser(v, columns, x=x, labels=labels, free=free, known=known)
        job_labels = None if labels is None else np.split(labels[:, 0], np.cumsum(rows)[:-1])
        kept: list[list[tuple[Array, Array]]] = [[] for _ in jobs]  # (v, energy) per state
        paths: list[list[Array]] = [[] for _ in jobs]
        live = list(range(len(jobs)))  # jobs whose rows are in the state, in order
        uniform = np.ones(len(v), np.float32)  # drawn with each proposal, for its acceptance
        t = 0
        while True:
            staying = [
                j for j in live if not jobs[j].control.gone() and t < jobs[j].params.chain_steps
            ]
            if len(staying) < len(live):  # rows of the leaving jobs drop out of the batch
                keep = np.concatenate(
                    [np.full(rows[j], j in staying) for j in live]  # live order = row order
                )
                st.keep(np.flatnonzero(keep))
                uniform = uniform[keep]
                live = staying
            if not live:
                break
            out = self.model.backend.energy(space.energy_inputs(st.v, st.x, st.labels), grad=True)
            g = space.join_grads(out.grads, len(st.v))
            if st.free is not None:
                g = g * st.free
            if t == 0:  # the starts
                st.a, st.e_a, st.g_a = st.v.copy(), out.energy.copy(), g
            else:
                burn_in = np.repeat(
                    [t <= jobs[j].params.steps for j in live], [rows[j] for j in live]
                )
                chain.accept(st, slice(None), out.energy, g, uniform, adapt=burn_in)
            at = 0
            for j in live:
                p, part = jobs[j].params, slice(at, at + rows[j])
                at += rows[j]
                if p.return_trajectory:
                    paths[j].append(st.a[part, : space.y_size].copy())
                if t >= p.steps and (t - p.steps) % p.thin == 0:
                    kept[j].append((st.a[part].copy(), st.e_a[part].copy()))
            xi, u = [], []
            for j in live:  # each job's draws from its own generator: normals, then uniforms
                xi.append(self.rngs[j].standard_normal((rows[j], space.dim), dtype=np.float32))
                u.append(self.rngs[j].random(rows[j], dtype=np.float32))
            uniform = np.concatenate(u)
            chain.propose(st, slice(None), np.concatenate(xi), space)
            t += 1
        return [
            None
            if len(kept[j]) < job.params.kept_per_chain
            else self._chain_outcome(
                job, kept[j], None if job_labels is None else job_labels[j], paths[j]
            )
            for j, job in enumerate(jobs)
        ]

    def _chain_outcome(
        self,
        job: SampleJob,
        states: list[tuple[Array, Array]],
        labels: Array | None,
        trajectory: list[Array],
    ) -> SampleOutcome:
        p, chains = job.params, job.params.chains
        # [kept, N * chains, D] -> per x: chain-major, then in time order
        v_all = np.stack([s[0] for s in states], axis=1).reshape(
            job.rows_x, chains * len(states), -1
        )
        e_all = np.stack([s[1] for s in states], axis=1).reshape(job.rows_x, chains * len(states))
        l_all = None
        if labels is not None:
            l_all = np.repeat(labels, len(states)).reshape(job.rows_x, -1)[:, : p.n]
        path = None
        if p.return_trajectory and trajectory:
            path = np.stack(trajectory, axis=1).reshape(job.rows_x, chains, len(trajectory), -1)
        return self._package(job, v_all[:, : p.n], e_all[:, : p.n], l_all, path, p.chain_steps)

    def _outcomes(
        self,
        v: Array,
        energy: Array,
        labels: Array | None,
        rows: list[int],
        per_x: list[int],
        paths: list[Array | None],
        steps: int,
    ) -> list[SampleOutcome]:
        outcomes, at = [], 0
        for job, r, k, path in zip(self.jobs, rows, per_x, paths, strict=True):
            part = slice(at, at + r)
            outcomes.append(
                self._package(
                    job,
                    v[part].reshape(job.rows_x, k, -1),
                    energy[part].reshape(job.rows_x, k),
                    None if labels is None else labels[part, 0].reshape(job.rows_x, k),
                    path,
                    steps,
                )
            )
            at += r
        return outcomes

    def _package(
        self,
        job: SampleJob,
        v: Array,
        energy: Array,
        labels: Array | None,
        path: Array | None,
        steps: int,
    ) -> SampleOutcome:
        manifest, space = self.model.manifest, self.space
        per_x = []
        for i in range(job.rows_x):
            row = []
            for j in range(v.shape[1]):
                sample: dict[str, Any] = {
                    "y": v[i, j, : space.y_size].reshape(manifest.y.shape).tolist(),
                    "energy": float(energy[i, j]),
                }
                if space.z_size:
                    assert manifest.z is not None
                    sample["z"] = v[i, j, space.y_size :].reshape(manifest.z.shape).tolist()
                elif labels is not None:
                    sample["z"] = int(labels[i, j])
                if path is not None and j < path.shape[1]:
                    sample["trajectory"] = [
                        point.reshape(manifest.y.shape).tolist() for point in path[i, j]
                    ]
                row.append(sample)
            per_x.append(row)
        stats = {
            "method": "langevin" if job.uses_chains else "prior",
            "steps_run": steps,
            "samples": job.rows_x * job.params.n,
            "seed": job.params.seed,
            "coalesced_jobs": len(self.jobs),
            "time_ms": round((time.monotonic() - self.started) * 1000, 3),
        }
        return SampleOutcome(per_x, stats)


def sample_runner(
    model: LoadedModel,
) -> Callable[[Sequence[SampleJob]], list[SampleOutcome | None]]:
    """A batch runner: decoder jobs and chain jobs each share their backend calls; seeded
    jobs run alone when the backend's rows depend on their batch. A job whose caller is
    gone gets None (nobody reads it)."""

    def run(jobs: Sequence[SampleJob]) -> list[SampleOutcome | None]:
        outcomes: dict[int, SampleOutcome | None] = {}
        for shared in deterministic_groups(jobs, model.rows_independent):
            for chains in (False, True):  # the two paths cannot share calls
                group = [
                    i
                    for i in shared
                    if jobs[i].uses_chains == chains and not jobs[i].control.gone()
                ]
                if not group:
                    continue
                sampler = Sampler(model, [jobs[i] for i in group])
                results: Sequence[SampleOutcome | None] = (
                    sampler.chain_samples() if chains else sampler.decode_samples()
                )
                outcomes.update(zip(group, results, strict=True))
        return [outcomes.get(i) for i in range(len(jobs))]

    return run
