"""POST /v1/models/{name}/predict against a real server on the analytic search energies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.inference.params import GD_STARTS
from tests.analytic import double_well_minima
from tests.conftest import Server

SMALL = {"num_starts": 4, "steps": 5}  # a cheap valid search


@pytest.fixture(scope="module")
def cheap_server_starting(
    server_factory: Callable[..., Server], search_models: Path
) -> Iterator[Future[Server]]:
    """A second server whose EBM_MAX_SEARCH_COST is 1000, started in the background: a
    server takes ~10 s to start (mostly importing torch and loading the pt2 programs for
    the parity check), and two start in about the time of one."""
    with ThreadPoolExecutor(1, thread_name_prefix="cheap-server") as pool:
        yield pool.submit(server_factory, search_models, EBM_MAX_SEARCH_COST="1000")


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest, cheap_server_starting: Future[Server]) -> Server:
    """The session's ``search_server``, started while ``cheap_server_starting`` starts.

    Looked up by name here so that pytest does not start it before the module fixtures (it
    sets up session fixtures a test names first)."""
    server: Server = request.getfixturevalue("search_server")
    return server


@pytest.fixture(scope="module")
def cheap_server(cheap_server_starting: Future[Server]) -> Server:
    return cheap_server_starting.result(timeout=120)


def post(server: Server, name: str, body: Any) -> httpx.Response:
    with server.client() as client:
        return client.post(f"/v1/models/{name}/predict", json=body)


def ok(server: Server, name: str, body: Any) -> dict[str, Any]:
    response = post(server, name, body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def without_time(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stats": {k: v for k, v in body["stats"].items() if k != "time_ms"}}


def test_response_shape_and_the_double_well_minima(api: Server) -> None:
    xs = [[0.2], [-0.6]]
    body = ok(api, "double-well", {"x": xs, "method": "gd", "seed": 3})
    assert set(body) == {"model", "version", "predictions", "stats"}
    assert (body["model"], body["version"]) == ("double-well", 1)
    assert len(body["predictions"]) == len(xs)  # one list per x
    for (x0,), row in zip(xs, body["predictions"], strict=True):
        assert len(row) == 2  # the manifest's k
        for prediction in row:
            assert {"y", "energy", "mass", "converged"} <= set(prediction)
            assert "trajectory" not in prediction
            assert len(prediction["y"]) == 2
            assert isinstance(prediction["energy"], float)
            assert 0 <= prediction["mass"] <= 1
            assert isinstance(prediction["converged"], bool)
        assert [p["energy"] for p in row] == sorted(p["energy"] for p in row)
        found = np.array([p["y"] for p in row])
        distance = np.linalg.norm(found[:, None] - double_well_minima(x0)[None], axis=2)
        assert distance.min(axis=0).max() < 0.1
        assert distance.min(axis=1).max() < 0.1
    stats = body["stats"]
    assert stats["seed"] == 3
    assert stats["method"] == "gd"
    assert stats["partial"] is False
    assert stats["candidates"] == 2 * GD_STARTS  # the manifest is silent: the built-in
    assert 1 <= stats["steps_run"] <= 100
    assert stats["coalesced_jobs"] >= 1


def test_unconditional_model_takes_no_x(api: Server) -> None:
    body = ok(api, "eight-gaussians", {"seed": 0, "method": "dfo"})
    assert len(body["predictions"]) == 1
    assert len(body["predictions"][0]) == 8
    # dfo's rounds take no gradient; the descent that settles its survivors does
    assert all(p["converged"] is True for p in body["predictions"][0])
    assert body["stats"]["method"] == "dfo"


def test_the_same_seed_gives_the_same_json(api: Server) -> None:
    request = {"x": [[0.1], [0.5]], "seed": 12345, "method": "langevin", "k": 3}
    first = ok(api, "double-well", request)
    second = ok(api, "double-well", request)
    assert without_time(first) == without_time(second)
    other = ok(api, "double-well", {**request, "seed": 12346})
    assert other["predictions"] != first["predictions"]


def test_an_unseeded_answer_replays_from_the_seed_it_returns(api: Server) -> None:
    request = {"method": "dfo", "num_starts": 256, "steps": 4}
    fresh = ok(api, "ring", request)
    seed = fresh["stats"]["seed"]
    assert isinstance(seed, int)
    assert 0 <= seed < 2**63
    assert ok(api, "ring", request)["stats"]["seed"] != seed
    replay = ok(api, "ring", {**request, "seed": seed})
    assert replay["predictions"] == fresh["predictions"]


def test_concurrent_identical_seeded_requests_coalesce_and_agree(api: Server) -> None:
    """16 identical seeded requests at once: the batcher coalesces the ones that queue up
    behind a running search into one search, and a seeded answer must not depend on it.

    The first request of a burst always runs alone (nothing is waiting yet); whether later
    ones coalesce depends on how they arrive while a search runs, which the OS schedules, so
    the burst is retried a few times until one reports coalesced_jobs > 1."""
    request = {"x": [[0.3]], "method": "gd", "seed": 99, "num_starts": 64, "steps": 300, "tol": 0}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            url = "/v1/models/double-well/predict"
            return await asyncio.gather(*(client.post(url, json=request) for _ in range(16)))

    coalesced: list[int] = []
    predictions = []
    for _ in range(5):
        responses = asyncio.run(burst())
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        bodies = [r.json() for r in responses]
        predictions += [b["predictions"] for b in bodies]
        coalesced = [b["stats"]["coalesced_jobs"] for b in bodies]
        if max(coalesced) > 1:
            break
    assert max(coalesced) > 1, f"never coalesced in 5 bursts: {coalesced}"
    alone = ok(api, "double-well", request)
    assert all(p == alone["predictions"] for p in predictions)


def test_trajectories_end_at_the_prediction(api: Server) -> None:
    body = ok(
        api,
        "double-well",
        {
            "x": [[0.0], [0.4]],
            "method": "gd",
            "seed": 5,
            "steps": 20,
            "tol": 0,
            "return_trajectory": True,
        },
    )
    assert body["stats"]["steps_run"] == 20
    for row in body["predictions"]:
        for prediction in row:
            path = prediction["trajectory"]
            assert len(path) == 20 + 1  # the start, then after every step
            assert all(len(point) == 2 for point in path)
            assert path[-1] == prediction["y"]


def test_a_search_of_no_steps_still_returns_its_trajectory(api: Server) -> None:
    """steps = 0 is a valid request: the path is the start alone, which is the answer."""
    body = ok(api, "ring", {"seed": 5, "steps": 0, "return_trajectory": True})
    for prediction in body["predictions"][0]:
        assert prediction.get("trajectory") == [prediction["y"]]


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str, str]] = [
    # (case, model, body, status, error type, message fragment)
    ("k = 0", "ring", {"k": 0}, 422, "invalid_request", "k:"),
    ("too many steps", "ring", {"steps": 10**6}, 422, "invalid_request", "steps:"),
    ("unknown method", "ring", {"method": "newton"}, 422, "invalid_request", "method:"),
    ("misspelt field", "ring", {"stpes": 10}, 422, "invalid_request", "stpes: unknown field"),
    ("string seed", "ring", {"seed": "1"}, 422, "invalid_request", "seed:"),
    (
        "enumerate on a continuous y",
        "ring",
        {"method": "enumerate"},
        422,
        "invalid_input",
        "needs a discrete y",
    ),
    ("x for an unconditional model", "ring", {"x": [[0.0]]}, 422, "invalid_input", "omit x"),
    ("x missing", "double-well", {"seed": 1}, 422, "invalid_input", "x is required"),
    ("x of the wrong shape", "double-well", {"x": [[0.0, 1.0]]}, 422, "invalid_input", "[N, 1]"),
    (
        "y_mask without y_known",
        "ring",
        {"y_mask": [[True, False]]},
        422,
        "invalid_input",
        "y_known and y_mask go together",
    ),
    (
        "y_known without y_mask",
        "ring",
        {"y_known": [[0.9, 0.0]]},
        422,
        "invalid_input",
        "y_known and y_mask go together",
    ),
    (
        "y_mask of numbers",
        "ring",
        {"y_known": [[0.9, 0.0]], "y_mask": [[1, 0]]},
        422,
        "invalid_input",
        "true/false",
    ),
    (
        "y_known outside the bounds",
        "ring",
        {"y_known": [[3.5, 0.0]], "y_mask": [[True, False]]},
        422,
        "invalid_input",
        "outside the bounds [-3, 3]",
    ),
    (
        "y_known rows differ from x rows",
        "double-well",
        {"x": [[0.0], [0.1]], "y_known": [[0.9, 0.0]], "y_mask": [[True, False]]},
        422,
        "invalid_input",
        "one row per x",
    ),
    ("unknown model", "nope", {}, 404, "model_not_found", "double-well"),
    (
        "over the default search cost",
        "ring",
        {"num_starts": 65_536, "steps": 100},
        413,
        "payload_too_large",
        "the limit is 5,000,000",
    ),
]


@pytest.mark.parametrize(
    ("model", "body", "status", "error_type", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_requests_are_refused_and_the_server_keeps_serving(
    api: Server,
    model: str,
    body: dict[str, Any],
    status: int,
    error_type: str,
    fragment: str,
) -> None:
    response = post(api, model, body)
    assert response.status_code == status, response.text
    error = response.json()
    assert set(error) == {"error"}
    assert set(error["error"]) == {"type", "message"}
    assert error["error"]["type"] == error_type
    assert fragment in error["error"]["message"]
    ok(api, "ring", SMALL)


def test_the_search_cost_limit_comes_from_the_environment(cheap_server: Server) -> None:
    request = {"x": [[0.0], [0.5]], "method": "gd", "num_starts": 10}
    response = post(cheap_server, "double-well", request)
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["type"] == "payload_too_large"
    message = error["message"].replace(",", "")
    assert "the limit is 1000" in message  # the configured limit
    assert "2 x 10 x 100 = 2000" in message  # what this search would have cost
    # at the limit is fine, and the server keeps serving
    body = ok(cheap_server, "double-well", {**request, "steps": 50})
    assert body["stats"]["candidates"] == 20
