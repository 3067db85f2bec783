"""POST /v1/models/{name}/sample: n diverse samples per x (prior + decoder, or Langevin)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request, Response

from app.api.applicable import check_sample
from app.api.deps import GUARDED, request_deadline, services
from app.api.disconnect import unless_disconnected
from app.api.energy import ERRORS
from app.api.responses import reply
from app.api.routing import ComputeRoute
from app.api.search import check_cost, check_sample_size, search_inputs
from app.dispatch.base import submit_as
from app.dispatch.wire import Envelope
from app.errors import InvalidInput
from app.inference.params import method_settings
from app.inference.sampling import SampleJob, SampleOutcome, SampleParams
from app.schemas import SampleRequest, SampleResponse

router = APIRouter(
    prefix="/v1/models", tags=["inference"], route_class=ComputeRoute, dependencies=GUARDED
)


@router.post(
    "/{name}/sample",
    response_model=SampleResponse,
    responses=ERRORS,
    summary="Diverse samples per x: prior latents decoded, or Langevin chains on y.",
    description="n samples per x. Conditional models (x among the inputs of GET "
    "/v1/models/{name}, e.g. car) require x; unconditional ones (e.g. mixture) refuse it. "
    "A discrete y has no samples: use /predict with method enumerate.",
    operation_id="sample",
)
async def sample(
    request: Request,
    name: str,
    body: SampleRequest,
) -> Response:
    settings, catalog, dispatcher = services(request)
    manifest = catalog.get(name, body.version)
    if manifest.y.kind == "discrete":
        raise InvalidInput(
            f"model '{name}' has a discrete y: use /predict with method 'enumerate', whose "
            "masses are the label probabilities at temperature T"
        )
    given = search_inputs(manifest, body)
    langevin = method_settings("langevin", manifest)
    chains = body.chains or body.n
    params = SampleParams(
        n=body.n,
        chains=min(chains, body.n),
        steps=body.steps if body.steps is not None else langevin.steps,
        thin=body.thin,
        step_size=body.step_size or langevin.step_size,
        temperature=body.temperature,
        seed=body.seed if body.seed is not None else secrets.randbits(63),
        seeded=body.seed is not None,
        return_trajectory=body.return_trajectory,
    )
    # The engine also checks that its backend has the decoder the manifest ships.
    decodes = bool(
        manifest.z is not None and manifest.z.kind == "continuous" and manifest.has_decoder
    )
    job = SampleJob(
        x=given.x,
        rows_x=given.rows,
        params=params,
        y_known=given.y_known,
        y_mask=given.y_mask,
        decodes=decodes,
    )
    check_sample(manifest, body, job.uses_chains)
    steps = params.chain_steps if job.uses_chains else 1
    check_cost(manifest, given.rows, job.rows // given.rows, steps, settings, dispatcher)
    check_sample_size(manifest, given.rows, params, job.uses_chains, settings)
    deadline = request_deadline(settings, body.deadline_ms)
    env = Envelope(manifest.name, manifest.version, "sample", job, deadline)
    outcome = await unless_disconnected(request, submit_as(dispatcher, env, SampleOutcome))
    response: dict[str, Any] = {
        "model": name,
        "version": manifest.version,
        "samples": outcome.samples,
        "stats": outcome.stats,
    }
    return reply(response)
