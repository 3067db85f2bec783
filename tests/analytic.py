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


class Circle(nn.Module):
    """Unconditional latent energy E(y, z) = ||y - Dec(z)||^2, Dec(z) = r (cos z, sin z)."""

    def __init__(self, radius: float = 2.0) -> None:
        super().__init__()
        self.radius = nn.Parameter(torch.tensor(radius))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.radius * torch.cat([torch.cos(z), torch.sin(z)], dim=-1)

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return ((y - self.decode(z)) ** 2).sum(-1)


class CircleDecoder(nn.Module):
    def __init__(self, circle: Circle) -> None:
        super().__init__()
        self.circle = circle

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.circle.decode(z)


class Labels(nn.Module):
    """A classifier as an energy over a discrete y: E(x, y) = -logit_y, logits = x @ W."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0]]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = x @ self.w
        return -torch.gather(logits, 1, y.long()).squeeze(1)


def publish_circle(models_dir: Path) -> LoadedModel:
    circle = Circle()
    gen = torch.Generator().manual_seed(0)
    return publish(
        circle,
        models_dir=models_dir,
        name="circle",
        version=1,
        y=TensorSpec(shape=[2], low=[-3.0, -3.0], high=[3.0, 3.0]),
        z=TensorSpec(shape=[1], low=[-np.pi], high=[np.pi], prior="uniform"),
        probe_inputs={"y": torch.randn(4, 2, generator=gen), "z": torch.rand(4, 1, generator=gen)},
        decoder=CircleDecoder(circle),
        card=Card(task="analytic circle", method="closed form"),
        training=Training(recipe="tests/analytic.py", seed=0, method="none", data="none"),
        metrics={"radius": 2.0},
    )


def publish_labels(models_dir: Path) -> LoadedModel:
    gen = torch.Generator().manual_seed(0)
    return publish(
        Labels(),
        models_dir=models_dir,
        name="labels",
        version=1,
        x=TensorSpec(shape=[2]),
        y=TensorSpec(shape=[1], kind="discrete", num_classes=3),
        probe_inputs={
            "x": torch.randn(4, 2, generator=gen),
            "y": torch.tensor([[0.0], [1.0], [2.0], [1.0]]),
        },
        card=Card(task="analytic classifier", method="closed form"),
        training=Training(recipe="tests/analytic.py", seed=0, method="none", data="none"),
        metrics={"classes": 3},
    )
