"""Properties of de-duplication: candidates merged into modes, and modes into predictions.

``select_modes`` takes candidates lowest energy first; each one not yet absorbed becomes a
mode and absorbs every candidate left within ``merge_radius``. So modes come lowest energy
first, are pairwise farther apart than the radius, cover every candidate, are each the
lowest of their group, and a smaller ``k`` keeps a prefix; masses are Gibbs shares.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from app.inference.control import Control
from app.inference.modes import select_modes
from app.inference.params import SearchParams
from app.inference.predict import to_predictions
from app.inference.search import Candidates, SearchJob
from app.registry.manifest import TensorSpec

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=80)

# Energies with ties (small integers), spread, and the non-finite values a search can leave.
ENERGY = st.one_of(
    st.integers(-3, 3).map(float),
    st.floats(-50, 50, width=32),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
# Positions on a coarse grid (exact distances, many at exactly the radius) or anywhere.
COORD = st.one_of(st.integers(-3, 3).map(lambda v: v * 0.5), st.floats(-2, 2, width=32))
RADIUS = st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0, 2))
TEMPERATURE = st.floats(1e-2, 1e2)


@st.composite
def clouds(draw: st.DrawFn, energies: st.SearchStrategy[float] = ENERGY) -> tuple[Any, Any]:
    """Candidates ``y [S, D]`` (float32) and their energies ``[S]``."""
    size, dim = draw(st.integers(1, 30)), draw(st.integers(1, 3))
    y = np.array(draw(st.lists(COORD, min_size=size * dim, max_size=size * dim)), np.float32)
    energy = np.array(draw(st.lists(energies, min_size=size, max_size=size)), np.float32)
    return y.reshape(size, dim), energy


def sq_dist(y: np.ndarray, i: int, j: int) -> float:
    """Squared distance as the merge measures it (float64)."""
    a, b = np.asarray(y[i], np.float64), np.asarray(y[j], np.float64)
    return float(np.sum((a - b) ** 2))


def gibbs(energy: np.ndarray, temperature: float) -> dict[int, float]:
    """softmax(-E / T) over the finite candidates, written plainly."""
    finite = [i for i, e in enumerate(energy.tolist()) if math.isfinite(e)]
    low = min(float(energy[i]) for i in finite)
    raw = {i: math.exp(-(float(energy[i]) - low) / temperature) for i in finite}
    total = math.fsum(raw.values())
    return {i: w / total for i, w in raw.items()}


@SETTINGS
@given(cloud=clouds(), k=st.integers(1, 35), radius=RADIUS, temperature=TEMPERATURE)
def test_modes_are_finite_distinct_and_lowest_energy_first(
    cloud: tuple[np.ndarray, np.ndarray], k: int, radius: float, temperature: float
) -> None:
    y, energy = cloud
    modes = select_modes(y, energy, k, radius, temperature)
    finite = np.isfinite(energy)

    assert len(modes) <= k
    assert (len(modes) > 0) == bool(finite.any())
    chosen = [m.index for m in modes]
    assert len(set(chosen)) == len(chosen)
    assert all(finite[i] for i in chosen)  # a NaN or infinite energy is never a mode
    energies = energy[chosen]
    assert np.all(np.diff(energies) >= 0)
    if modes:
        assert energies[0] == energy[finite].min()
    assert all(m.members >= 1 for m in modes)
    assert sum(m.members for m in modes) <= int(finite.sum())


@SETTINGS
@given(cloud=clouds(), k=st.integers(1, 35), radius=RADIUS, temperature=TEMPERATURE)
def test_no_two_modes_lie_within_the_merge_radius(
    cloud: tuple[np.ndarray, np.ndarray], k: int, radius: float, temperature: float
) -> None:
    y, energy = cloud
    chosen = [m.index for m in select_modes(y, energy, k, radius, temperature)]
    for a, i in enumerate(chosen):
        for j in chosen[a + 1 :]:
            assert sq_dist(y, i, j) > radius**2


@SETTINGS
@given(cloud=clouds(), radius=RADIUS, temperature=TEMPERATURE)
def test_without_a_cap_every_candidate_is_near_a_mode_no_higher_in_energy(
    cloud: tuple[np.ndarray, np.ndarray], radius: float, temperature: float
) -> None:
    y, energy = cloud
    modes = select_modes(y, energy, len(energy), radius, temperature)
    finite = [i for i in range(len(energy)) if math.isfinite(float(energy[i]))]
    for c in finite:
        assert any(
            energy[m.index] <= energy[c] and sq_dist(y, m.index, c) <= radius**2 for m in modes
        ), f"candidate {c} is represented by no mode"
    # Every finite candidate in exactly one group; all the Gibbs mass is accounted for.
    assert sum(m.members for m in modes) == len(finite)
    if finite:
        assert math.fsum(m.mass for m in modes) == pytest.approx(1.0, rel=1e-9)


@SETTINGS
@given(cloud=clouds(), k=st.integers(1, 35), radius=RADIUS, temperature=TEMPERATURE)
def test_a_smaller_k_keeps_a_prefix_of_the_modes(
    cloud: tuple[np.ndarray, np.ndarray], k: int, radius: float, temperature: float
) -> None:
    y, energy = cloud
    every = select_modes(y, energy, len(energy), radius, temperature)
    assert select_modes(y, energy, k, radius, temperature) == every[:k]


@SETTINGS
@given(cloud=clouds(), k=st.integers(1, 35), radius=RADIUS, temperature=TEMPERATURE)
def test_a_mass_is_the_gibbs_share_of_a_group_its_representative_leads(
    cloud: tuple[np.ndarray, np.ndarray], k: int, radius: float, temperature: float
) -> None:
    y, energy = cloud
    modes = select_modes(y, energy, k, radius, temperature)
    assume(modes)
    weight = gibbs(energy, temperature)
    for m in modes:
        lead = weight[m.index]
        assert 0 <= m.mass <= 1
        # The representative is in its group and is its lowest energy: every member weighs
        # at most what it does.
        assert m.mass >= lead * (1 - 1e-9)
        assert m.mass <= m.members * lead * (1 + 1e-9) + 1e-300
    assert math.fsum(m.mass for m in modes) <= 1 + 1e-9
    assert modes[0].mass >= max(weight.values()) * (1 - 1e-9)


@SETTINGS
@given(
    cloud=clouds(),
    k=st.integers(1, 35),
    radius=RADIUS,
    temperatures=st.tuples(TEMPERATURE, TEMPERATURE),
)
def test_temperature_moves_the_masses_but_not_the_modes(
    cloud: tuple[np.ndarray, np.ndarray],
    k: int,
    radius: float,
    temperatures: tuple[float, float],
) -> None:
    y, energy = cloud
    hot, cold = (select_modes(y, energy, k, radius, t) for t in temperatures)
    assert [(m.index, m.members) for m in hot] == [(m.index, m.members) for m in cold]


@SETTINGS
@given(
    cloud=clouds(energies=st.integers(-10_000, 10_000).map(float)),
    k=st.integers(1, 35),
    radius=RADIUS,
    temperature=TEMPERATURE,
    data=st.data(),
)
def test_the_modes_do_not_depend_on_the_order_of_the_candidates(
    cloud: tuple[np.ndarray, np.ndarray],
    k: int,
    radius: float,
    temperature: float,
    data: st.DataObject,
) -> None:
    y, energy = cloud
    assume(len(set(energy.tolist())) == len(energy))  # ties go by index, so order matters
    order = np.array(data.draw(st.permutations(range(len(energy)))))
    modes = select_modes(y, energy, k, radius, temperature)
    shuffled = select_modes(y[order], energy[order], k, radius, temperature)
    assert [(int(order[m.index]), m.members) for m in shuffled] == [
        (m.index, m.members) for m in modes
    ]
    for a, b in zip(shuffled, modes, strict=True):
        assert math.isclose(a.mass, b.mass, rel_tol=1e-9, abs_tol=1e-300)


@SETTINGS
@given(
    cloud=clouds(energies=st.integers(-1000, 1000).map(float)),
    shift=st.integers(-(10**6), 10**6),
    k=st.integers(1, 35),
    radius=RADIUS,
    temperature=TEMPERATURE,
)
def test_shifting_every_energy_changes_no_mode_and_no_mass(
    cloud: tuple[np.ndarray, np.ndarray],
    shift: int,
    k: int,
    radius: float,
    temperature: float,
) -> None:
    y, energy = cloud
    modes = select_modes(y, energy, k, radius, temperature)
    moved = select_modes(y, energy + np.float32(shift), k, radius, temperature)  # exact
    assert [(m.index, m.members) for m in moved] == [(m.index, m.members) for m in modes]
    for a, b in zip(moved, modes, strict=True):
        assert math.isclose(a.mass, b.mass, rel_tol=1e-9, abs_tol=1e-300)


# --- predictions ------------------------------------------------------------------------
def predict_case(
    rows_x: int, starts: int, dim: int, k: int, radius: float, seed: int, deadline: float
) -> tuple[Any, SearchJob, Candidates]:
    rng = np.random.default_rng(seed)
    model = SimpleNamespace(manifest=SimpleNamespace(y=TensorSpec(shape=[dim]), z=None))
    params = SearchParams(
        method="gd",
        k=k,
        num_starts=starts,
        steps=10,
        step_size=0.1,
        noise_scale=0.0,
        temperature=1.0,
        merge_radius=radius,
        tol=1e-3,
        seed=seed,
        seeded=True,
    )
    job = SearchJob(x=None, rows_x=rows_x, params=params, control=Control(deadline=deadline))
    energy = rng.integers(-5, 5, (rows_x, starts)).astype(np.float32)
    found = Candidates(
        y=rng.uniform(-1, 1, (rows_x, starts, dim)).astype(np.float32),
        z=None,
        energy=energy,
        grad_norm=rng.uniform(0, 1e-2, (rows_x, starts)).astype(np.float32),
        converged=None,
        distance=None,
        energy_scale=np.zeros(rows_x, np.float32),
        trajectory=None,
        steps_run=10,
        evaluations=10 * starts,
        partial=False,
        elapsed_s=0.01,
    )
    return model, job, found


CASE = {
    "rows_x": st.integers(1, 4),
    "starts": st.integers(1, 24),
    "dim": st.integers(1, 3),
    "k": st.integers(1, 6),
    "radius": st.floats(0, 1.5),
    "seed": st.integers(0, 2**32 - 1),
}


@SETTINGS
@given(**CASE)
def test_each_x_gets_its_own_modes_as_predictions(
    rows_x: int, starts: int, dim: int, k: int, radius: float, seed: int
) -> None:
    model, job, found = predict_case(rows_x, starts, dim, k, radius, seed, math.inf)
    outcome = to_predictions(model, job, found, coalesced=1)
    assert len(outcome.predictions) == rows_x
    assert outcome.stats["partial"] is False
    for i, row in enumerate(outcome.predictions):
        modes = select_modes(found.y[i], found.energy[i], k, radius, 1.0)
        assert len(row) == len(modes)
        for prediction, mode in zip(row, modes, strict=True):
            assert prediction["y"] == found.y[i, mode.index].tolist()
            assert prediction["energy"] == float(found.energy[i, mode.index])
            assert prediction["mass"] == mode.mass
        assert [p["energy"] for p in row] == sorted(p["energy"] for p in row)
        assert row[0]["energy"] == float(found.energy[i].min())


@SETTINGS
@given(**CASE)
def test_past_the_deadline_each_x_gets_its_single_best_candidate(
    rows_x: int, starts: int, dim: int, k: int, radius: float, seed: int
) -> None:
    model, job, found = predict_case(rows_x, starts, dim, k, radius, seed, deadline=0.0)
    outcome = to_predictions(model, job, found, coalesced=1)
    assert outcome.stats["partial"] is True
    for i, row in enumerate(outcome.predictions):
        best = int(np.argmin(found.energy[i]))
        assert [p["y"] for p in row] == [found.y[i, best].tolist()]
        assert row[0]["energy"] == float(found.energy[i, best])
