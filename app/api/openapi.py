"""The OpenAPI document, made to be trusted by clients and by a fuzzer.

FastAPI's generated document is adjusted as follows:

- one table of error responses (:func:`errors`), the body of each being ``ErrorResponse``,
  used by every route instead of FastAPI's ``HTTPValidationError`` (our 422 body is ours);
- integer bounds stay exact integers: FastAPI's OpenAPI model turns every bound into a
  float, so ``seed <= 2**63 - 1`` would read ``9.223372036854776e+18`` (= 2**63, a value the
  server refuses); the bounds are restored from the pydantic schemas;
- with ``EBM_API_KEYS`` set, the guarded operations carry both security schemes (HTTP
  bearer and the ``X-API-Key`` header, either one) and their 401; with ``EBM_ADMIN_KEY``
  set, the admin operations carry their own bearer scheme and 401. Without keys nothing is
  enforced, so nothing is declared: the document describes the server as configured (a
  declared scheme that the server does not enforce would be a false promise, and a fuzzer's
  ``ignored_auth`` check says so);
- links from the model list to each model, and from a model to its operations, so a client
  (or a stateful fuzzer) can follow real model names instead of guessing them;
- named request examples, each for the model it names (a conditional model needs x).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import fastapi.routing
from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

from app.api.deps import require_api_key
from app.schemas import ErrorResponse

_RETRY_AFTER = {
    "description": "Whole seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}

# status -> (what it means, response headers). Every body is ErrorResponse:
# {"error": {"type": ..., "message": ...}}.
ERROR_TABLE: dict[int, tuple[str, dict[str, Any]]] = {
    400: (
        "invalid_json: the body is not JSON (NaN and Infinity are not JSON). invalid_http: "
        "the request is not valid HTTP/1.1 or its request line or headers are over limits.",
        {},
    ),
    401: (
        "unauthorized: EBM_API_KEYS is set and no valid key was sent; send "
        "'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
        {
            "WWW-Authenticate": {
                "description": "The scheme to authenticate with: Bearer.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    403: (
        "forbidden: the admin endpoints are disabled (EBM_ADMIN_KEY is not set).",
        {},
    ),
    404: ("model_not_found, version_not_found: unknown model or version.", {}),
    405: (
        "method_not_allowed: the path does not take this method (e.g. GET on /energy); "
        "Allow lists the ones it takes.",
        {
            "Allow": {
                "description": "The methods the path takes.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    ),
    413: (
        "payload_too_large: more rows than the model's max_rows_per_request, a body over "
        "EBM_MAX_BODY_BYTES, a search beyond EBM_MAX_SEARCH_COST evaluations or "
        "EBM_MAX_SEARCH_SECONDS of compute at the model's measured cost, or a response over "
        "EBM_MAX_RESPONSE_BYTES (the message states the limit).",
        {},
    ),
    422: (
        "invalid_request: a missing, mistyped, out-of-range or unknown field. invalid_input: "
        "a body that does not fit the model (shape, bounds, values not finite in float32, a "
        "field that does not apply to it, a result not finite in float32).",
        {},
    ),
    429: (
        "overloaded: the model's queue is full; retry after Retry-After seconds.",
        {"Retry-After": {**_RETRY_AFTER, "required": True}},
    ),
    500: (
        "dead_lettered (queue mode): the job was delivered EBM_MAX_DELIVERIES times and every "
        "worker holding it died; it is parked, not retried.",
        {},
    ),
    503: (
        "model_unavailable: the version failed a load check. shutting_down: the server is "
        "draining before it stops (Connection: close; retry on another instance). "
        "queue_unavailable (queue mode): Redis is unreachable or lost the job. "
        "Retry-After says when to retry.",
        {"Retry-After": _RETRY_AFTER},
    ),
    504: (
        "deadline_exceeded: the request's deadline (deadline_ms, default "
        "EBM_REQUEST_TIMEOUT_MS) passed before its result was ready.",
        {},
    ),
}

# What each kind of /v1 route can answer besides 200 (401 is added where keys are set).
COMPUTE_ERRORS = (400, 404, 405, 413, 422, 429, 500, 503, 504)  # energy, predict, sample
LOOKUP_ERRORS = (404, 405, 413, 422, 503)  # one model's metadata (?version=N)
LIST_ERRORS = (405, 413, 503)  # the model list
ADMIN_ERRORS = (403, 405, 413, 503)  # /v1/admin/* (401 is added where EBM_ADMIN_KEY is set)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries of the shared table for ``codes``."""
    return {code: _error_response(code) for code in codes}


def _error_response(code: int) -> dict[str, Any]:
    description, headers = ERROR_TABLE[code]
    entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
    if headers:
        entry["headers"] = headers
    return entry


SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKeyBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <key>, a key of EBM_API_KEYS.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "X-API-Key: <key>, a key of EBM_API_KEYS.",
    },
}
# Either scheme is enough: a list of alternatives.
API_KEY_SECURITY: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
ADMIN_SCHEME: dict[str, dict[str, Any]] = {
    "AdminBearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "Authorization: Bearer <EBM_ADMIN_KEY>, for /v1/admin/*.",
    }
}
ADMIN_PREFIX = "/v1/admin/"

_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")

_CAR_X = [[0.2, 20.0, 10.0]]
# Named request examples (Swagger UI's example menu) by operationId, each valid for the
# shipped model its x-model names (tests/api/test_openapi.py sends every one of them).
REQUEST_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "energy": {
        "car": {
            "summary": "car (conditional: x and y, row by row)",
            "x-model": "car",
            "value": {"x": _CAR_X * 2, "y": [[20.0, 2.5], [20.0, 0.0]], "grad": True},
        },
        "mixture": {
            "summary": "mixture (unconditional, latent z): the marginal free energy of y",
            "x-model": "mixture",
            "value": {"y": [[2.0, 0.0]], "free_energy": "marginal", "beta": 1.0},
        },
    },
    "predict": {
        "car": {
            "summary": "car (conditional: x is required)",
            "x-model": "car",
            "value": {"x": _CAR_X, "k": 2, "seed": 0},
        },
        "ellipse": {
            "summary": "ellipse (unconditional: no x): fill in the blanks of y",
            "x-model": "ellipse",
            "value": {"y_known": [[0.5, 0.0]], "y_mask": [[True, False]], "k": 2, "seed": 0},
        },
    },
    "sample": {
        "car": {
            "summary": "car, shapes, digits-inpaint (conditional: x is required; car's here)",
            "x-model": "car",
            "value": {"x": _CAR_X, "n": 16, "steps": 200, "seed": 0},
        },
        "mixture": {
            "summary": "mixture, ellipse, spiral (unconditional: no x)",
            "x-model": "mixture",
            "value": {"n": 8, "seed": 0},
        },
    },
}


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi`'s document at ``app.openapi_url``."""
    built: dict[tuple[int, int], dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        key = (_model_count(app), id(FastAPI.openapi(app)))
        if key not in built:
            built[key] = build_openapi(app, models=key[0])
        return built[key]

    app.openapi = openapi  # type: ignore[method-assign]


def _model_count(app: FastAPI) -> int:
    catalog = getattr(app.state, "catalog", None)
    return len(catalog.names()) if catalog is not None else 1


def build_openapi(app: FastAPI, models: int = 1) -> dict[str, Any]:
    """The app's document: FastAPI's, adjusted as the module says. ``models`` is how many
    entries the model list has (a link per entry)."""
    spec = copy.deepcopy(FastAPI.openapi(app))
    routes = _api_routes(app)
    _restore_integer_bounds(spec, routes)
    _drop_unused_validation_schemas(spec)
    if getattr(app.state, "api_keys", None):
        _declare_security(spec, routes)
    settings = getattr(app.state, "settings", None)
    if getattr(settings, "admin_key", None):
        _declare_admin_security(spec)
    _add_links(spec, models)
    _add_request_examples(spec)
    return spec


def _add_request_examples(spec: dict[str, Any]) -> None:
    for item in spec.get("paths", {}).values():
        for operation in item.values():
            examples = REQUEST_EXAMPLES.get(operation.get("operationId", ""))
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if examples and body is not None:
                body["examples"] = copy.deepcopy(examples)


def _api_routes(app: FastAPI) -> list[Any]:
    """The app's API routes as the document sees them: since FastAPI 0.16x an included
    router's routes are reached through route contexts (path with the prefix, the include's
    dependencies); each has an APIRoute's attributes."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:  # older FastAPI: include_router copied the routes into app.routes
        found: list[Any] = [r for r in app.routes if isinstance(r, APIRoute)]
    else:
        found = [c for c in contexts(app.routes) if isinstance(c.original_route, APIRoute)]
    return [route for route in found if route.include_in_schema]


# --- exact integer bounds ------------------------------------------------------------
def _models_of(routes: list[Any]) -> Iterator[type[BaseModel]]:
    for route in routes:
        candidates: list[Any] = [route.response_model]
        if route.body_field is not None:
            candidates.append(route.body_field.field_info.annotation)
        candidates += [r.get("model") for r in route.responses.values()]
        yield from (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))


def _restore_integer_bounds(spec: dict[str, Any], routes: list[Any]) -> None:
    components = spec.get("components", {}).get("schemas", {})
    for model in set(_models_of(routes)):
        exact = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in exact.pop("$defs", {}).items():
            if name in components:
                _copy_int_bounds(components[name], definition)
        if model.__name__ in components:
            _copy_int_bounds(components[model.__name__], exact)
    _integral_bounds(spec)  # parameters, headers: small bounds, exact as integers


def _copy_int_bounds(target: Any, exact: Any) -> None:
    """Walk FastAPI's schema and pydantic's own side by side (they have one structure) and
    take pydantic's integer bounds, which FastAPI's OpenAPI model made floats."""
    if isinstance(target, dict) and isinstance(exact, dict):
        for key, value in exact.items():
            if key not in target:
                continue
            if key in _BOUNDS and isinstance(value, int) and not isinstance(value, bool):
                target[key] = value
            else:
                _copy_int_bounds(target[key], value)
    elif isinstance(target, list) and isinstance(exact, list) and len(target) == len(exact):
        for t, e in zip(target, exact, strict=True):
            _copy_int_bounds(t, e)


def _integral_bounds(node: Any) -> None:
    """Bounds of integer schemas anywhere in ``node`` as integers (``minimum: 1``, not
    ``1.0``), where a float holds them exactly."""
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in _BOUNDS:
                value = node.get(key)
                if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                    node[key] = int(value)
        for value in node.values():
            _integral_bounds(value)
    elif isinstance(node, list):
        for value in node:
            _integral_bounds(value)


def _drop_unused_validation_schemas(spec: dict[str, Any]) -> None:
    """FastAPI's HTTPValidationError never leaves this server (every 422 is ErrorResponse):
    drop it, and then ValidationError, unless something still refers to them."""
    components = spec.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        if name in components and f'"#/components/schemas/{name}"' not in json.dumps(spec):
            del components[name]


# --- security ------------------------------------------------------------------------
def _guarded(route: Any, dependency: Callable[..., Any]) -> bool:
    return any(d.dependency is dependency for d in route.dependencies)


def _declare_security(spec: dict[str, Any], routes: list[Any]) -> None:
    spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    unauthorized = _error_json(401)
    for route in routes:
        if not _guarded(route, require_api_key):
            continue
        for method in route.methods:
            operation = spec["paths"][route.path_format].get(method.lower())
            if operation is None:
                continue
            operation["security"] = API_KEY_SECURITY
            operation["responses"].setdefault("401", copy.deepcopy(unauthorized))


def _declare_admin_security(spec: dict[str, Any]) -> None:
    spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(ADMIN_SCHEME)
    for path, item in spec.get("paths", {}).items():
        if path.startswith(ADMIN_PREFIX):
            for operation in item.values():
                operation["security"] = [{name: []} for name in ADMIN_SCHEME]
                operation["responses"].setdefault("401", _error_json(401))


def _error_json(code: int) -> dict[str, Any]:
    description, headers = ERROR_TABLE[code]
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    if headers:
        response["headers"] = copy.deepcopy(headers)
    return response


# --- links ---------------------------------------------------------------------------
_MODEL_PATH = "/v1/models/{name}"
_LIST_PATH = "/v1/models"


def _add_links(spec: dict[str, Any], models: int) -> None:
    paths = spec.get("paths", {})
    detail = paths.get(_MODEL_PATH, {}).get("get")
    listing = paths.get(_LIST_PATH, {}).get("get")
    if detail is None:
        return
    if listing is not None:
        listing["responses"]["200"]["links"] = {
            f"model{i}": {
                "operationId": detail["operationId"],
                "parameters": {"name": f"$response.body#/models/{i}/name"},
                "description": f"The metadata of entry {i} of the list.",
            }
            for i in range(max(models, 1))
        }
    links: dict[str, Any] = {}
    for path, item in paths.items():
        if not path.startswith(_MODEL_PATH + "/"):
            continue
        for operation in item.values():
            links[operation["operationId"]] = {
                "operationId": operation["operationId"],
                "parameters": {"name": "$response.body#/name"},
                "description": f"{path.rsplit('/', 1)[-1]} with this model.",
            }
    if links:
        detail["responses"]["200"]["links"] = links
