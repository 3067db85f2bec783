"""The typed SDK (app.client) against real servers, over both transports.

Every check compares with what the server itself answers to a raw JSON request, so the SDK
is held to the wire format, never to a mock of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from app.client import (
    AsyncClient,
    Client,
    EBMError,
    EnergyResult,
    InvalidInput,
    ModelInfo,
    NotFound,
    Overloaded,
    PredictResult,
    SampleResult,
    Timeout,
    TransportError,
    Unauthorized,
)
from tests.analytic import quad_energy, quad_grad
from tests.conftest import Server
from tests.servers import free_port

TRANSPORTS = ["json", "msgpack"]
KEY = "sdk-test-key"
CAR_X = np.array([[0.2, 20.0, 10.0], [-0.5, 15.0, 8.0], [0.9, 28.0, 11.5]], np.float32)
CAR_Y = np.array([[20.0, 2.0], [14.0, -1.5], [25.0, 0.5]], np.float32)
# A search that cannot finish early (tol=0: never "converged") and stops at its deadline.
SLOW = {"method": "gd", "num_starts": 1, "steps": 100_000, "tol": 0.0}


@pytest.fixture(scope="module")
def guarded_starting(
    server_factory: Callable[..., Server], analytic_models: Path
) -> Iterator[Future[Server]]:
    """A quad-only server with an API key, a queue of one search and batches of one row
    (so that a second search waits instead of joining the first), started in the
    background while the session's main server starts."""
    with ThreadPoolExecutor(1, thread_name_prefix="guarded-server") as pool:
        yield pool.submit(
            server_factory,
            analytic_models,
            EBM_API_KEYS=KEY,
            EBM_MAX_QUEUE="1",
            EBM_MAX_BATCH_SIZE="1",
        )


@pytest.fixture(scope="module")
def api(request: pytest.FixtureRequest, guarded_starting: Future[Server]) -> Server:
    """The session's ``server`` (shipped models plus quad), looked up after the guarded
    one started starting, so that both start at once."""
    server: Server = request.getfixturevalue("server")
    return server


@pytest.fixture(scope="module")
def guarded(guarded_starting: Future[Server]) -> Server:
    return guarded_starting.result(timeout=120)


@pytest.fixture(params=TRANSPORTS)
def client(request: pytest.FixtureRequest, api: Server) -> Iterator[Client]:
    """A client on each transport; every answer it got must have come in that encoding
    (read from the SDK's connection pool: the SDK itself does not expose it)."""
    media: list[str] = []
    with Client(api.url, transport=request.param) as sdk:
        sdk._http.event_hooks["response"].append(
            lambda response: media.append(response.headers["content-type"])
        )
        yield sdk
    expected = "application/msgpack" if request.param == "msgpack" else "application/json"
    assert media
    assert set(media) == {expected}


def raw(server: Server, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """The server's own JSON answer, for comparison."""
    with server.client() as http:
        response = http.post(path, json=body) if body is not None else http.get(path)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def without_time(stats: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in stats.items() if k != "time_ms"}


def f32(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


# --- discovery ---------------------------------------------------------------------------
def test_models_and_model(client: Client, api: Server) -> None:
    listed = client.models()
    assert {"car", "quad", "mixture"} <= set(listed.names)
    assert len(listed) == len(raw(api, "/v1/models")["models"])
    quad = next(m for m in listed if m.name == "quad")
    assert (quad.available, quad.versions, quad.latest) == (True, (1, 2), 2)

    car = client.model("car")
    assert isinstance(car, ModelInfo)
    assert (car.name, car.version, car.inputs) == ("car", 1, ("x", "y"))
    assert car.x is not None
    assert car.x.shape == (3,)
    assert car.y.shape == (2,)
    assert car.z is None
    assert car.x.names == ("offset_m", "distance_m", "speed_mps")
    assert car.detail["card"] == raw(api, "/v1/models/car")["card"]
    assert client.model("quad", version=1).version == 1


# --- energy ------------------------------------------------------------------------------
def test_energies_equal_raw_json_exactly(client: Client, api: Server) -> None:
    """The bar: the SDK's energies and gradients are the float32 values the server's JSON
    answer holds, bit for bit, over JSON and over msgpack."""
    expected = raw(
        api, "/v1/models/car/energy", {"x": CAR_X.tolist(), "y": CAR_Y.tolist(), "grad": True}
    )
    result = client.energy("car", x=CAR_X, y=CAR_Y, grad=True)
    assert isinstance(result, EnergyResult)
    assert (result.model, result.version) == ("car", 1)
    assert result.energy.dtype == np.float32
    assert result.energy.shape == (3,)
    assert result.energy.tobytes() == f32(expected["energy"]).tobytes()
    assert set(result.grads) == {"y"}
    assert result.grads["y"].tobytes() == f32(expected["grad_y"]).tobytes()
    assert (result.z, result.beta, result.stats) == (None, None, None)
    # nested lists are the same request
    same = client.energy("car", x=CAR_X.tolist(), y=CAR_Y.tolist())
    assert same.energy.tobytes() == result.energy.tobytes()
    assert same.grads == {}
    # float64 arrays too: rounded to float32 by the SDK (msgpack) or the server (JSON)
    x64 = CAR_X.astype(np.float64) + np.pi * 1e-7
    y64 = CAR_Y.astype(np.float64) + np.e * 1e-6
    assert x64.dtype == y64.dtype == np.float64
    expected = raw(api, "/v1/models/car/energy", {"x": x64.tolist(), "y": y64.tolist()})
    wide = client.energy("car", x=x64, y=y64)
    assert wide.energy.tobytes() == f32(expected["energy"]).tobytes()


def test_energy_version_and_closed_form(client: Client) -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 5, 2)).astype(np.float32)
    result = client.energy("quad", x=x, y=y, grad=True, version=1, deadline_ms=5_000)
    assert result.version == 1
    np.testing.assert_allclose(result.energy, quad_energy(x, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(result.grads["y"], quad_grad(x, y), rtol=1e-5, atol=1e-5)
    assert not result.energy.flags.writeable  # results are frozen, arrays included


def test_free_energies_carry_their_fields(client: Client, api: Server) -> None:
    points = [[2.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]
    marginal = client.energy("mixture", y=points, free_energy="marginal", beta=2.0)
    expected = raw(
        api, "/v1/models/mixture/energy", {"y": points, "free_energy": "marginal", "beta": 2.0}
    )
    np.testing.assert_array_equal(marginal.energy, f32(expected["energy"]))
    assert marginal.beta == 2.0
    assert marginal.num_samples == expected.get("num_samples")

    labels = client.energy("mixture", y=points, free_energy="min")
    assert labels.z is not None
    assert labels.z.dtype == np.int64
    assert labels.z.shape == (3,)
    assert (
        labels.z.tolist()
        == raw(api, "/v1/models/mixture/energy", {"y": points, "free_energy": "min"})["z"]
    )

    descent = client.energy("ellipse", y=points, free_energy="min", seed=3)
    expected = raw(api, "/v1/models/ellipse/energy", {"y": points, "free_energy": "min", "seed": 3})
    np.testing.assert_array_equal(descent.energy, f32(expected["energy"]))
    assert descent.z is not None
    assert descent.z.dtype == np.float32
    assert descent.z.shape == (3, 1)
    np.testing.assert_array_equal(descent.z, f32(expected["z"]))
    assert descent.stats is not None
    assert set(descent.stats) == set(expected["stats"])


# --- predict and sample ------------------------------------------------------------------
def test_predict_regroups_per_x_and_equals_raw_json(client: Client, api: Server) -> None:
    request = {"x": CAR_X[:2].tolist(), "k": 2, "seed": 7, "method": "gd"}
    expected = raw(api, "/v1/models/car/predict", request)
    result = client.predict("car", x=CAR_X[:2], k=2, seed=7, method="gd")
    assert isinstance(result, PredictResult)
    assert (result.model, result.version) == ("car", 1)
    assert result.stats["seed"] == 7
    assert result.stats["method"] == "gd"
    assert len(result.predictions) == 2
    for found, wire in zip(result.predictions, expected["predictions"], strict=True):
        assert 1 <= len(found) <= 2
        assert found.y.dtype == np.float32
        assert found.y.shape == (len(found), 2)
        np.testing.assert_array_equal(found.y, f32([p["y"] for p in wire]))
        np.testing.assert_array_equal(found.energy, f32([p["energy"] for p in wire]))
        np.testing.assert_array_equal(found.mass, f32([p["mass"] for p in wire]))
        assert found.converged is not None
        assert found.converged.tolist() == [p["converged"] for p in wire]
        assert np.all(np.diff(found.energy) >= 0)  # lowest energy first
        assert found.z is None
        assert found.trajectory is None


def test_predict_trajectory_and_discrete_labels(client: Client) -> None:
    paths = client.predict(
        "quad", x=[[0.0, 0.0]], method="gd", num_starts=4, steps=6, k=1, return_trajectory=True
    )
    (best,) = paths.predictions
    assert best.trajectory is not None
    assert best.trajectory.ndim == 3
    assert best.trajectory.shape[0] == 1
    assert best.trajectory.shape[2] == 2
    clamped = client.predict(
        "quad",
        x=np.zeros((2, 2), np.float32),
        y_known=np.array([[1.5, 0.0], [-2.0, 0.0]], np.float32),
        y_mask=np.array([[True, False], [True, False]]),
        k=1,
        seed=0,
    )
    # the clamped component is held; the free one is the minimum given it: W x + c = c
    np.testing.assert_array_equal([p.y[0, 0] for p in clamped.predictions], [1.5, -2.0])
    np.testing.assert_allclose([p.y[0, 1] for p in clamped.predictions], [-1.0, -1.0], atol=1e-3)
    digits = client.predict("digits", x=np.zeros((1, 8, 8), np.float32), method="enumerate", k=3)
    (labels,) = digits.predictions
    assert labels.y.dtype == np.int64
    assert labels.y.shape == (3, 1)


def test_sample_regroups_per_x_and_equals_raw_json(client: Client, api: Server) -> None:
    request = {"x": CAR_X[:2].tolist(), "n": 4, "steps": 10, "seed": 0}
    expected = raw(api, "/v1/models/car/sample", request)
    result = client.sample("car", x=CAR_X[:2], n=4, steps=10, seed=0)
    assert isinstance(result, SampleResult)
    assert without_time(result.stats) == without_time(expected["stats"])
    assert len(result.samples) == 2
    for drawn, wire in zip(result.samples, expected["samples"], strict=True):
        assert drawn.y.shape == (4, 2)
        assert len(drawn) == 4
        np.testing.assert_array_equal(drawn.y, f32([s["y"] for s in wire]))
        np.testing.assert_array_equal(drawn.energy, f32([s["energy"] for s in wire]))
    latent = client.sample("ellipse", n=3, seed=1)
    (drawn,) = latent.samples
    assert drawn.z is not None
    assert drawn.z.shape == (3, 1)
    chains = client.sample("spiral", n=2, steps=4, seed=1, return_trajectory=True)
    assert chains.samples[0].trajectory is not None
    assert chains.samples[0].trajectory.ndim == 3


# --- errors ------------------------------------------------------------------------------
def test_errors_are_typed_with_the_servers_message(client: Client) -> None:
    with pytest.raises(NotFound) as missing:
        client.energy("nope", x=[[0, 0]], y=[[0, 0]], request_id="find-me")
    assert (missing.value.status, missing.value.type) == (404, "model_not_found")
    assert missing.value.request_id == "find-me"
    assert missing.value.attempts == 1  # a 4xx is never retried

    with pytest.raises(InvalidInput) as shape:
        client.energy("quad", x=[[0, 0]], y=[[0, 0, 0]])
    assert (shape.value.status, shape.value.type) == (422, "invalid_input")
    assert "y has shape [1, 3]; model 'quad' expects [N, 2]" in shape.value.message

    with pytest.raises(InvalidInput) as array_shape:  # the same check on a tensor map
        client.energy("quad", x=np.zeros((1, 2)), y=np.zeros((1, 3)))
    assert "y has shape [1, 3]; model 'quad' expects [N, 2]" in array_shape.value.message

    with pytest.raises(NotFound, match="available versions: 1, 2"):
        client.model("quad", version=9)
    with pytest.raises(InvalidInput, match="seed"):  # a field that does not apply
        client.energy("quad", x=[[0, 0]], y=[[0, 0]], seed=1)


def test_unauthorized_without_the_key(guarded: Server) -> None:
    retried: list[float] = []
    sdk = Client(guarded.url, transport="json", on_retry=lambda e, d: retried.append(d))
    with sdk, pytest.raises(Unauthorized) as denied:
        sdk.models()
    assert (denied.value.status, denied.value.type) == (401, "unauthorized")
    assert retried == []
    with Client(guarded.url, KEY) as sdk:
        assert sdk.models().names == ("quad",)


# --- retries and timeouts ----------------------------------------------------------------
def test_a_full_queue_is_retried_after_retry_after(guarded: Server) -> None:
    """A real 429: the queue holds one search; one runs (until its deadline) and one waits
    behind it (batches of one row: it cannot join), so any other is refused meanwhile."""
    quick = {"x": [[0.0, 0.0]], "num_starts": 1, "steps": 2}
    with Client(guarded.url, KEY, transport="json") as warm:  # a measured drain rate makes
        warm.predict("quad", **quick)  # the server's Retry-After 1 s (5 s before any)

    def post(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{guarded.url}/v1/models/quad/predict",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=30,
        )

    def wait_in_line() -> httpx.Response:
        # (a probe below may hold the one place for a moment: then come back)
        while (answer := post(slow)).status_code == 429:
            time.sleep(0.05)
        return answer

    def saturated() -> bool:
        # a probe that gets in waits at most 0.2 s (then 504) and leaves the queue again
        return post({**quick, "deadline_ms": 200}).status_code == 429

    slow = {"x": [[0.0, 0.0]], **SLOW, "deadline_ms": 4_000}
    with ThreadPoolExecutor(2) as pool:
        running = pool.submit(post, slow)
        time.sleep(0.2)
        waiting = pool.submit(wait_in_line)
        time.sleep(0.2)
        limit = time.monotonic() + 2
        while not saturated():
            assert time.monotonic() < limit, "the queue never filled up"
            time.sleep(0.1)

        # a caller that will not sleep as long as the server asks hears at once
        with Client(guarded.url, KEY, backoff_cap=0.5) as brief, pytest.raises(Overloaded) as now:
            brief.predict("quad", **quick)
        assert now.value.attempts == 1
        assert now.value.retry_after == 1

        waits: list[float] = []
        impatient = Client(guarded.url, KEY, retries=1, on_retry=lambda e, d: waits.append(d))
        started = time.monotonic()
        with impatient, pytest.raises(Overloaded) as refused:
            impatient.predict("quad", **quick)
        error = refused.value
        assert (error.status, error.type, error.attempts) == (429, "overloaded", 2)
        assert error.retry_after == 1
        assert len(waits) == 1
        assert 1 <= waits[0] <= 1.1  # Retry-After is a floor, plus the first backoff's jitter
        assert time.monotonic() - started >= 1

        patient_waits: list[float] = []
        patient = Client(
            guarded.url, KEY, retries=10, on_retry=lambda e, d: patient_waits.append(d)
        )
        with patient:
            result = patient.predict("quad", **quick)
        assert len(result.predictions) == 1
        assert patient_waits  # refused at least once, then it got through
        # one searched until its deadline (200, partial); the other ran after it or expired
        # waiting (504): which one came first is up to the threads
        codes = {running.result().status_code, waiting.result().status_code}
        assert 200 in codes
        assert codes <= {200, 504}


def test_a_timeout_is_typed_and_not_retried(api: Server) -> None:
    retried: list[float] = []
    with Client(api.url, timeout=0.3, on_retry=lambda e, d: retried.append(d)) as sdk:
        started = time.monotonic()
        with pytest.raises(Timeout) as late:
            sdk.predict("quad", x=[[0.0, 0.0]], **SLOW, deadline_ms=5_000, request_id="slow")
    assert time.monotonic() - started < 3
    assert isinstance(late.value, TransportError)
    assert late.value.status is None
    assert late.value.request_id == "slow"
    assert retried == []


def test_a_refused_connection_is_retried_then_raised() -> None:
    retried: list[float] = []
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    sdk = Client(url, retries=2, backoff_base=0.01, on_retry=lambda e, d: retried.append(d))
    with sdk, pytest.raises(TransportError) as refused:
        sdk.models()
    assert not isinstance(refused.value, Timeout)
    assert refused.value.attempts == 3
    assert len(retried) == 2
    assert all(0 <= d <= 0.02 for d in retried)  # full jitter below the doubling bound


# --- plumbing ----------------------------------------------------------------------------
def test_request_ids_and_closing(api: Server) -> None:
    with Client(api.url) as sdk:
        named = sdk.energy("quad", x=[[0, 0]], y=[[0, 0]], request_id="abc-123")
        fresh = [sdk.energy("quad", x=[[0, 0]], y=[[0, 0]]).request_id for _ in range(2)]
    assert named.request_id == "abc-123"
    assert fresh[0] != fresh[1]
    assert all(len(r) == 32 for r in fresh)
    assert sdk.closed
    with pytest.raises(RuntimeError):
        sdk.models()
    with pytest.raises(ValueError, match="transport"):
        Client(api.url, transport="xml")  # type: ignore[arg-type]


def test_async_client_answers_as_the_blocking_one(api: Server) -> None:
    with Client(api.url, transport="json") as sdk:
        energy = sdk.energy("car", x=CAR_X, y=CAR_Y, grad=True)
        predicted = sdk.predict("car", x=CAR_X[:1], k=2, seed=5)
        sampled = sdk.sample("car", x=CAR_X[:1], n=3, steps=5, seed=5)

    async def main(transport: str) -> tuple[Any, ...]:
        async with AsyncClient(api.url, transport=transport) as sdk:  # type: ignore[arg-type]
            answers = await asyncio.gather(
                sdk.models(),
                sdk.model("car"),
                sdk.energy("car", x=CAR_X, y=CAR_Y, grad=True),
                sdk.predict("car", x=CAR_X[:1], k=2, seed=5),
                sdk.sample("car", x=CAR_X[:1], n=3, steps=5, seed=5),
                sdk.energy("nope", y=[[0, 0]]),
                return_exceptions=True,
            )
        assert sdk.closed
        return tuple(answers)

    for transport in TRANSPORTS:
        models, car, got_energy, got_predicted, got_sampled, missing = asyncio.run(main(transport))
        assert "car" in models.names
        assert car.name == "car"
        np.testing.assert_array_equal(got_energy.energy, energy.energy)
        np.testing.assert_array_equal(got_energy.grads["y"], energy.grads["y"])
        np.testing.assert_array_equal(got_predicted.predictions[0].y, predicted.predictions[0].y)
        np.testing.assert_array_equal(got_sampled.samples[0].y, sampled.samples[0].y)
        assert isinstance(missing, NotFound)
        assert isinstance(missing, EBMError)


def test_async_timeout_and_refusal(api: Server) -> None:
    async def main() -> None:
        async with AsyncClient(api.url, timeout=0.3, retries=0) as sdk:
            with pytest.raises(Timeout):
                await sdk.predict("quad", x=[[0.0, 0.0]], **SLOW, deadline_ms=5_000)
            with pytest.raises(InvalidInput, match="expects"):
                await sdk.energy("quad", x=[[0, 0]], y=[[0, 0, 0]])

    asyncio.run(main())
