"""POST /v1/models/{name}/energy: E(x, y) for a batch of pairs, optionally with dE/dy."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.api.applicable import check_energy
from app.api.deps import GUARDED, request_deadline, services
from app.api.free_energy import free_energy
from app.api.openapi import COMPUTE_ERRORS, errors
from app.api.responses import reply
from app.api.routing import ComputeRoute
from app.api.tensors import pair_inputs, require_finite
from app.dispatch.base import submit_as
from app.dispatch.wire import Envelope
from app.inference.scoring import ScoreJob
from app.registry.backends.base import EnergyOutput
from app.schemas import EnergyRequest, EnergyResponse

router = APIRouter(
    prefix="/v1/models", tags=["scoring"], route_class=ComputeRoute, dependencies=GUARDED
)

# The compute routes' errors, from the shared table (app.api.openapi); /predict and
# /sample use it too.
ERRORS = errors(*COMPUTE_ERRORS)


@router.post(
    "/{name}/energy",
    response_model=EnergyResponse,
    responses=ERRORS,
    summary="Energies of (x, y) pairs; low means compatible.",
    operation_id="energy",
)
async def energy(
    request: Request,
    name: str,
    body: EnergyRequest,
) -> Response:
    settings, catalog, dispatcher = services(request)
    manifest = catalog.get(name, body.version)
    check_energy(manifest, body)
    if body.free_energy is not None:
        return reply(await free_energy(request, manifest, body, dispatcher, settings))
    inputs = pair_inputs(
        manifest, {"x": body.x, "y": body.y, "z": body.z}, manifest.batching.max_rows_per_request
    )
    deadline = request_deadline(settings, body.deadline_ms)
    job = ScoreJob(inputs, grad=body.grad)
    env = Envelope(manifest.name, manifest.version, "score", job, deadline)
    result = await submit_as(dispatcher, env, EnergyOutput)
    require_finite(manifest, "energy", result.energy)
    for input_name, grad in result.grads.items():
        require_finite(manifest, f"gradient dE/d{input_name}", grad)
    response: dict[str, Any] = {"model": name, "version": manifest.version, "energy": result.energy}
    for input_name, grad in result.grads.items():
        response[f"grad_{input_name}"] = grad
    return reply(response)
