"""End to end on the shipped `car` model: both swerves are low energy, the middle is not."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import numpy as np

from tests.conftest import SHIPPED_MODELS
from tests.servers import Server


def _recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("car_recipe", SHIPPED_MODELS / "car" / "train.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_both_continuations_are_low_and_the_average_is_high(server: Server) -> None:
    recipe = _recipe()
    x = np.random.default_rng(7).uniform(recipe.X_LOW, recipe.X_HIGH, size=(50, 3))
    left, right = recipe.continuations(x)
    middle = (left + right) / 2  # what an MSE regressor predicts
    body = {
        "x": np.concatenate([x, x, x]).tolist(),
        "y": np.concatenate([left, right, middle]).tolist(),
    }
    with server.client() as client:
        response = client.post("/v1/models/car/energy", json=body)
    assert response.status_code == 200, response.text
    energy = np.array(response.json()["energy"]).reshape(3, 50)
    assert (energy[0] < energy[2]).all()
    assert (energy[1] < energy[2]).all()


def test_gradient_points_away_from_the_valley(server: Server) -> None:
    recipe = _recipe()
    x = np.array([[0.0, 15.0, 9.0]])
    left, _ = recipe.continuations(x)
    off_valley = left + np.array([[0.0, 0.6]])  # 0.6 m further left than the valley
    with server.client() as client:
        body = client.post(
            "/v1/models/car/energy", json={"x": x.tolist(), "y": off_valley.tolist(), "grad": True}
        ).json()
    assert body["grad_y"][0][1] > 0  # energy grows further out: descent moves back in
