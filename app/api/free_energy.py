"""/energy with ``free_energy``: F(x, y) of a latent model, z reduced by min or marginal."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from fastapi import Request

from app.api.deps import request_deadline
from app.api.disconnect import unless_disconnected
from app.api.search import check_cost
from app.api.tensors import pair_inputs, require_finite
from app.config import Settings
from app.dispatch.base import Dispatcher, submit_as
from app.dispatch.wire import Envelope
from app.errors import InvalidInput
from app.inference.free_energy import latent_values, marginal, minimum, pair_with_latents
from app.inference.params import resolve
from app.inference.predict import PredictOutcome
from app.inference.scoring import ScoreJob
from app.inference.search import SearchJob
from app.inference.steppers.stepper import planned_steps
from app.registry.backends.base import Array, EnergyOutput
from app.registry.manifest import Manifest
from app.schemas import EnergyRequest


def observed_pairs(manifest: Manifest, body: EnergyRequest) -> dict[str, Array]:
    """x (conditional models) and y, checked and paired row by row; z must be absent."""
    name = manifest.name
    if manifest.z is None:
        raise InvalidInput(
            f"model '{name}' has no latent variable: free_energy needs a latent model; "
            "omit free_energy to get E(x, y)"
        )
    if body.z is not None:
        raise InvalidInput("free_energy reduces z away: omit z (or omit free_energy)")
    if body.grad:
        raise InvalidInput("grad is not available with free_energy; ask for E(x, y, z) instead")
    observed = [n for n in manifest.input_names if n != "z"]
    given = {"x": body.x, "y": body.y}
    return pair_inputs(manifest, given, manifest.batching.max_rows_per_request, observed)


async def free_energy(
    request: Request | None,
    manifest: Manifest,
    body: EnergyRequest,
    dispatcher: Dispatcher,
    settings: Settings,
) -> dict[str, Any]:
    inputs = observed_pairs(manifest, body)
    assert manifest.z is not None
    rows = len(inputs["y"])
    deadline = request_deadline(settings, body.deadline_ms)
    seed = body.seed if body.seed is not None else 0
    response: dict[str, Any] = {"model": manifest.name, "version": manifest.version}
    if body.free_energy == "min" and manifest.z.kind == "continuous":
        params = resolve(manifest, {"method": "gd", "k": 1, "seed": seed})
        check_cost(manifest, rows, params.num_starts, planned_steps(params), settings, dispatcher)
        y = inputs["y"].reshape(rows, -1)
        job = SearchJob(
            x=inputs.get("x"),
            rows_x=rows,
            params=params,
            y_known=y,
            y_mask=np.ones_like(y, dtype=bool),
        )
        env = Envelope(manifest.name, manifest.version, "predict", job, deadline)
        outcome = await unless_disconnected(request, submit_as(dispatcher, env, PredictOutcome))
        # A row whose every candidate overflowed has no prediction at all.
        energies = [row[0]["energy"] if row else math.inf for row in outcome.predictions]
        require_finite(manifest, "free energy", energies)
        best = [row[0] for row in outcome.predictions]
        response["energy"] = energies
        response["z"] = [b["z"] for b in best]
        response["stats"] = outcome.stats
        return response
    count = body.num_samples or manifest.inference.num_samples
    latents = latent_values(manifest, count, seed)
    check_cost(manifest, rows, len(latents), 1, settings, dispatcher)
    pairs = ScoreJob(pair_with_latents(inputs, latents))
    env = Envelope(manifest.name, manifest.version, "score", pairs, deadline)
    scored = await submit_as(dispatcher, env, EnergyOutput)
    energy = scored.energy.reshape(rows, len(latents))
    if body.free_energy == "min":
        f, index = minimum(energy)
        require_finite(manifest, "free energy", f)
        response["energy"] = f
        response["z"] = [_latent(manifest.z.kind, latents[i]) for i in index]
    else:
        beta = body.beta or manifest.inference.beta
        response["energy"] = marginal(energy, beta)
        require_finite(manifest, "free energy", response["energy"])
        response["beta"] = beta
        response["num_samples"] = len(latents)
    return response


def _latent(kind: str, value: Array) -> Any:
    return int(value[0]) if kind == "discrete" else value.tolist()
