"""Free energies reduce z exactly as their closed forms say.

The circle E(y, z) = ||y - 2 (cos z, sin z)||^2 with z uniform on [-pi, pi] has
F_inf(y) = (|y| - 2)^2 and F_beta(y) = |y|^2 + 4 - log I0(4 beta |y|) / beta; a discrete
latent's reductions are the min and the log-mean-exp over its labels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.api.free_energy import free_energy
from app.config import BackendChoice, Settings
from app.dispatch.engine import Engine
from app.dispatch.local import LocalDispatcher
from app.errors import InvalidInput
from app.inference.free_energy import latent_values, marginal, minimum, pair_with_latents
from app.registry.loader import LoadedModel, Registry, load_registry
from app.schemas import EnergyRequest
from tests.analytic import publish_circle, publish_labels

POINTS = np.array([[3.0, 0.0], [0.5, -1.0], [0.0, 0.1], [-1.2, 1.6], [2.0, 2.0]])


@pytest.fixture(scope="module")
def latent_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("latent")
    publish_circle(root)
    publish_labels(root)
    return root


def _reduce(model: LoadedModel, **fields: Any) -> dict[str, Any]:
    settings = Settings(models_dir=model.directory.parents[1])

    async def go() -> dict[str, Any]:
        registry = Registry(models={model.name: {model.version: model}})
        dispatcher = LocalDispatcher(Engine(registry, settings))
        try:
            request = EnergyRequest(**fields)
            return await free_energy(None, model.manifest, request, dispatcher, settings)
        finally:
            await dispatcher.close()

    return asyncio.run(go())


@pytest.mark.parametrize("backend", [BackendChoice.ONNX, BackendChoice.TORCH])
def test_circle_min_free_energy_is_the_squared_distance(
    latent_models: Path, backend: BackendChoice
) -> None:
    model = load_registry(Settings(models_dir=latent_models, backend=backend)).get("circle")
    out = _reduce(model, y=POINTS.tolist(), free_energy="min", seed=0)
    radius = np.linalg.norm(POINTS, axis=1)
    np.testing.assert_allclose(out["energy"], (radius - 2) ** 2, atol=1e-3)
    # the arg-min z points the way y does (wrapped to [-pi, pi])
    z = np.array(out["z"])[:, 0]
    far = radius > 0.5
    angle_error = np.angle(np.exp(1j * (z - np.arctan2(POINTS[:, 1], POINTS[:, 0]))))
    np.testing.assert_allclose(angle_error[far], 0, atol=0.05)


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_circle_marginal_free_energy_matches_the_bessel_closed_form(
    latent_models: Path, beta: float
) -> None:
    model = load_registry(Settings(models_dir=latent_models, backend=BackendChoice.ONNX)).get(
        "circle"
    )
    out = _reduce(model, y=POINTS.tolist(), free_energy="marginal", beta=beta, num_samples=512)
    r = np.linalg.norm(POINTS, axis=1)
    # log I0 via numpy's i0 in float64 (4 beta r stays below 60 here, no overflow)
    expected = r**2 + 4 - np.log(np.i0(4 * beta * r)) / beta
    np.testing.assert_allclose(out["energy"], expected, atol=1e-3)
    assert out["num_samples"] == 512
    assert out["beta"] == beta


def test_discrete_latent_reductions_are_min_and_log_mean_exp() -> None:
    rng = np.random.default_rng(0)
    energy = rng.normal(size=(6, 5)).astype(np.float32) * 3
    f, index = minimum(energy)
    np.testing.assert_array_equal(f, energy.min(axis=1))
    np.testing.assert_array_equal(index, energy.argmin(axis=1))
    for beta in (0.1, 1.0, 50.0):
        expected = -np.log(np.mean(np.exp(-beta * energy.astype(np.float64)), axis=1)) / beta
        np.testing.assert_allclose(marginal(energy, beta), expected, rtol=1e-6, atol=1e-6)
    # large beta tends to the minimum, without overflow
    np.testing.assert_allclose(marginal(energy * 1000, 10.0), (energy * 1000).min(1), rtol=1e-3)


def test_latent_values_grid_and_pairing(latent_models: Path) -> None:
    model = load_registry(Settings(models_dir=latent_models, backend=BackendChoice.ONNX)).get(
        "circle"
    )
    grid = latent_values(model.manifest, 4, seed=0)[:, 0]
    np.testing.assert_allclose(grid, np.pi * np.array([-0.75, -0.25, 0.25, 0.75]), atol=1e-6)
    paired = pair_with_latents({"y": POINTS[:2].astype(np.float32)}, grid[:, None])
    assert paired["y"].shape == (8, 2)
    assert paired["z"].shape == (8, 1)
    np.testing.assert_array_equal(paired["y"][3], POINTS[0].astype(np.float32))
    np.testing.assert_array_equal(paired["z"][4:, 0], grid)


def test_free_energy_needs_a_latent_and_no_z(latent_models: Path) -> None:
    registry = load_registry(Settings(models_dir=latent_models, backend=BackendChoice.ONNX))
    with pytest.raises(InvalidInput, match="no latent variable"):
        _reduce(registry.get("labels"), x=[[1.0, 0.0]], y=[[1.0]], free_energy="min")
    circle = registry.get("circle")
    with pytest.raises(InvalidInput, match="omit z"):
        _reduce(circle, y=[[1.0, 0.0]], z=[[0.0]], free_energy="min")
    with pytest.raises(InvalidInput, match="grad"):
        _reduce(circle, y=[[1.0, 0.0]], grad=True, free_energy="marginal")
