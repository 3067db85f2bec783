"""Scoring: energies (and gradients) for a batch of pairs coalesced from several jobs."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from app.inference.control import Control
from app.registry.backends.base import Array, EnergyBackend, EnergyOutput


@dataclass(frozen=True)
class ScoreJob:
    """One request's pairs: ``inputs[name]`` is ``[n, *spec(name).shape]``, float32; with
    ``grad`` the backend also returns dE/d(input). Scoring is one step: its control is
    checked once, before the backend call."""

    inputs: dict[str, Array]
    grad: bool = False
    control: Control = field(default_factory=Control, compare=False)

    @property
    def rows(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])


def split_output(output: EnergyOutput, rows: Sequence[int]) -> list[EnergyOutput]:
    """Cut a batched output back into per-job outputs (views, no copies)."""
    bounds = np.cumsum([0, *rows])
    return [
        EnergyOutput(
            energy=output.energy[a:b],
            grads={name: grad[a:b] for name, grad in output.grads.items()},
        )
        for a, b in itertools.pairwise(bounds)
    ]


def score_runner(
    backend: EnergyBackend, grad: bool
) -> Callable[[Sequence[ScoreJob]], list[EnergyOutput]]:
    """A batch runner: one backend call for all jobs, results split back in order."""

    def run(jobs: Sequence[ScoreJob]) -> list[EnergyOutput]:
        if len(jobs) == 1:  # the idle path: no concatenation, no split
            return [backend.energy(jobs[0].inputs, grad)]
        names = jobs[0].inputs.keys()
        merged = {name: np.concatenate([job.inputs[name] for job in jobs]) for name in names}
        return split_output(backend.energy(merged, grad), [job.rows for job in jobs])

    return run
