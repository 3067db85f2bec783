"""The compute routes' lean handler (app.api.routing.ComputeRoute): what it serves, what it
refuses to serve, on small apps served by uvicorn on a free port. The service's own routes
are checked over HTTP in tests/api."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from pydantic import BaseModel
from starlette.routing import Match

from app.api.routing import ComputeLane, ComputeRoute
from app.errors import EBMError, Unauthorized
from tests.servers import free_port


class Body(BaseModel):
    value: int


def with_error_envelope(router: APIRouter) -> FastAPI:
    app = FastAPI()
    app.include_router(router)

    @app.exception_handler(EBMError)
    async def ebm_error(_: Request, exc: EBMError) -> Response:
        return Response(exc.message, exc.status_code)

    return app


@contextmanager
def served(app: FastAPI) -> Iterator[httpx.Client]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)


def test_the_endpoint_gets_request_path_params_and_validated_body() -> None:
    router = APIRouter(route_class=ComputeRoute)

    @router.post("/things/{name}/{kind}")
    async def thing(request: Request, name: str, kind: str, body: Body) -> Response:
        return Response(f"{request.method} {name} {kind} {body.value * 2}")

    with served(with_error_envelope(router)) as client:
        ok = client.post("/things/a/b", json={"value": 21})
        invalid = client.post("/things/a/b", json={"value": "many"})
        missing = client.post(
            "/things/a/b", content=b"", headers={"content-type": "application/json"}
        )
    assert ok.text == "POST a b 42"
    assert invalid.status_code == 422
    assert invalid.json()["detail"][0]["loc"] == ["body", "value"]
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["type"] == "missing"


def test_the_routes_own_dependencies_run_before_the_body_is_read() -> None:
    read: list[bool] = []

    async def guard(request: Request) -> None:
        read.append(False)
        if request.headers.get("x-key") != "yes":
            raise Unauthorized("no key")

    router = APIRouter(route_class=ComputeRoute, dependencies=[Depends(guard)])

    @router.post("/guarded")
    async def guarded(request: Request, body: Body) -> Response:
        read.append(True)
        return Response("in")

    with served(with_error_envelope(router)) as client:
        refused = client.post("/guarded", json={"value": 1})
        admitted = client.post("/guarded", json={"value": 1}, headers={"x-key": "yes"})
    assert (refused.status_code, admitted.text) == (401, "in")
    assert read == [False, False, True]


def test_an_endpoint_of_another_shape_is_refused_when_declared() -> None:
    router = APIRouter(route_class=ComputeRoute)
    with pytest.raises(TypeError, match="path params, body"):

        @router.post("/query")
        async def with_query(request: Request, body: Body, limit: int = 3) -> Response:
            return Response()

    async def needs_settings(value: int = 0) -> int:
        return value

    with pytest.raises(TypeError, match="request only"):

        @router.post("/deps", dependencies=[Depends(needs_settings)])
        async def with_deps(request: Request, body: Body) -> Response:
            return Response()


def test_the_lane_serves_compute_routes_and_leaves_the_rest_to_the_app() -> None:
    router = APIRouter(route_class=ComputeRoute)

    @router.post("/v1/things/{name}/count")
    async def count(request: Request, name: str, body: Body) -> Response:
        return Response(f"lane={request.scope['route'] is lane.routes[0]} {name}")

    lane = ComputeLane(router)
    app = FastAPI(routes=[lane])
    app.include_router(router)

    @app.get("/v1/things/{name}")
    async def thing(name: str) -> dict[str, str]:
        return {"name": name}

    scope = {"type": "http", "method": "POST", "path": "/v1/things/a/count", "root_path": ""}
    assert lane.matches(scope)[0] is Match.FULL
    assert lane.matches({**scope, "method": "GET"})[0] is Match.NONE
    assert lane.matches({**scope, "path": "/v1/things/a"})[0] is Match.NONE
    with served(app) as client:
        served_by_lane = client.post("/v1/things/a/count", json={"value": 1})
        other = client.get("/v1/things/a")
        wrong_method = client.get("/v1/things/a/count")
    assert served_by_lane.text == "lane=True a"
    assert other.json() == {"name": "a"}
    assert wrong_method.status_code == 405
