"""POST /v1/models/{name}/predict: the k distinct low-energy answers y for each x."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Response

from app.api.deps import DispatcherDep, RegistryDep, SettingsDep
from app.api.energy import ERRORS
from app.api.responses import json_response
from app.api.routing import OrjsonRoute
from app.api.search import check_cost, search_inputs
from app.inference.params import resolve
from app.inference.search import SearchJob
from app.schemas import PredictRequest, PredictResponse

router = APIRouter(prefix="/v1/models", tags=["inference"], route_class=OrjsonRoute)


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    responses=ERRORS,
    summary="Several distinct low-energy predictions per x, by energy minimisation.",
)
async def predict(
    name: str,
    body: PredictRequest,
    registry: RegistryDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
) -> Response:
    model = registry.get(name, body.version)
    manifest = model.manifest
    params = resolve(manifest, body.model_dump(exclude={"x", "y_known", "y_mask", "version"}))
    given = search_inputs(manifest, body)
    check_cost(manifest, given.rows, params.num_starts, params.steps, settings)
    timeout_ms = body.deadline_ms or settings.request_timeout_ms
    job = SearchJob(
        x=given.x,
        rows_x=given.rows,
        params=params,
        y_known=given.y_known,
        y_mask=given.y_mask,
        deadline=time.monotonic() + timeout_ms / 1000,
    )
    outcome = await dispatcher.predict(model, job)
    response: dict[str, Any] = {
        "model": name,
        "version": model.version,
        "predictions": outcome.predictions,
        "stats": outcome.stats,
    }
    return json_response(response)
