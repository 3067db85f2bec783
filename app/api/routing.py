"""A route class whose JSON bodies are parsed by orjson, large ones in a helper process,
and whose msgpack bodies (app.api.transport) are decoded with their tensors as arrays.

FastAPI parses request bodies through ``Request.json()``; the standard library's parser
takes several times longer than orjson on a bulk request of thousands of rows. orjson also
refuses NaN and Infinity literals, which are not JSON. A body of at least
``EBM_PARSE_OFFLOAD_BYTES`` is parsed by ``app.api.body``'s helper process instead, so that
the event loop keeps serving while it is parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

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


class OrjsonRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def parse_with_orjson(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return parse_with_orjson
