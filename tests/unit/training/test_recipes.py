"""Every recipe trains for a few steps and its export round-trips through the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.cli import load_recipe, recipe_names
from app.config import BackendChoice, Settings
from app.registry.loader import load_registry
from tests.conftest import SHIPPED_MODELS

RECIPES = recipe_names(SHIPPED_MODELS)


def test_every_shipped_model_has_a_recipe() -> None:
    assert "car" in RECIPES


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_training_publishes_a_servable_model(name: str, tmp_path: Path) -> None:
    metrics = load_recipe(SHIPPED_MODELS, name)(tmp_path, smoke=True)
    assert metrics
    for backend in (BackendChoice.ONNX, BackendChoice.TORCH):
        registry = load_registry(Settings(models_dir=tmp_path, backend=backend))
        assert registry.unavailable == []
        model = registry.get(name)
        assert model.backend.name == backend.value
        assert all(max(d.values()) <= 1e-4 for d in model.parity.values())
