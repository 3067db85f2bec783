"""Whatever is wrong with one version on disk marks only that version unavailable, with
the reason; nothing a models directory holds can crash the load or reach outside it."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from app.config import BackendChoice, Settings
from app.registry.hashing import sha256_of
from app.registry.loader import load_registry


@pytest.fixture
def repo(analytic_models: Path, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(analytic_models, root)
    return root


def _edit_manifest(version_dir: Path, change: Any) -> None:
    path = version_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _only_version_1_unavailable(repo: Path, says: str, **settings: Any) -> None:
    registry = load_registry(Settings(models_dir=repo, **settings))
    assert sorted(registry.versions("quad")) == [2]
    (problem,) = registry.unavailable
    assert (problem.name, problem.version) == ("quad", 1)
    assert says in problem.reason


def test_a_corrupt_onnx_file_with_a_matching_hash(repo: Path) -> None:
    """The hash matches (the manifest was written for the corrupt file): onnxruntime
    itself refuses the file. That error was not an EBMError and aborted the whole load."""
    version = repo / "quad" / "1"
    (version / "energy.onnx").write_bytes(b"not an onnx model")
    _edit_manifest(
        version,
        lambda m: m["artifacts"]["energy_onnx"].update(sha256=sha256_of(version / "energy.onnx")),
    )
    _only_version_1_unavailable(repo, "energy.onnx", backend=BackendChoice.ONNX)


def test_a_manifest_whose_shapes_do_not_fit_the_artifact(repo: Path) -> None:
    """y declared [3] for a graph taking [2]: the probe itself is refused by the runtime."""

    def widen(m: dict[str, Any]) -> None:
        m["y"]["shape"] = [3]
        for key in ("low", "high", "names"):
            m["y"].pop(key, None)
        m["probe"]["inputs"]["y"] = [[*row, 0.0] for row in m["probe"]["inputs"]["y"]]
        m["probe"]["grads"]["y"] = [[*row, 0.0] for row in m["probe"]["grads"]["y"]]

    _edit_manifest(repo / "quad" / "1", widen)
    _only_version_1_unavailable(repo, "failed to load: InvalidArgument", backend=BackendChoice.ONNX)


def test_an_artifact_name_cannot_leave_the_version_folder(repo: Path) -> None:
    _edit_manifest(repo / "quad" / "1", lambda m: m["artifacts"]["energy_onnx"].update(file=".."))
    _only_version_1_unavailable(repo, "artifacts.energy_onnx.file: String should match pattern")


def test_a_version_folder_that_is_not_a_plain_number_is_skipped_and_logged(
    repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for odd in ("\u0663", "01", "0"):  # an Arabic-Indic three, a leading zero, zero
        shutil.copytree(repo / "quad" / "1", repo / "quad" / odd)
    with caplog.at_level(logging.WARNING, logger="ebm.registry"):
        registry = load_registry(Settings(models_dir=repo))
    assert sorted(registry.versions("quad")) == [1, 2]
    assert registry.unavailable == []
    skipped = [r.getMessage() for r in caplog.records if "skipping folder" in r.getMessage()]
    assert len(skipped) == 3
