"""Tiny analytic energies with known values, minima and gradients, for exact checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.registry.loader import LoadedModel
from app.registry.manifest import Batching, Card, TensorSpec, Training
from app.training.publish import publish

QUAD_W = np.array([[1.0, 0.5], [-0.5, 2.0]], dtype=np.float32)
QUAD_C = np.array([0.25, -1.0], dtype=np.float32)


class Quadratic(nn.Module):
    """E(x, y) = ||y - (W x + c)||^2: minimum 0 at y* = W x + c, gradient 2 (y - y*)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.from_numpy(QUAD_W.copy()))
        self.c = nn.Parameter(torch.from_numpy(QUAD_C.copy()))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        target = x @ self.w.T + self.c
        return ((y - target) ** 2).sum(-1)


def quad_minimum(x: np.ndarray) -> np.ndarray:
    return x @ QUAD_W.T + QUAD_C


def quad_energy(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return ((y - quad_minimum(x)) ** 2).sum(-1)


def quad_grad(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 2 * (y - quad_minimum(x))


def publish_quadratic(models_dir: Path, version: int = 1, max_rows: int = 64) -> LoadedModel:
    gen = torch.Generator().manual_seed(version)
    return publish(
        Quadratic(),
        models_dir=models_dir,
        name="quad",
        version=version,
        x=TensorSpec(shape=[2], names=["a", "b"]),
        y=TensorSpec(shape=[2], low=[-10.0, -10.0], high=[10.0, 10.0]),
        probe_inputs={"x": torch.randn(4, 2, generator=gen), "y": torch.randn(4, 2, generator=gen)},
        card=Card(task="analytic quadratic", method="closed form"),
        training=Training(recipe="tests/analytic.py", seed=version, method="none", data="none"),
        metrics={"minimum": 0.0},
        description="E = ||y - (W x + c)||^2",
        batching=Batching(max_batch_size=256, max_delay_ms=2.0, max_rows_per_request=max_rows),
    )
