"""Mode selection: greedy merge by energy within a radius, masses from the Gibbs weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.inference.modes import Mode, select_modes


def reference_modes(
    y: np.ndarray, energy: np.ndarray, k: int, radius: float, temperature: float
) -> list[tuple[int, float, int]]:
    """The definition, written plainly: (index, mass, members) per mode.

    Take candidates lowest energy first (ties by index); each one not yet absorbed becomes a
    mode and absorbs every unabsorbed finite candidate within ``radius`` of it (itself
    included); its mass is the softmax(-E/T) share of what it absorbed.
    """
    y = np.asarray(y, np.float64)
    finite = [i for i in range(len(energy)) if math.isfinite(float(energy[i]))]
    if not finite:
        return []
    low = min(float(energy[i]) for i in finite)
    weight = {i: math.exp(-(float(energy[i]) - low) / temperature) for i in finite}
    total = sum(weight.values())
    left = set(finite)
    modes: list[tuple[int, float, int]] = []
    for i in sorted(finite, key=lambda i: (float(energy[i]), i)):
        if len(modes) == k:
            break
        if i not in left:
            continue
        group = {j for j in left if float(np.sum((y[j] - y[i]) ** 2)) <= radius**2}
        left -= group
        modes.append((i, sum(weight[j] for j in group) / total, len(group)))
    return modes


def cloud(seed: int, size: int = 200, dim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Candidates in clusters (as a search leaves them) plus scattered ones, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-3, 3, (6, dim))
    clustered = centres[rng.integers(0, 6, size // 2)] + rng.normal(0, 0.05, (size // 2, dim))
    scattered = rng.uniform(-3, 3, (size - size // 2, dim))
    y = np.concatenate([clustered, scattered]).astype(np.float32)
    energy = (rng.gamma(1.0, 2.0, size) - 1).astype(np.float32)
    return y, energy


def test_a_small_case_by_hand() -> None:
    # Candidates 0 and 1 are 0.05 apart; 2 is far from both and lowest.
    y = np.array([[0.0], [0.05], [1.0]], np.float32)
    energy = np.array([1.0, 2.0, 0.0], np.float32)
    modes = select_modes(y, energy, k=5, merge_radius=0.1, temperature=1.0)
    z = 1 + math.exp(-1) + math.exp(-2)
    assert [(m.index, m.members) for m in modes] == [(2, 1), (0, 2)]
    assert modes[0].mass == pytest.approx(1 / z, rel=1e-12)
    assert modes[1].mass == pytest.approx((math.exp(-1) + math.exp(-2)) / z, rel=1e-12)


def test_temperature_sets_the_masses() -> None:
    y = np.array([[0.0], [0.05], [1.0]], np.float32)
    energy = np.array([1.0, 2.0, 0.0], np.float32)
    cold = select_modes(y, energy, k=5, merge_radius=0.1, temperature=0.01)
    assert cold[0].mass == pytest.approx(1.0, abs=1e-40)  # all mass on the lowest
    hot = select_modes(y, energy, k=5, merge_radius=0.1, temperature=1e9)
    # T -> infinity: every candidate weighs the same, a mode's mass is its share of members
    assert [m.mass for m in hot] == pytest.approx([1 / 3, 2 / 3], rel=1e-6)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize(("radius", "k"), [(0.3, 1000), (0.1, 5), (1.0, 3), (0.5, 1)])
def test_random_clouds_follow_the_definition(seed: int, radius: float, k: int) -> None:
    y, energy = cloud(seed)
    temperature = [0.1, 1.0, 10.0][seed % 3]
    modes = select_modes(y, energy, k=k, merge_radius=radius, temperature=temperature)

    assert 1 <= len(modes) <= k
    chosen = y[[m.index for m in modes]].astype(np.float64)
    gaps = np.linalg.norm(chosen[:, None] - chosen[None], axis=2)
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() > radius  # two modes are never within merge_radius of each other
    energies = energy[[m.index for m in modes]]
    assert energies[0] == energy.min()
    assert np.all(np.diff(energies) >= 0)  # lowest energy first
    masses = np.array([m.mass for m in modes])
    assert np.all((masses >= 0) & (masses <= 1))
    assert masses.sum() <= 1 + 1e-12
    assert all(m.members >= 1 for m in modes)

    expected = reference_modes(y, energy, k, radius, temperature)
    assert [(m.index, m.members) for m in modes] == [(i, n) for i, _, n in expected]
    assert masses == pytest.approx([mass for _, mass, _ in expected], rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("seed", range(3))
def test_without_a_cap_the_masses_add_up_to_one(seed: int) -> None:
    y, energy = cloud(seed)
    modes = select_modes(y, energy, k=len(energy), merge_radius=0.4, temperature=1.0)
    assert sum(m.mass for m in modes) == pytest.approx(1.0, rel=1e-12)
    assert sum(m.members for m in modes) == len(energy)


def test_k_caps_the_modes_lowest_first() -> None:
    y = np.arange(10, dtype=np.float32)[:, None]  # 1 apart, none merge at radius 0.5
    energy = np.array([5, 3, 9, 0, 7, 1, 8, 2, 6, 4], np.float32)
    modes = select_modes(y, energy, k=4, merge_radius=0.5, temperature=1.0)
    assert [m.index for m in modes] == [3, 5, 7, 1]
    total = np.exp(-energy.astype(np.float64)).sum()
    assert [m.mass for m in modes] == pytest.approx(
        [np.exp(-e) / total for e in (0.0, 1.0, 2.0, 3.0)], rel=1e-12
    )
    assert sum(m.mass for m in modes) < 1  # the cut-off modes keep their share


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_energies_are_never_chosen(bad: float) -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
    energy = rng.normal(size=50).astype(np.float32)
    poisoned = rng.choice(50, 10, replace=False)
    energy[poisoned] = bad
    modes = select_modes(y, energy, k=50, merge_radius=0.2, temperature=1.0)
    assert not {m.index for m in modes} & set(poisoned.tolist())
    masses = [m.mass for m in modes]
    assert all(math.isfinite(m) for m in masses)
    assert sum(masses) == pytest.approx(1.0, rel=1e-12)  # non-finite ones weigh nothing
    assert sum(m.members for m in modes) == 40
    assert [(m.index, m.members) for m in modes] == [
        (i, n) for i, _, n in reference_modes(y, energy, 50, 0.2, 1.0)
    ]


def test_all_non_finite_gives_no_mode() -> None:
    y = np.zeros((3, 2), np.float32)
    energy = np.array([np.nan, np.inf, -np.inf], np.float32)
    assert select_modes(y, energy, k=3, merge_radius=0.1, temperature=1.0) == []


def test_large_energies_do_not_overflow_the_masses() -> None:
    y = np.array([[0.0, 0.0], [2.0, 0.0]], np.float32)
    energy = np.array([1e30, 1e30 + 1e24], np.float32)
    modes = select_modes(y, energy, k=2, merge_radius=0.5, temperature=1.0)
    assert modes == [Mode(0, 1.0, 1), Mode(1, 0.0, 1)]
