"""Both backends on the analytic quadratic: exact energies and gradients, any batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.config import BackendChoice, Settings
from app.registry.loader import load_version
from tests.analytic import quad_energy, quad_grad


@pytest.mark.parametrize("backend", [BackendChoice.ONNX, BackendChoice.TORCH])
@pytest.mark.parametrize("rows", [1, 7, 64, 513])
def test_backend_matches_closed_form(
    analytic_models: Path, backend: BackendChoice, rows: int
) -> None:
    model = load_version(analytic_models / "quad" / "1", Settings(backend=backend))
    assert model.backend.name == backend.value
    rng = np.random.default_rng(rows)
    x = rng.normal(size=(rows, 2)).astype(np.float32)
    y = rng.normal(size=(rows, 2)).astype(np.float32)

    scored = model.backend.energy({"x": x, "y": y}, grad=False)
    assert scored.grads == {}
    np.testing.assert_allclose(scored.energy, quad_energy(x, y), rtol=1e-5, atol=1e-5)

    with_grad = model.backend.energy({"x": x, "y": y}, grad=True)
    np.testing.assert_allclose(with_grad.energy, quad_energy(x, y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(with_grad.grads["y"], quad_grad(x, y), rtol=1e-5, atol=1e-5)
    assert with_grad.energy.dtype == np.float32
    assert with_grad.grads["y"].shape == (rows, 2)


def test_rows_do_not_depend_on_batch_composition(analytic_models: Path) -> None:
    """The same row gives the same bits alone or inside a larger batch (onnxruntime, CPU)."""
    model = load_version(analytic_models / "quad" / "1", Settings(backend=BackendChoice.ONNX))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2)).astype(np.float32)
    y = rng.normal(size=(64, 2)).astype(np.float32)
    batch = model.backend.energy({"x": x, "y": y}, grad=True)
    alone = model.backend.energy({"x": x[5:6], "y": y[5:6]}, grad=True)
    assert batch.energy[5] == alone.energy[0]
    assert (batch.grads["y"][5] == alone.grads["y"][0]).all()
