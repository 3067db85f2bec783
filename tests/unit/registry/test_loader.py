"""Discovery, hash and parity checks: a bad version is listed with its reason, others serve."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.config import BackendChoice, Settings
from app.errors import BackendError, ModelNotFound, ModelUnavailable, VersionNotFound
from app.registry.loader import load_registry, load_version
from app.registry.parity import relative_difference


@pytest.fixture
def repo(analytic_models: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(analytic_models, root)
    return root


def test_loads_every_version_with_parity_on_both_backends(repo: Path) -> None:
    registry = load_registry(Settings(models_dir=repo, cross_check=True))
    assert registry.unavailable == []
    assert sorted(registry.versions("quad")) == [1, 2]
    model = registry.get("quad")
    assert model.version == 2  # newest by default
    assert set(model.parity) == {"onnx_vs_probe", "onnx_vs_torch"}
    for diffs in model.parity.values():
        assert max(diffs.values()) <= 1e-4


def test_torch_backend_can_be_chosen(repo: Path) -> None:
    settings = Settings(models_dir=repo, backend=BackendChoice.TORCH, cross_check=True)
    model = load_registry(settings).get("quad", 1)
    assert model.backend.name == "torch"
    assert set(model.parity) == {"torch_vs_probe", "torch_vs_onnx"}


def test_without_cross_check_only_the_serving_backend_loads(repo: Path) -> None:
    model = load_registry(Settings(models_dir=repo, backend=BackendChoice.ONNX)).get("quad", 1)
    assert set(model.parity) == {"onnx_vs_probe"}


def test_tampered_artifact_marks_only_that_version_unavailable(repo: Path) -> None:
    artifact = repo / "quad" / "1" / "energy.onnx"
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    registry = load_registry(Settings(models_dir=repo))
    assert sorted(registry.versions("quad")) == [2]
    (problem,) = registry.unavailable
    assert (problem.name, problem.version) == ("quad", 1)
    assert "energy.onnx has sha256" in problem.reason
    with pytest.raises(ModelUnavailable, match="version 1 is unavailable"):
        registry.get("quad", 1)
    assert registry.get("quad").version == 2


def test_wrong_probe_fails_parity(repo: Path) -> None:
    path = repo / "quad" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["probe"]["energy"][0] += 1.0
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackendError, match="vs export-time probe: energy differs"):
        load_version(repo / "quad" / "1", Settings(models_dir=repo))


def test_missing_artifact_and_misplaced_manifest(repo: Path) -> None:
    (repo / "quad" / "1" / "energy.pt2").unlink()
    shutil.copytree(repo / "quad" / "2", repo / "quad" / "7")
    registry = load_registry(Settings(models_dir=repo))
    reasons = {u.version: u.reason for u in registry.unavailable}
    assert "energy_pt2 file energy.pt2 is missing" in reasons[1]
    assert "manifest says quad/2 but lives in quad/7" in reasons[7]


def test_backend_that_cannot_run_is_reported(repo: Path) -> None:
    path = repo / "quad" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["artifacts"]["energy_onnx"]
    del manifest["artifacts"]["score_onnx"]
    path.write_text(json.dumps(manifest))
    registry = load_registry(Settings(models_dir=repo, backend=BackendChoice.ONNX))
    (problem,) = registry.unavailable
    assert "EBM_BACKEND=onnx cannot run it" in problem.reason
    assert "usable here: torch" in problem.reason


def test_untrained_recipe_is_listed(repo: Path) -> None:
    (repo / "fresh").mkdir()
    (repo / "fresh" / "train.py").write_text("")
    registry = load_registry(Settings(models_dir=repo))
    assert "fresh" in registry.names()
    with pytest.raises(ModelUnavailable, match="not trained yet"):
        registry.get("fresh")


def test_lookup_errors_say_what_exists(repo: Path) -> None:
    registry = load_registry(Settings(models_dir=repo))
    with pytest.raises(ModelNotFound, match="models: quad"):
        registry.get("nope")
    with pytest.raises(VersionNotFound, match="available versions: 1, 2"):
        registry.get("quad", 9)


def test_missing_models_dir_serves_nothing(tmp_path: Path) -> None:
    assert load_registry(Settings(models_dir=tmp_path / "absent")).names() == []


def test_relative_difference_is_scaled_by_the_tensor() -> None:
    expected = np.array([100.0, 1e-6], dtype=np.float32)
    assert relative_difference(expected + np.float32(1e-3), expected) == pytest.approx(
        1e-5, rel=0.01
    )
    assert relative_difference(expected[:1], expected) == float("inf")
