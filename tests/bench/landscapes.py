"""Analytic energies with known minima that nobody tuned the searches for (issue 10).

Each landscape is a small torch module plus its true minima; ``publish_landscape`` exports
it with the same helper as tests/analytic.py, and its manifest states only the bounds and
``k`` (the number of true modes), as a user publishing the energy would: every other search
setting is the service's default.

Classes:

- ``widths``: four equal-depth Gaussian wells, stds 0.05 and 1.0 (20x), in [-3, 3]^2, and
  ``widths3d`` the same in 3-D (the narrow basins hold a far smaller share of the box);
- ``depths``: five Gaussian wells of depths 1, 1.5, 2, 3, 5 (5x) on a weak quadratic bowl
  (so no start sits on a flat plateau); every well is a local minimum and a mode;
  ``depths-x100`` the same in energy units 100x larger; ``depths5d`` six such wells in 5-D;
- ``bounds``: four wells whose minima lie on the box: two centred exactly on a corner or an
  edge, two centred outside the box (their constrained minimum is the projection);
- ``gauss3d`` / ``gauss6d``: 5 wells in [-3, 3]^3 and 6 wells in [-3, 3]^6;
- ``ring3d``: a continuum, the circle of radius 1.5 in the plane y2 = 0 of [-3, 3]^3;
- ``moving``: conditional, three wells whose centres move with x0 in [-1, 1];
- the project's own search energies (``existing``): the double well, eight Gaussians and
  the 2-D ring of tests/analytic.py, with the manifests their tests use.

Minima that are not exactly a well's centre (overlapping tails, the bowl) are found by a
float64 L-BFGS from the nominal centre; ``bounds`` minima are analytic.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.registry.loader import LoadedModel
from app.registry.manifest import Card, InferenceDefaults, TensorSpec, Training
from app.training.publish import publish
from tests.analytic import (
    GAUSSIAN_SIGMA,
    RING_CENTRES,
    RING_RADIUS,
    DoubleWell,
    EightGaussians,
    Ring,
    double_well_minima,
    publish_search_models,
)

BOX = 3.0  # every y lies in [-BOX, BOX]^D
PROBE_ROWS = 7  # differs from every per-row dimension and every well count
TOL_SHARE = 0.05  # a mode is found within 5% of the box width (capped by the well's std)


def box(dim: int) -> TensorSpec:
    return TensorSpec(shape=[dim], low=[-BOX] * dim, high=[BOX] * dim)


class Wells(nn.Module):
    """E(y) = -log sum_k exp(b_k - ||y - mu_k||^2 / (2 s_k^2)): wells of std s_k; every well's
    energy at its centre is -b_k (when the others' tails are negligible there)."""

    centres: torch.Tensor
    inv_var: torch.Tensor
    offsets: torch.Tensor

    def __init__(self, centres: np.ndarray, stds: np.ndarray, offsets: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres, dtype=torch.float32))
        self.register_buffer("inv_var", torch.tensor(1 / (2 * stds**2), dtype=torch.float32))
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.float32))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        d2 = ((y[:, None, :] - self.centres[None]) ** 2).sum(-1)
        return -torch.logsumexp(self.offsets - d2 * self.inv_var, dim=1)


class DepthWells(nn.Module):
    """E(y) = -sum_k D_k exp(-||y - mu_k||^2 / (2 s^2)) + c ||y||^2: wells of depth D_k."""

    centres: torch.Tensor
    depths: torch.Tensor

    def __init__(self, centres: np.ndarray, depths: np.ndarray, std: float, bowl: float) -> None:
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres, dtype=torch.float32))
        self.register_buffer("depths", torch.tensor(depths, dtype=torch.float32))
        self.inv_var = 1 / (2 * std**2)
        self.bowl = bowl

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        d2 = ((y[:, None, :] - self.centres[None]) ** 2).sum(-1)
        wells = (self.depths * torch.exp(-d2 * self.inv_var)).sum(-1)
        return -wells + self.bowl * (y**2).sum(-1)


class MovingWells(nn.Module):
    """E(x, y) = -log sum_k exp(-||y - mu_k(x)||^2 / (2 s^2)), with mu(x) = (x0 + 1, x0),
    (x0 - 1, -x0) and (-x0, 2): pairwise at least sqrt(5) apart for x0 in [-1, 1]."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.inv_var = 1 / (2 * std**2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x0 = x[:, 0]
        mu = torch.stack(
            [
                torch.stack([x0 + 1, x0], -1),
                torch.stack([x0 - 1, -x0], -1),
                torch.stack([-x0, torch.full_like(x0, 2.0)], -1),
            ],
            dim=1,
        )  # [N, 3, 2]
        d2 = ((y[:, None, :] - mu) ** 2).sum(-1)
        return -torch.logsumexp(-d2 * self.inv_var, dim=1)


def moving_centres(x0: float) -> np.ndarray:
    return np.array([[x0 + 1, x0], [x0 - 1, -x0], [-x0, 2.0]])


RING3D_RADIUS = 1.5


class Ring3d(nn.Module):
    """E(y) = (sqrt(y0^2 + y1^2) - 1.5)^2 + y2^2: minima on a circle of radius 1.5."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        r = torch.sqrt(y[:, 0] ** 2 + y[:, 1] ** 2 + 1e-12)
        return (r - RING3D_RADIUS) ** 2 + y[:, 2] ** 2


def refine(
    module: nn.Module, guesses: np.ndarray, x: np.ndarray | None = None, lo: float = -BOX
) -> np.ndarray:
    """The local minima nearest ``guesses`` (float64 L-BFGS on a float64 copy), in the box."""
    energy = copy.deepcopy(module).double()
    found = []
    for guess in guesses:
        y = torch.tensor(guess[None], dtype=torch.float64, requires_grad=True)
        xt = None if x is None else torch.tensor(x[None], dtype=torch.float64)
        opt = torch.optim.LBFGS(
            [y],
            lr=1.0,
            max_iter=500,
            tolerance_grad=1e-12,
            tolerance_change=1e-15,
            line_search_fn="strong_wolfe",
        )

        def closure(
            y: torch.Tensor = y,
            xt: torch.Tensor | None = xt,
            opt: torch.optim.Optimizer = opt,
        ) -> torch.Tensor:
            opt.zero_grad()
            e: torch.Tensor = (energy(y) if xt is None else energy(xt, y)).sum()
            e.backward()  # type: ignore[no-untyped-call]
            return e

        opt.step(closure)  # type: ignore[no-untyped-call]
        found.append(np.clip(y.detach().numpy()[0], lo, -lo))
    return np.array(found)


@dataclass
class Landscape:
    name: str
    description: str
    module: nn.Module
    dim: int
    k: int
    #: true minima [K, D] for one x (None for an unconditional energy)
    minima: Callable[[np.ndarray | None], np.ndarray]
    tols: np.ndarray  # [K] hit radius of each true mode
    x_dim: int | None = None
    xs: np.ndarray | None = None  # the x rows the benchmark asks about [N, x_dim]
    ring_radius: float | None = None  # a continuum: the circle y0^2 + y1^2 = r^2 (rest 0)
    tol: float = 0.0  # the continuum's hit radius
    #: an existing energy publishes itself, with the manifest its tests use
    publisher: Callable[[Path], None] | None = None

    def publish(self, models_dir: Path) -> LoadedModel | None:
        if self.publisher is not None:
            self.publisher(models_dir)
            return None
        gen = torch.Generator().manual_seed(0)
        probe = {}
        x_spec = None
        if self.x_dim is not None:
            x_spec = TensorSpec(
                shape=[self.x_dim], low=[-1.0] * self.x_dim, high=[1.0] * self.x_dim
            )
            probe["x"] = torch.rand(PROBE_ROWS, self.x_dim, generator=gen) * 2 - 1
        probe["y"] = (torch.rand(PROBE_ROWS, self.dim, generator=gen) * 2 - 1) * BOX
        return publish(
            self.module,
            models_dir=models_dir,
            name=self.name,
            version=1,
            x=x_spec,
            y=box(self.dim),
            probe_inputs=probe,
            card=Card(task=f"mode-recovery landscape {self.name}", method="closed form"),
            training=Training(
                recipe="tests/bench/landscapes.py", seed=0, method="none", data="none"
            ),
            metrics={},
            description=self.description,
            inference=InferenceDefaults(k=self.k),  # bounds and k only: nothing tuned
        )


def well_tols(stds: np.ndarray) -> np.ndarray:
    """Within the well (one std: its energy is within 0.5 of the minimum there), and within
    5% of the box width: a wide well's centre still has to be found to 0.3."""
    return np.asarray(np.minimum(round(TOL_SHARE * 2 * BOX, 6), stds), dtype=np.float64)


def _fixed(points: np.ndarray) -> Callable[[np.ndarray | None], np.ndarray]:
    return lambda _x: points


def _gaussian_wells(
    name: str, description: str, centres: np.ndarray, stds: np.ndarray
) -> Landscape:
    """Equal-depth Gaussian wells (``Wells``), their minima refined from the centres."""
    module = Wells(centres, stds, np.zeros(len(centres)))
    minima = _fixed(refine(module, centres))
    return Landscape(
        name, description, module, centres.shape[1], len(centres), minima, well_tols(stds)
    )


def widths() -> Landscape:
    return _gaussian_wells(
        "widths",
        "four equal-depth Gaussian wells, stds 0.05 and 1.0",
        np.array([[-1.5, 1.5], [1.5, 1.5], [1.5, -1.5], [-1.5, -1.5]]),
        np.array([0.05, 1.0, 0.05, 1.0]),
    )


def depths() -> Landscape:
    centres = np.array([[-1.8, -1.8], [1.8, -1.8], [0.0, 0.0], [-1.8, 1.8], [1.8, 1.8]])
    depth = np.array([5.0, 3.0, 2.0, 1.5, 1.0])
    module = DepthWells(centres, depth, 0.5, 0.02)
    return Landscape(
        "depths",
        "five Gaussian wells (std 0.5) of depths 5, 3, 2, 1.5, 1 on a bowl 0.02 |y|^2",
        module,
        2,
        5,
        _fixed(refine(module, centres)),
        well_tols(np.full(5, 0.5)),
    )


def bounds() -> Landscape:
    centres = np.array([[-3.0, -3.0], [3.4, -3.4], [0.0, 3.0], [-3.4, 1.0]])
    stds = np.full(4, 0.5)
    return Landscape(
        "bounds",
        "four wells (std 0.5) centred on a corner, an edge, and outside a corner and an edge",
        Wells(centres, stds, np.zeros(4)),
        2,
        4,
        _fixed(np.clip(centres, -BOX, BOX)),  # the projection onto the box: analytic
        well_tols(stds),
    )


def gauss(dim: int) -> Landscape:
    if dim == 3:
        centres = np.array(
            [[1.5, 1.5, 1.5], [-1.5, -1.5, 1.5], [1.5, -1.5, -1.5], [-1.5, 1.5, -1.5], [0, 0, 0]]
        )
    else:  # vertices of [-1.2, 1.2]^6, pairwise at least 2 coordinates apart
        signs = np.array(
            [
                [1, 1, 1, 1, 1, 1],
                [-1, -1, 1, 1, -1, 1],
                [1, -1, -1, 1, 1, -1],
                [-1, 1, -1, -1, 1, 1],
                [1, 1, -1, -1, -1, -1],
                [-1, -1, 1, -1, 1, -1],
            ]
        )
        centres = 1.2 * signs
    centres = centres.astype(np.float64)
    count = len(centres)
    description = f"{count} Gaussian wells (std 0.3) in [-3, 3]^{dim}"
    return _gaussian_wells(f"gauss{dim}d", description, centres, np.full(count, 0.3))


class Scaled(nn.Module):
    """``factor`` x an energy: the same landscape in other energy units."""

    def __init__(self, inner: nn.Module, factor: float) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.factor * self.inner(y)


def widths3d() -> Landscape:
    return _gaussian_wells(
        "widths3d",
        "four equal-depth Gaussian wells in 3-D, stds 0.05 and 1.0",
        np.array([[-1.5, -1.5, 0.0], [1.5, 1.5, 1.0], [1.5, -1.5, -1.5], [-1.5, 1.5, 1.5]]),
        np.array([0.05, 1.0, 0.05, 1.0]),
    )


def depths_x100() -> Landscape:
    """``depths`` in energy units 100x larger: every default must be scale-free."""
    centres = np.array([[-1.8, -1.8], [1.8, -1.8], [0.0, 0.0], [-1.8, 1.8], [1.8, 1.8]])
    module = Scaled(DepthWells(centres, np.array([5.0, 3.0, 2.0, 1.5, 1.0]), 0.5, 0.02), 100.0)
    return Landscape(
        "depths-x100",
        "the five unequal wells of `depths`, energy x100",
        module,
        2,
        5,
        _fixed(refine(module, centres)),
        well_tols(np.full(5, 0.5)),
    )


def depths5d() -> Landscape:
    centres = 1.3 * np.array(
        [
            [1, 1, 1, 1, 1],
            [-1, -1, 1, -1, 1],
            [1, -1, -1, 1, -1],
            [-1, 1, -1, -1, -1],
            [1, 1, -1, -1, 1],
            [-1, -1, -1, 1, 1],
        ],
        dtype=np.float64,
    )
    depth = np.array([4.0, 3.0, 2.0, 1.5, 1.0, 0.8])
    module = DepthWells(centres, depth, 0.4, 0.01)
    return Landscape(
        "depths5d",
        "six wells (std 0.4) of depths 4 to 0.8 in 5-D on a bowl 0.01 |y|^2",
        module,
        5,
        6,
        _fixed(refine(module, centres)),
        well_tols(np.full(6, 0.4)),
    )


def ring3d() -> Landscape:
    return Landscape(
        "ring3d",
        "a circle of minima, radius 1.5, in the plane y2 = 0",
        Ring3d(),
        3,
        8,
        _fixed(np.zeros((0, 3))),
        np.zeros(0),
        ring_radius=RING3D_RADIUS,
        tol=round(TOL_SHARE * 2 * BOX, 6),
    )


def moving() -> Landscape:
    module = MovingWells(0.3)
    xs = np.array([[-0.9], [-0.5], [-0.1], [0.3], [0.7], [1.0]])
    table = {float(x[0]): refine(module, moving_centres(float(x[0])), x) for x in xs}

    def minima(x: np.ndarray | None) -> np.ndarray:
        assert x is not None
        return np.asarray(table[float(x[0])])

    return Landscape(
        "moving",
        "three wells (std 0.3) at (x0 + 1, x0), (x0 - 1, -x0), (-x0, 2); x0 in [-1, 1]",
        module,
        2,
        3,
        minima,
        well_tols(np.full(3, 0.3)),
        x_dim=1,
        xs=xs,
    )


def existing() -> list[Landscape]:
    """The project's own analytic search energies (tests/analytic.py), published as the
    search tests publish them (their manifests set k, a merge radius and gd's step)."""
    published: set[Path] = set()

    def publisher(models_dir: Path) -> None:
        if models_dir not in published:  # one call publishes all three
            publish_search_models(models_dir)
            published.add(models_dir)

    xs = np.array([[-0.8], [-0.3], [0.0], [0.4], [0.9]])
    return [
        Landscape(
            "double-well",
            "((y0 - x0)^2 - 1)^2 + y1^2: minima (x0 -+ 1, 0), x0 in [-1, 1]",
            DoubleWell(),
            2,
            2,
            lambda x: double_well_minima(float(x[0])),  # type: ignore[index]
            np.full(2, round(TOL_SHARE * 2 * BOX, 6)),
            x_dim=1,
            xs=xs,
            publisher=publisher,
        ),
        Landscape(
            "eight-gaussians",
            "8 Gaussian wells (std 0.3) on a circle of radius 2",
            EightGaussians(),
            2,
            8,
            _fixed(RING_CENTRES),
            well_tols(np.full(8, GAUSSIAN_SIGMA)),
            publisher=publisher,
        ),
        Landscape(
            "ring",
            "(|y| - 1.5)^2: a circle of minima in 2-D, k = 16",
            Ring(),
            2,
            16,
            _fixed(np.zeros((0, 2))),
            np.zeros(0),
            ring_radius=RING_RADIUS,
            tol=round(TOL_SHARE * 2 * BOX, 6),
            publisher=publisher,
        ),
    ]


def all_landscapes() -> list[Landscape]:
    return [
        widths(),
        widths3d(),
        depths(),
        depths_x100(),
        depths5d(),
        bounds(),
        gauss(3),
        gauss(6),
        ring3d(),
        moving(),
        *existing(),
    ]
