"""Every recipe trains for a few steps and its export round-trips through the registry.

The smoke runs go two at a time in worker processes (this machine has two cores; most of a
smoke run is the ONNX export, which is single-threaded).
"""

from __future__ import annotations

import multiprocessing
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from app.cli import load_recipe, recipe_names
from app.config import BackendChoice, Settings
from app.registry.loader import load_registry
from tests.conftest import SHIPPED_MODELS

RECIPES = recipe_names(SHIPPED_MODELS)


def _smoke(name: str, models_dir: str) -> str | None:
    """Run one recipe's smoke mode; returns the traceback if it failed."""
    try:
        metrics = load_recipe(SHIPPED_MODELS, name)(Path(models_dir), smoke=True)
        assert metrics, f"{name} returned no metrics"
    except BaseException:
        return traceback.format_exc()
    return None


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str | None]]:
    root = tmp_path_factory.mktemp("smoke")
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {name: pool.submit(_smoke, name, str(root / name)) for name in RECIPES}
        return {name: (root / name, future.result()) for name, future in futures.items()}


def test_every_shipped_model_has_a_recipe() -> None:
    shipped = {p.parent.parent.name for p in SHIPPED_MODELS.glob("*/[0-9]*/manifest.json")}
    assert "car" in RECIPES
    assert shipped <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_training_publishes_a_servable_model(
    name: str, smoke_runs: dict[str, tuple[Path, str | None]]
) -> None:
    models_dir, failure = smoke_runs[name]
    assert failure is None, failure
    for backend in (BackendChoice.ONNX, BackendChoice.TORCH):
        registry = load_registry(Settings(models_dir=models_dir, backend=backend))
        assert registry.unavailable == []
        model = registry.get(name)
        assert model.backend.name == backend.value
        assert all(max(d.values()) <= 1e-4 for d in model.parity.values())
