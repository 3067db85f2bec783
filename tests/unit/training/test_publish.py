"""The shared export tooling on latent (decoder) and discrete-label energies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from app.config import BackendChoice, Settings
from app.registry.loader import load_registry
from tests.analytic import publish_circle, publish_labels


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("latent-models")
    publish_circle(root)
    publish_labels(root)
    return root


@pytest.mark.parametrize("backend", [BackendChoice.ONNX, BackendChoice.TORCH])
def test_latent_model_decodes_and_differentiates_y_and_z(
    models: Path, backend: BackendChoice
) -> None:
    registry = load_registry(Settings(models_dir=models, backend=backend))
    assert registry.unavailable == []
    model = registry.get("circle")
    assert model.manifest.input_names == ["y", "z"]
    assert model.manifest.grad_names == ["y", "z"]
    assert "decoded" in next(iter(model.parity.values()))
    z = np.array([[0.0], [np.pi / 2]], dtype=np.float32)
    np.testing.assert_allclose(model.backend.decode({"z": z}), [[2, 0], [0, 2]], atol=1e-6)
    y = np.array([[3.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    out = model.backend.energy({"y": y, "z": z}, grad=True)
    np.testing.assert_allclose(out.energy, [1.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(out.grads["y"], [[2.0, 0.0], [0.0, -4.0]], atol=1e-5)
    # dE/dz = -2 (y - Dec z) . dDec/dz; at z=0, y=(3,0): dDec/dz=(0,2) -> 0
    np.testing.assert_allclose(out.grads["z"][0], [0.0], atol=1e-5)


@pytest.mark.parametrize("backend", [BackendChoice.ONNX, BackendChoice.TORCH])
def test_discrete_label_energy_has_no_gradient_graph(models: Path, backend: BackendChoice) -> None:
    model = load_registry(Settings(models_dir=models, backend=backend)).get("labels")
    assert model.manifest.grad_names == []
    assert model.manifest.artifacts.score_onnx is None
    x = np.array([[1.0, 1.0]], dtype=np.float32).repeat(3, 0)
    y = np.array([[0.0], [1.0], [2.0]], dtype=np.float32)
    out = model.backend.energy({"x": x, "y": y}, grad=True)
    np.testing.assert_allclose(out.energy, [-1.0, -1.0, 0.5], atol=1e-6)
    assert out.grads == {}


def test_score_graph_is_the_forward_half_of_the_gradient_graph(models: Path) -> None:
    """score.onnx is cut out of energy.onnx: no backward nodes left, the same energies."""
    version = models / "circle" / "1"
    full, score = onnx.load(version / "energy.onnx"), onnx.load(version / "score.onnx")
    assert [o.name for o in full.graph.output] == ["energy", "grad_y", "grad_z"]
    assert [o.name for o in score.graph.output] == ["energy"]
    assert len(score.graph.node) < len(full.graph.node)
    rng = np.random.default_rng(0)
    feed = {
        "y": rng.normal(size=(13, 2)).astype(np.float32),
        "z": rng.normal(size=(13, 1)).astype(np.float32),
    }
    (from_full,) = ort.InferenceSession(version / "energy.onnx").run(["energy"], feed)
    (from_score,) = ort.InferenceSession(version / "score.onnx").run(None, feed)
    np.testing.assert_array_equal(from_score, from_full)
