"""The committed artifacts: every shipped model loads on both backends, in parity."""

from __future__ import annotations

import pytest

from app.config import BackendChoice, Settings
from app.registry.loader import load_registry
from tests.conftest import SHIPPED_MODELS


@pytest.mark.parametrize("backend", [BackendChoice.ONNX, BackendChoice.TORCH])
def test_shipped_models_load_with_parity(backend: BackendChoice) -> None:
    registry = load_registry(Settings(models_dir=SHIPPED_MODELS, backend=backend, cross_check=True))
    assert registry.unavailable == []
    assert "car" in registry.models
    for versions in registry.models.values():
        for model in versions.values():
            other = "torch" if backend == BackendChoice.ONNX else "onnx"
            assert set(model.parity) == {f"{backend.value}_vs_probe", f"{backend.value}_vs_{other}"}
            for diffs in model.parity.values():
                assert max(diffs.values()) <= 1e-4, (model.name, diffs)
            assert model.manifest.metrics, f"{model.name} states no measured quality"
