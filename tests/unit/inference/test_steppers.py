"""The optimisers' own guarantees, on closed-form numpy energies (no export): the descent
never lets an anchor's energy rise and stays in a basin narrower than its step; converged
means stationary whatever the energy's scale; dfo keeps shallow basins; a continuum gets
spread predictions; stragglers do not crowd out other basins."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from app.inference.modes import select_modes
from app.inference.params import converged_distance, resolve
from app.inference.predict import predict_runner
from app.inference.search import Search, SearchJob
from app.registry.backends.base import Array, EnergyOutput
from app.registry.loader import LoadedModel
from app.registry.manifest import (
    Artifact,
    Artifacts,
    Card,
    InferenceDefaults,
    Manifest,
    TensorSpec,
    Training,
)

Field = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # y [R, 2] -> (E [R], dE/dy)


class NumpyEnergy:
    """A closed-form E(y) and its gradient as a backend."""

    name = "numpy"

    def __init__(self, field: Field) -> None:
        self.field = field

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        e, g = self.field(np.asarray(inputs["y"], np.float64))
        grads = {"y": g.astype(np.float32)} if grad else {}
        return EnergyOutput(e.astype(np.float32), grads)

    @property
    def has_decoder(self) -> bool:
        return False

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        raise NotImplementedError


def model(field: Field, k: int = 2, box: float = 3.0) -> LoadedModel:
    manifest = Manifest(
        name="closed-form",
        version=1,
        y=TensorSpec(shape=[2], low=[-box, -box], high=[box, box]),
        artifacts=Artifacts(energy_onnx=Artifact(file="e.onnx", sha256="0" * 64)),
        training=Training(recipe="r.py", seed=0, method="none", data="none"),
        card=Card(task="t", method="m"),
        inference=InferenceDefaults(k=k),  # bounds and k only: the built-in policy
    )
    return LoadedModel(manifest, Path("."), NumpyEnergy(field), rows_independent=True)


def wells(centres: np.ndarray, stds: np.ndarray, depths: np.ndarray) -> Field:
    """E = -sum_k D_k exp(-|y - mu_k|^2 / (2 s_k^2)) + 0.01 |y|^2."""

    def field(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        diff = y[:, None, :] - centres[None]
        bump = depths * np.exp(-(diff**2).sum(-1) / (2 * stds**2))
        e = -bump.sum(1) + 0.01 * (y**2).sum(1)
        g = (bump[..., None] * diff / stds[None, :, None] ** 2).sum(1) + 0.02 * y
        return e, g

    return field


def quadratic(scale: float, centre: np.ndarray) -> Field:
    def field(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return scale * ((y - centre) ** 2).sum(1), 2 * scale * (y - centre)

    return field


def job(m: LoadedModel, **request: float | int | str) -> SearchJob:
    params = resolve(m.manifest, {"seed": 0, **request})
    return SearchJob(x=None, rows_x=1, params=params)


def test_the_descent_never_lets_an_anchor_energy_rise() -> None:
    def bumpy(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.cos(3 * y).sum(1) + 0.1 * (y**2).sum(1), -3 * np.sin(3 * y) + 0.2 * y

    search = Search(model(bumpy), [job(model(bumpy), method="gd", step_size=1.0)])
    previous = None
    while search.advance(lambda i, c: None):
        energy = search.state.e_a.copy()
        if previous is not None:
            assert (energy <= previous).all()
        previous = energy


def test_the_descent_stays_in_a_basin_narrower_than_its_step() -> None:
    """A well of std 0.01 inside a wide bowl; starts within 0.02 of its centre and a first
    step 10x the well: plain Adam jumps out, the backtracking descent settles in it."""
    narrow = wells(np.array([[1.0, 1.0]]), np.array([0.01]), np.array([1.0]))
    m = model(narrow)
    found = Search(m, [job(m, method="gd", step_size=0.1, num_starts=64)])
    rng = np.random.default_rng(0)
    found.state.v[:] = 1.0 + rng.uniform(-0.02, 0.02, (64, 2)).astype(np.float32)
    found.state.a[:] = found.state.v
    (candidates,) = found.run()
    assert candidates is not None
    distance = np.linalg.norm(candidates.y[0] - 1.0, axis=1)
    assert distance.max() < 0.01, distance.max()  # within one std of the centre


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_converged_means_stationary_whatever_the_energy_scale(scale: float) -> None:
    centre = np.array([0.7, -1.2])
    m = model(quadratic(scale, centre))
    (outcome,) = predict_runner(m)([job(m, method="gd", k=1)], None)
    best = outcome.predictions[0][0]
    assert best["converged"] is True
    assert np.linalg.norm(np.array(best["y"]) - centre) <= converged_distance(m.manifest)
    assert outcome.stats["steps_run"] < 100  # every start stationary: it stopped early


def test_dfo_keeps_a_shallow_basin_next_to_a_deep_one() -> None:
    centres = np.array([[-1.5, -1.5], [1.5, 1.5]])
    m = model(wells(centres, np.array([0.4, 0.4]), np.array([5.0, 1.0])))
    (outcome,) = predict_runner(m)([job(m, method="dfo", k=2)], None)
    y = np.array([p["y"] for p in outcome.predictions[0]])
    assert np.linalg.norm(y[:, None] - centres[None], axis=2).min(axis=0).max() < 0.05


def _largest_gap_degrees(points: np.ndarray) -> float:
    angles = np.sort(np.degrees(np.arctan2(points[:, 1], points[:, 0])) % 360)
    return float(np.diff(np.concatenate([angles, angles[:1] + 360])).max())


def test_predictions_spread_over_a_continuum_of_minima() -> None:
    """Candidates on a circle, equally low, most of them crowded on one arc: farthest-point
    selection within the energy gap spreads k = 8 over the whole circle; plain
    lowest-energy-first suppression (gap 0) follows the crowd."""
    rng = np.random.default_rng(0)
    angles = np.concatenate([rng.uniform(0, 1, 450), rng.uniform(0, 2 * np.pi, 50)])
    y = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    energy = rng.uniform(0, 1e-6, 500).astype(np.float32)
    spread = select_modes(y, energy, 8, 0.05, 1.0, gap=1e-4)
    crowd = select_modes(y, energy, 8, 0.05, 1.0, gap=0.0)
    assert _largest_gap_degrees(y[[m.index for m in spread]]) < 70
    assert _largest_gap_degrees(y[[m.index for m in crowd]]) > 180
    energies = [energy[m.index] for m in spread]
    assert energies == sorted(energies)  # answered lowest energy first


def test_stragglers_of_a_deep_basin_do_not_take_the_places_of_other_minima() -> None:
    deep, shallow = np.array([0.0, 0.0]), np.array([2.0, 0.0])
    rng = np.random.default_rng(1)
    ring = rng.uniform(0, 2 * np.pi, 20)
    stragglers = deep + 0.3 * np.stack([np.cos(ring), np.sin(ring)], 1)
    y = np.vstack([deep, stragglers, shallow]).astype(np.float32)
    energy = np.array([-5.0] + [-4.5] * 20 + [-1.0], np.float32)
    settled = np.array([True] + [False] * 20 + [True])
    reach = np.array([0.0] + [0.3] * 20 + [0.0], np.float32)
    for kwargs in ({"settled": settled}, {"reach": reach}):
        modes = select_modes(y, energy, 2, 0.1, 1.0, **kwargs)  # type: ignore[arg-type]
        assert [m.index for m in modes] == [0, 21], kwargs
    naive = select_modes(y, energy, 2, 0.1, 1.0)
    assert 21 not in [m.index for m in naive]  # what they did before
