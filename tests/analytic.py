"""Tiny analytic energies with known values, minima and gradients, for exact checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from app.registry.loader import LoadedModel
from app.registry.manifest import Batching, Card, InferenceDefaults, TensorSpec, Training
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


# --- energies with known minima, for the search tests ------------------------------------
PLANE = TensorSpec(shape=[2], low=[-3.0, -3.0], high=[3.0, 3.0])


class DoubleWell(nn.Module):
    """E(x, y) = ((y0 - x0)^2 - 1)^2 + y1^2: two minima, y = (x0 - 1, 0) and (x0 + 1, 0)."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((y[:, 0] - x[:, 0]) ** 2 - 1) ** 2 + y[:, 1] ** 2


def double_well_minima(x0: float) -> np.ndarray:
    return np.array([[x0 - 1, 0.0], [x0 + 1, 0.0]])


RING_CENTRES = 2.0 * np.stack(
    [np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1
)
GAUSSIAN_SIGMA = 0.3


class EightGaussians(nn.Module):
    """E(y) = -log sum_k exp(-||y - mu_k||^2 / (2 sigma^2)): 8 minima at the centres mu_k
    (2 apart from 0, sigma 0.3: the neighbours' pull moves a minimum by under 1e-5)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(RING_CENTRES, dtype=torch.float32))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        d2 = ((y[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return -torch.logsumexp(-d2 / (2 * GAUSSIAN_SIGMA**2), dim=1)


RING_RADIUS = 1.5


class Ring(nn.Module):
    """E(y) = (||y|| - 1.5)^2: a continuum of minima, the circle of radius 1.5."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (torch.sqrt((y**2).sum(-1) + 1e-12) - RING_RADIUS) ** 2


def _publish_analytic(
    models_dir: Path,
    name: str,
    module: nn.Module,
    probe: dict[str, torch.Tensor],
    x: TensorSpec | None = None,
    **extra: Any,
) -> LoadedModel:
    return publish(
        module,
        models_dir=models_dir,
        name=name,
        version=1,
        x=x,
        y=PLANE,
        probe_inputs=probe,
        card=Card(task=f"analytic {name}", method="closed form"),
        training=Training(recipe="tests/analytic.py", seed=0, method="none", data="none"),
        metrics={},
        **extra,
    )


def publish_search_models(models_dir: Path) -> None:
    """The double well (conditional), the 8 Gaussians and the ring (unconditional)."""
    gen = torch.Generator().manual_seed(0)

    def points(n: int) -> torch.Tensor:
        return 3 * torch.rand(n, 2, generator=gen) * 2 - 3

    _publish_analytic(
        models_dir,
        "double-well",
        DoubleWell(),
        {"x": torch.rand(4, 1, generator=gen) * 2 - 1, "y": points(4)},
        x=TensorSpec(shape=[1], low=[-1.0], high=[1.0]),
        inference=InferenceDefaults(k=2, merge_radius=0.5, step_size=0.1),
    )
    _publish_analytic(
        models_dir,
        "eight-gaussians",
        EightGaussians(),
        {"y": points(4)},
        inference=InferenceDefaults(k=8, merge_radius=0.5, step_size=0.1),
    )
    _publish_analytic(
        models_dir,
        "ring",
        Ring(),
        {"y": points(4)},
        inference=InferenceDefaults(k=16, merge_radius=0.3, step_size=0.1),
    )
