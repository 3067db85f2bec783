"""The compute routes' route class: a lean handler of their own, their JSON bodies parsed
by orjson (large ones in a helper process), their msgpack bodies (app.api.transport)
decoded with the tensors as arrays.

FastAPI parses request bodies through ``Request.json()``; the standard library's parser
takes several times longer than orjson on a bulk request of thousands of rows. orjson also
refuses NaN and Infinity literals, which are not JSON. A body of at least
``EBM_PARSE_OFFLOAD_BYTES`` is parsed by ``app.api.body``'s helper process instead, so that
the event loop keeps serving while it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from app.api.body import BodyParser, ParsedTensor
from app.api.transport import MSGPACK_BODY
from app.binary import TensorError, from_tensor_map, unpack
from app.errors import InvalidBody
from app.registry.loader import Catalog


class OrjsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError subclasses json.JSONDecodeError, which FastAPI turns
            # into a json_invalid validation error.
            raw = await self.body()
            state = self.scope["app"].state
            parser: BodyParser | None = getattr(state, "body_parser", None)
            if self.scope.get(MSGPACK_BODY):  # (see app.api.transport)
                self._json = msgpack_body(raw)
            elif parser is not None and len(raw) >= state.settings.parse_offload_bytes:
                self._json = await parser.parse(raw, _most_rows(state.catalog, self))
            else:
                self._json = orjson.loads(raw)
        return self._json


def msgpack_body(raw: bytes) -> Any:
    """A msgpack body, its tensor maps as the arrays the tensor checks take (a map that is
    no tensor keeps its problem, reported against the field and the model's shape)."""
    try:
        return unpack(raw, tensor=_parsed)
    except ValueError as exc:  # FastAPI wraps it; the error handlers answer with ours
        raise InvalidBody(
            f"{exc}; a body sent with Content-Type: application/msgpack must be one msgpack "
            "map of the endpoint's fields"
        ) from exc


def _parsed(value: dict[str, Any]) -> ParsedTensor:
    try:
        array = from_tensor_map(value)
    except TensorError as exc:
        return ParsedTensor(rows=0, problem=str(exc))
    rows = int(array.shape[0]) if array.ndim else 1
    if array.dtype == np.bool_:
        return ParsedTensor(rows=rows, array=array.copy())
    # float32 (the dtype every model computes in); wider values beyond its range become
    # infinite and are refused as not finite, like JSON numbers beyond it
    with np.errstate(over="ignore"):
        return ParsedTensor(rows=rows, array=array.astype(np.float32))


def _most_rows(catalog: Catalog, request: Request) -> int:
    """The most rows this request could be allowed: the parser converts no longer list."""
    versions = catalog.versions(request.path_params.get("name", ""))
    manifests = versions.values() or [m for v in catalog.models.values() for m in v.values()]
    return max((m.batching.max_rows_per_request for m in manifests), default=0)


class ComputeRoute(APIRoute):
    """A compute route, declared like any FastAPI route (its OpenAPI operation is FastAPI's),
    served by a lean handler of its own.

    FastAPI's handler solves the endpoint's dependencies per request with bookkeeping that
    cost a one-pair score more than its model call (profiled: ~15% of its time in process,
    plus its telemetry and exit stacks). The compute endpoints all have one shape,
    ``(request, <str path params>, body: <model>)`` plus router dependencies that take the
    request only (the API key check), so this handler does exactly that: read and parse the
    body as FastAPI would (the same errors: ``RequestValidationError`` for JSON that does not
    parse or a body that does not validate, located under ``body``), validate it with the
    route's own body field, and call the endpoint. An endpoint of another shape is refused
    when the route is declared, not served slowly.

    Dependencies belong on the ``APIRouter`` or the route: FastAPI hands those given to
    ``include_router`` to its own handler only, so this one would not see them.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        dependant = self.dependant
        body = self.body_field
        extra = dependant.query_params + dependant.header_params + dependant.cookie_params
        strings = all(p.field_info.annotation is str for p in dependant.path_params)
        if body is None or extra or not strings or dependant.request_param_name is None:
            raise TypeError(
                f"{path}: an ComputeRoute endpoint takes (request, path params, body) only"
            )
        for dependency in dependant.dependencies:
            if _parameters(dependency) or dependency.request_param_name is None:
                raise TypeError(f"{path}: router dependencies may take the request only")
        self._checks = [d.call for d in dependant.dependencies]
        self._request_param = dependant.request_param_name
        self._path_params = [p.name for p in dependant.path_params]
        self._body_param = body.name
        self._handler = self.get_route_handler()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's route app without what only FastAPI's own handler needs: two exit
        stacks per request (for dependencies with ``yield``) and a second round of
        exception handling (ExceptionMiddleware's handlers answer what the handler raises)."""
        if scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)  # 405, worded as elsewhere
            return
        response = await self._handler(OrjsonRequest(scope, receive, send))
        await response(scope, receive, send)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.dependant.call
        assert endpoint is not None
        body_field = self.body_field
        assert body_field is not None

        async def handle(request: Request) -> Response:
            for check in self._checks:
                await check(request)  # type: ignore[misc]
            if not isinstance(request, OrjsonRequest):  # reached through FastAPI's routing
                request = OrjsonRequest(request.scope, request.receive)
            raw = await _request_body(request)
            if raw is _NO_BODY:
                body, errors = None, [_BODY_REQUIRED]
            else:
                body, errors = body_field.validate(raw, loc=("body",))
            if errors:
                raise RequestValidationError(errors, body=body)
            arguments: dict[str, Any] = {p: request.path_params[p] for p in self._path_params}
            arguments[self._request_param] = request
            arguments[self._body_param] = body
            response: Response = await endpoint(**arguments)
            return response

        return handle


def _parameters(dependant: Dependant) -> list[Any]:
    """What a dependency takes besides the request: parameters and dependencies."""
    return [
        *dependant.path_params,
        *dependant.query_params,
        *dependant.header_params,
        *dependant.cookie_params,
        *dependant.body_params,
        *dependant.dependencies,
    ]


_NO_BODY = object()
_BODY_REQUIRED = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}


async def _request_body(request: OrjsonRequest) -> Any:
    """The body as FastAPI reads it for a JSON body field: parsed when the Content-Type is
    JSON, the raw bytes otherwise (they fail validation with their own message), ``_NO_BODY``
    when there is none (field required)."""
    raw = await request.body()
    if not raw:
        return _NO_BODY
    content_type = request.headers.get("content-type", "")
    media_type = content_type.partition(";")[0].strip().lower()
    main, _, subtype = media_type.partition("/")
    if main != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return raw
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", exc.pos),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": exc.msg},
                }
            ],
            body=exc.doc,
        ) from exc


class ComputeLane(BaseRoute):
    """The compute routes, matched first and directly.

    FastAPI reaches an included router's route through a layer of bookkeeping per router
    (scope keys set and restored around every candidate), which cost a one-pair request
    more than its body validation. This route, the app's first, asks each compute route
    itself whether a request is its own (Starlette's path match: the same parameters, the
    same root-path handling) and hands it over. The routers stay included as well, for the
    OpenAPI document and for what this lane leaves to them: another method on a compute
    path gets its 405 there.
    """

    def __init__(self, *routers: APIRouter) -> None:
        self.routes = [
            r for router in routers for r in router.routes if isinstance(r, ComputeRoute)
        ]

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http":
            for route in self.routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL:
                    return match, child_scope
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["route"].handle(scope, receive, send)
