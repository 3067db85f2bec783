"""Prediction: the k distinct low-energy answers per x, from a batched search.

propose -> refine -> re-score (``search``) -> de-duplicate -> rank (``modes``). The batch
runner here is what the batcher calls with the coalesced jobs of one model and method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.inference.batch import deterministic_groups
from app.inference.control import seconds_left
from app.inference.modes import merge_seconds, select_modes
from app.inference.search import Candidates, Search, SearchJob
from app.registry.loader import LoadedModel

FINISH_SLACK_S = 0.02  # building the response after the last merge
#: Candidates within this share of the x's starting-energy spread of the best one count as
#: equally low: the modes spread over them (a continuum) before lower tiers are considered.
TIER_SHARE = 1e-3


@dataclass(frozen=True)
class PredictOutcome:
    predictions: list[list[dict[str, Any]]]  # per x, lowest energy first
    stats: dict[str, Any]


def _value(spec_shape: list[int], discrete: bool, flat: np.ndarray) -> Any:
    if discrete:
        return [round(float(v)) for v in flat.ravel()]
    return flat.reshape(spec_shape).tolist()


def to_predictions(
    model: LoadedModel, job: SearchJob, found: Candidates, coalesced: int
) -> PredictOutcome:
    manifest, params = model.manifest, job.params
    y_discrete = manifest.y.kind == "discrete"
    z_spec = manifest.z
    per_x: list[list[dict[str, Any]]] = []
    per_row_s = merge_seconds(params.k, params.num_starts)
    merged_s, merged, cut = 0.0, 0, False
    for i in range(job.rows_x):
        # The answer must leave before the deadline: when the time left would not cover one
        # more full merge, the remaining x get their single best candidate (partial).
        k = params.k
        if seconds_left(job.control.deadline) < 1.5 * per_row_s + FINISH_SLACK_S:
            k, cut = 1, True
        started = time.monotonic()
        gap = TIER_SHARE * float(found.energy_scale[i])
        reach = None if found.distance is None else found.distance[i]
        settled = None if found.converged is None else found.converged[i]
        modes = select_modes(
            found.y[i],
            found.energy[i],
            k,
            params.merge_radius,
            params.temperature,
            gap,
            reach,
            settled,
        )
        if k == params.k:
            merged_s, merged = merged_s + time.monotonic() - started, merged + 1
            per_row_s = merged_s / merged
        row = []
        for mode in modes:
            j = mode.index
            prediction: dict[str, Any] = {
                "y": _value(manifest.y.shape, y_discrete, found.y[i, j]),
                "energy": float(found.energy[i, j]),
            }
            if z_spec is not None and found.z is not None:
                z = found.z[i, j]
                prediction["z"] = (
                    int(z) if z_spec.kind == "discrete" else z.reshape(z_spec.shape).tolist()
                )
            prediction["mass"] = mode.mass
            prediction["converged"] = (
                None if found.converged is None else bool(found.converged[i, j])
            )
            if found.trajectory is not None:
                path = found.trajectory[:, i, j]
                prediction["trajectory"] = [
                    _value(manifest.y.shape, y_discrete, point) for point in path
                ]
            row.append(prediction)
        per_x.append(row)
    stats = {
        "method": params.method,
        "steps_run": found.steps_run,
        "candidates": job.rows,
        "evaluations": found.evaluations,
        "partial": found.partial or cut,
        "seed": params.seed,
        "coalesced_jobs": coalesced,
        "time_ms": round(found.elapsed_s * 1000, 3),
    }
    return PredictOutcome(per_x, stats)


Deliver = Callable[[int, PredictOutcome], None]


def predict_runner(
    model: LoadedModel,
) -> Callable[[Sequence[SearchJob], Deliver | None], list[PredictOutcome | None]]:
    """A batch runner: one search over all jobs' candidates; each job's answer is handed to
    ``deliver`` as soon as that job stops (None for a job whose caller went away)."""

    def run(
        jobs: Sequence[SearchJob], deliver: Deliver | None = None
    ) -> list[PredictOutcome | None]:
        outcomes: dict[int, PredictOutcome] = {}
        for group in deterministic_groups(jobs, model.rows_independent):

            def hand_over(i: int, found: Candidates, group: list[int] = group) -> None:
                index = group[i]
                outcome = to_predictions(model, jobs[index], found, len(group))
                outcomes[index] = outcome
                if deliver is not None:
                    deliver(index, outcome)

            Search(model, [jobs[i] for i in group]).run(hand_over)
        return [outcomes.get(i) for i in range(len(jobs))]

    return run
