from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.errors import ManifestError
from app.registry.manifest import read_manifest


def _manifest(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "m",
        "version": 1,
        "x": {"shape": [3]},
        "y": {"shape": [2], "low": [-1, -1], "high": [1, 1], "names": ["a", "b"]},
        "artifacts": {"energy_onnx": {"file": "energy.onnx", "sha256": "a" * 64}},
        "training": {"recipe": "r", "seed": 0, "method": "m", "data": "d"},
        "card": {"task": "t", "method": "m"},
    }
    return base | overrides


def _write(tmp_path: Path, content: dict[str, Any]) -> Path:
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(content))
    return path


def test_valid_manifest_reads_with_defaults(tmp_path: Path) -> None:
    manifest = read_manifest(_write(tmp_path, _manifest()))
    assert manifest.input_names == ["x", "y"]
    assert manifest.grad_names == ["y"]
    assert manifest.batching.max_batch_size == 256
    assert manifest.y.size == 2


def test_unconditional_latent_model_inputs(tmp_path: Path) -> None:
    content = _manifest(z={"shape": [1], "prior": "normal"})
    del content["x"]
    manifest = read_manifest(_write(tmp_path, content))
    assert manifest.input_names == ["y", "z"]
    assert manifest.grad_names == ["y", "z"]


def test_discrete_y_has_no_gradient(tmp_path: Path) -> None:
    content = _manifest(y={"shape": [1], "kind": "discrete", "num_classes": 10})
    assert read_manifest(_write(tmp_path, content)).grad_names == []


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ({"y": {"shape": [2], "low": [0.0]}}, "low has 1 entries; shape [2] has 2"),
        ({"y": {"shape": [1], "low": [1.0], "high": [0.0]}}, "low bound must be below"),
        ({"y": {"shape": [1], "kind": "discrete"}}, "discrete input needs num_classes"),
        ({"y": {"shape": [0]}}, "dimension below 1"),
        ({"artifacts": {}}, "needs energy_onnx or energy_pt2"),
        ({"artifacts": {"energy_onnx": {"file": "../x", "sha256": "a" * 64}}}, "file"),
        ({"artifacts": {"energy_onnx": {"file": "e.onnx", "sha256": "xyz"}}}, "sha256"),
        ({"name": "Bad Name"}, "name"),
        ({"version": 0}, "version"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_invalid_manifest_names_the_problem(
    tmp_path: Path, override: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ManifestError) as info:
        read_manifest(_write(tmp_path, _manifest(**override)))
    assert fragment in info.value.message
    assert str(tmp_path) in info.value.message


def test_unreadable_and_non_json_manifests(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        read_manifest(tmp_path / "missing.json")
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(ManifestError, match="not a valid manifest"):
        read_manifest(bad)
