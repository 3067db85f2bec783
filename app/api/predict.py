"""POST /v1/models/{name}/predict: the k distinct low-energy answers y for each x."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from app.api.applicable import check_predict
from app.api.deps import GUARDED, request_deadline, services
from app.api.disconnect import unless_disconnected
from app.api.energy import ERRORS
from app.api.responses import reply
from app.api.routing import ComputeRoute
from app.api.search import check_cost, check_predict_size, search_inputs
from app.dispatch.base import submit_as
from app.dispatch.wire import Envelope
from app.inference.params import resolve
from app.inference.predict import PredictOutcome
from app.inference.search import SearchJob
from app.inference.steppers.stepper import planned_steps
from app.schemas import PredictRequest, PredictResponse

router = APIRouter(
    prefix="/v1/models", tags=["inference"], route_class=ComputeRoute, dependencies=GUARDED
)


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Several distinct low-energy predictions per x, by energy minimisation.",
    operation_id="predict",
)
async def predict(
    request: Request,
    name: str,
    body: PredictRequest,
) -> Response:
    settings, catalog, dispatcher = services(request)
    manifest = catalog.get(name, body.version)
    params = resolve(manifest, body.model_dump(exclude={"x", "y_known", "y_mask", "version"}))
    check_predict(manifest, body, params.method)
    given = search_inputs(manifest, body)
    # the size check is exact, the cost check an estimate from a measured speed: a request
    # over both limits hears about the size whatever the machine's speed
    check_predict_size(manifest, given.rows, params, settings)
    check_cost(manifest, given.rows, params.num_starts, planned_steps(params), settings, dispatcher)
    job = SearchJob(
        x=given.x, rows_x=given.rows, params=params, y_known=given.y_known, y_mask=given.y_mask
    )
    deadline = request_deadline(settings, body.deadline_ms)
    env = Envelope(manifest.name, manifest.version, "predict", job, deadline)
    outcome = await unless_disconnected(request, submit_as(dispatcher, env, PredictOutcome))
    response: dict[str, Any] = {
        "model": name,
        "version": manifest.version,
        "predictions": outcome.predictions,
        "stats": outcome.stats,
    }
    return reply(response)
