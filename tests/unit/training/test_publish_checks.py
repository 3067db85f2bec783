"""Publishing refuses a recipe's mistakes early and plainly, and leaves nothing behind
(issue 9: a bad name failed only after every export, leaving a staging folder; a [B, 1]
energy failed with "7 validation errors for Probe")."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from app.config import Settings
from app.registry.loader import load_registry
from app.registry.manifest import Card, TensorSpec, Training
from app.training.publish import publish


class Column(nn.Module):
    """E = sum of squares, kept as a column [B, 1]: a recipe's typical slip."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y**2).sum(-1, keepdim=True)


class Scalar(nn.Module):
    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y**2).sum(-1)


def _publish(models_dir: Path, module: nn.Module, name: str = "ok", rows: int = 3) -> Any:
    return publish(
        module,
        models_dir=models_dir,
        name=name,
        version=1,
        y=TensorSpec(shape=[2]),
        probe_inputs={"y": torch.ones(rows, 2)},
        card=Card(task="t", method="m"),
        training=Training(recipe="r", seed=0, method="none", data="none"),
        metrics={},
    )


@pytest.mark.parametrize(
    ("module", "name", "rows", "match"),
    [
        (Scalar(), "Bad Name", 3, "must match"),
        (Column(), "column", 3, r"shape \[B\].*\[3, 1\]"),
        (Scalar(), "one-row", 1, "at least 2"),
    ],
)
def test_a_recipe_mistake_is_refused_before_any_export(
    tmp_path: Path, module: nn.Module, name: str, rows: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        _publish(tmp_path, module, name, rows)
    assert list(tmp_path.rglob("*")) == []  # no staging folder, no artifact


def test_the_registry_says_which_folders_it_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "Not A Model").mkdir()
    (tmp_path / ".hidden").mkdir()
    with caplog.at_level(logging.WARNING, logger="ebm.registry"):
        load_registry(Settings(models_dir=tmp_path))
    skipped = [r.getMessage() for r in caplog.records if "skipping folder" in r.getMessage()]
    assert len(skipped) == 1
    assert "Not A Model" in skipped[0]
