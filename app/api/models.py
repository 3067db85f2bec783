"""Model discovery: what is served, its specs, defaults and card."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query, Response

from app.api.deps import GUARDED, CatalogDep, DispatcherDep, SettingsDep
from app.api.openapi import LIST_ERRORS, LOOKUP_ERRORS, errors
from app.api.responses import reply
from app.dispatch.engine import batching_limits
from app.inference.params import default_method, method_settings, usable_methods
from app.schemas import ModelDetail, ModelList

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=GUARDED)


def _summary(registry: CatalogDep, dispatcher: DispatcherDep, name: str) -> dict[str, Any]:
    versions = registry.versions(name)
    latest = versions[max(versions)] if versions else None
    served = dispatcher.describe(name, latest.version) if latest else {}
    return {
        "name": name,
        "available": bool(versions),
        "versions": sorted(versions),
        "latest": latest.version if latest else None,
        "unavailable": [
            {"version": u.version, "reason": u.reason} for u in registry.problems(name)
        ],
        "backend": served.get("backend"),
        "task": latest.card.task if latest else None,
    }


@router.get(
    "",
    response_model=ModelList,
    responses=errors(*LIST_ERRORS),
    summary="List every model, available or not.",
    operation_id="list_models",
)
async def list_models(registry: CatalogDep, dispatcher: DispatcherDep) -> Response:
    summaries = [_summary(registry, dispatcher, n) for n in registry.names()]
    return reply({"models": summaries})


@router.get(
    "/{name}",
    response_model=ModelDetail,
    summary="A model's metadata: versions, x/y/z specs, bounds, defaults, card, metrics.",
    responses=errors(*LOOKUP_ERRORS),
    operation_id="get_model",
)
async def get_model(
    name: str,
    registry: CatalogDep,
    dispatcher: DispatcherDep,
    settings: SettingsDep,
    version: int | None = Query(None, ge=1, description="Default: the newest version."),
) -> Response:
    manifest = registry.get(name, version)
    max_rows, max_delay_s = batching_limits(manifest.batching, settings)
    body = _summary(registry, dispatcher, name) | {
        "version": manifest.version,
        "description": manifest.description,
        "inputs": manifest.input_names,
        "x": manifest.x.model_dump(exclude_none=True) if manifest.x else None,
        "y": manifest.y.model_dump(exclude_none=True),
        "z": manifest.z.model_dump(exclude_none=True) if manifest.z else None,
        "inference": manifest.inference.model_dump()
        | {
            "default_method": default_method(manifest),
            # What each method runs with when a request sets nothing (see inference.params).
            "effective": {
                m: asdict(method_settings(m, manifest)) for m in usable_methods(manifest)
            },
        },
        "batching": manifest.batching.model_dump()
        | {"effective_max_batch_size": max_rows, "effective_max_delay_ms": max_delay_s * 1000},
        "card": manifest.card.model_dump(),
        "metrics": manifest.metrics,
        "training": manifest.training.model_dump(),
        # Properties of the loaded artifacts: known where compute happens (embedded mode);
        # null in queue mode, where the workers load them.
        **dispatcher.describe(name, manifest.version),
    }
    return reply(body)
