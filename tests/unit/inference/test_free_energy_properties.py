"""Properties of the free energies F_inf = min_z E and F_beta = -1/beta log mean_z exp(-beta E).

For every row: min E <= F_beta <= mean E (Jensen), F_beta <= min E + log(M) / beta (so it
tends to the minimum as beta grows), F_beta >= mean E - beta (max E - min E)^2 / 8
(Hoeffding, so it tends to the mean as beta shrinks), F_beta falls as beta grows, F(E + c) =
F(E) + c, the order of the latents does not matter, and huge energies neither overflow nor
lose the answer. The reference is computed with 60-digit decimals.

Accuracy asked of the float32 result: a couple of float32 ulps of the answer, plus the
float32 precision of the inputs (2^-24 of the largest |E|, which is how far the answer
moves when the inputs are rounded to float32).
"""

from __future__ import annotations

import math
from decimal import Decimal, localcontext

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.inference.free_energy import marginal, minimum

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=80)
BETA_MAX = 1e6  # what the API accepts: 0 < beta <= 1e6


@st.composite
def lattices(draw: st.DrawFn) -> tuple[np.ndarray, float]:
    """``[N, M]`` float32 energies k * 2^e (|k| <= 1000) and their scale 2^e: any scale from
    2^-10 to 2^110, every difference a representable multiple of it."""
    n, m = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    scale = 2.0 ** draw(st.integers(-10, 110))
    ks = draw(st.lists(st.integers(-1000, 1000), min_size=n * m, max_size=n * m))
    return (np.array(ks, np.float64).reshape(n, m) * scale).astype(np.float32), scale


def lattice_energies() -> st.SearchStrategy[np.ndarray]:
    return lattices().map(lambda pair: pair[0])


def log_uniform(low: float, high: float) -> st.SearchStrategy[float]:
    return st.floats(math.log10(low), math.log10(high)).map(lambda e: 10.0**e)


#: Where the properties are checked in general: with lattice energies every spread is at least
#: the scale, so beta (max E - min E) >= 1e-6. Smaller products lose the answer (last test).
BETA = log_uniform(1e-3, BETA_MAX)
ANY_FLOAT32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def tolerance(energy_row: np.ndarray, value: float) -> float:
    scale = float(np.max(np.abs(energy_row.astype(np.float64))))
    return 2.0**-22 * abs(float(value)) + 2.0**-24 * scale + 1e-45  # 1e-45: a subnormal


def reference(energy_row: np.ndarray, beta: float) -> float:
    """F_beta of one row in 60-digit decimal arithmetic (every float is a decimal exactly)."""
    with localcontext() as ctx:
        ctx.prec = 60
        b = Decimal(beta)
        energies = [Decimal(float(e)) for e in energy_row]
        low = min(energies)
        mean = sum(((-(b * (e - low))).exp() for e in energies), Decimal(0)) / len(energies)
        return float(low - mean.ln() / b)


@SETTINGS
@given(energy=lattice_energies(), beta=BETA)
def test_marginal_matches_a_high_precision_reference(energy: np.ndarray, beta: float) -> None:
    f = marginal(energy, beta)
    assert f.dtype == np.float32
    assert f.shape == (len(energy),)
    for row, got in zip(energy, f.tolist(), strict=True):
        expected = reference(row, beta)
        assert abs(got - expected) <= tolerance(row, expected), (got, expected)


@SETTINGS
@given(energy=lattice_energies(), beta=BETA)
def test_marginal_lies_between_the_minimum_and_the_mean(energy: np.ndarray, beta: float) -> None:
    f = marginal(energy, beta).astype(np.float64)
    wide = energy.astype(np.float64)
    low, mean = wide.min(axis=1), wide.mean(axis=1)
    for row, got, lo, hi in zip(energy, f, low, mean, strict=True):
        tol = tolerance(row, got)
        assert lo - tol <= got <= hi + tol


@SETTINGS
@given(energy=lattice_energies(), beta=BETA)
def test_marginal_tends_to_the_minimum_as_beta_grows(energy: np.ndarray, beta: float) -> None:
    """min E <= F_beta <= min E + log(M) / beta: the mean of M terms is at least the largest
    one over M."""
    f = marginal(energy, beta).astype(np.float64)
    low = energy.astype(np.float64).min(axis=1)
    gap = math.log(energy.shape[1]) / beta
    for row, got, lo in zip(energy, f, low, strict=True):
        tol = tolerance(row, got)
        assert lo - tol <= got <= lo + gap + tol


@SETTINGS
@given(energy=lattice_energies(), betas=st.lists(BETA, min_size=2, max_size=5, unique=True))
def test_marginal_falls_as_beta_grows(energy: np.ndarray, betas: list[float]) -> None:
    ordered = sorted(betas)
    values = np.stack([marginal(energy, b).astype(np.float64) for b in ordered])
    for i, row in enumerate(energy):
        for hotter, colder in zip(values[:-1, i], values[1:, i], strict=True):
            assert colder <= hotter + tolerance(row, hotter)


@SETTINGS
@given(lattice=lattices(), shift=st.integers(-(2**14), 2**14), beta=BETA)
def test_shifting_every_energy_shifts_the_marginal(
    lattice: tuple[np.ndarray, float], shift: int, beta: float
) -> None:
    energy, scale = lattice
    c = shift * scale  # (k + shift) * 2^e with |k + shift| < 2^24: E + c is exact in float32
    moved = energy + np.float32(c)
    assert np.array_equal(moved.astype(np.float64) - c, energy.astype(np.float64))
    base, after = marginal(energy, beta).tolist(), marginal(moved, beta).tolist()
    for row, mrow, b, a in zip(energy, moved, base, after, strict=True):
        assert abs(a - (b + c)) <= tolerance(row, b) + tolerance(mrow, a)


@SETTINGS
@given(energy=lattice_energies(), beta=BETA, data=st.data())
def test_the_order_of_the_latents_and_of_the_rows_does_not_matter(
    energy: np.ndarray, beta: float, data: st.DataObject
) -> None:
    f = marginal(energy, beta)
    cols = np.array(data.draw(st.permutations(range(energy.shape[1]))))
    for row, got, shuffled in zip(
        energy, f.tolist(), marginal(energy[:, cols], beta).tolist(), strict=True
    ):
        assert abs(got - shuffled) <= tolerance(row, got)
    # each row alone gives what it gives in the batch
    for i, row in enumerate(energy):
        assert abs(float(marginal(row[None], beta)[0]) - float(f[i])) <= tolerance(row, f[i])


@SETTINGS
@given(
    energy=st.lists(ANY_FLOAT32, min_size=1, max_size=12).map(
        lambda v: np.array(v, np.float32)[None]
    ),
    beta=log_uniform(1e-3, BETA_MAX),
)
def test_huge_energies_neither_overflow_nor_lose_the_answer(
    energy: np.ndarray, beta: float
) -> None:
    """Any finite float32 energies, up to +-3.4e38, with beta up to 1e6 (beta E ~ 3e44):
    a finite answer between the minimum and the minimum + log(M) / beta, no overflow."""
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        f = float(marginal(energy, beta)[0])
    assert math.isfinite(f)
    low = float(energy.min())
    tol = tolerance(energy[0], f)
    assert low - tol <= f <= low + math.log(energy.shape[1]) / beta + tol
    assert f <= float(energy.astype(np.float64).mean()) + tol


@SETTINGS
@given(energy=lattice_energies())
def test_min_free_energy_is_the_row_minimum_at_its_arg_min(energy: np.ndarray) -> None:
    f, index = minimum(energy)
    np.testing.assert_array_equal(f, energy.min(axis=1))
    np.testing.assert_array_equal(energy[np.arange(len(energy)), index], f)
    for row, i in zip(energy, index.tolist(), strict=True):
        assert not (row[:i] == row[i]).any()  # the first of equal minima
    for row, soft, hard in zip(energy, marginal(energy, 1.0).tolist(), f.tolist(), strict=True):
        assert soft >= hard - tolerance(row, hard)


@SETTINGS
@given(energy=lattice_energies(), beta=log_uniform(1e-30, 1e-3))
def test_a_small_beta_tends_to_the_mean(energy: np.ndarray, beta: float) -> None:
    """mean E - beta (max E - min E)^2 / 8 <= F_beta <= mean E for every beta > 0 (Hoeffding's
    lemma and Jensen): as beta -> 0 the marginal is the mean energy, not the minimum."""
    f = marginal(energy, beta).astype(np.float64)
    wide = energy.astype(np.float64)
    mean = wide.mean(axis=1)
    slack = beta * (wide.max(axis=1) - wide.min(axis=1)) ** 2 / 8
    for row, got, hi, down in zip(energy, f, mean, slack, strict=True):
        tol = tolerance(row, got)
        assert hi - down - tol <= got <= hi + tol, (row.tolist(), beta, got, hi)
