"""Batched multi-start search on analytic energies with known minima, through the registry.

The double well (conditional: minima (x0 - 1, 0) and (x0 + 1, 0)), the 8 Gaussians (minima
at the 8 centres) and the ring (a continuum of minima at radius 1.5) are loaded from real
exported artifacts on both backends; the labels classifier checks enumeration.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.config import BackendChoice, Settings
from app.inference.batch import deterministic_groups
from app.inference.control import Control
from app.inference.params import resolve
from app.inference.predict import PredictOutcome, predict_runner
from app.inference.search import (
    MIN_STEPS_BEFORE_TOL,
    Search,
    SearchJob,
)
from app.inference.steppers.stepper import (
    DFO_REFINE_STEPS,
    LANGEVIN_LEAD_SHARE,
    LANGEVIN_REFINE_SHARE,
)
from app.registry.loader import LoadedModel, Registry, load_registry
from tests.analytic import (
    RING_CENTRES,
    RING_RADIUS,
    Labels,
    double_well_minima,
    publish_labels,
)

BACKENDS = [BackendChoice.ONNX, BackendChoice.TORCH]
METHODS = ["gd", "langevin", "dfo"]
F32 = np.float32
X_ROWS = [[-0.5], [0.0], [0.3], [0.9]]


@pytest.fixture(scope="module")
def registries(search_models: Path) -> dict[BackendChoice, Registry]:
    loaded = {b: load_registry(Settings(models_dir=search_models, backend=b)) for b in BACKENDS}
    for backend, registry in loaded.items():
        assert registry.unavailable == []
        assert registry.get("ring").backend.name == backend.value
    return loaded


@pytest.fixture(scope="module")
def labels_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("label-models")
    publish_labels(root)
    return root


def make_job(
    model: LoadedModel,
    x: Any = None,
    y_known: Any = None,
    y_mask: Any = None,
    deadline: float = math.inf,
    **fields: Any,
) -> SearchJob:
    """A job as the route builds it: ``fields`` are request fields (method, seed, steps...);
    gd unless named (auto would pick dfo for these 2-D energies: the loop's own behaviour is
    tested on gd, whose steps are the simplest to count)."""
    if model.manifest.y.kind == "continuous":
        fields.setdefault("method", "gd")
    x_batch = None if x is None else np.asarray(x, F32)
    rows = len(x_batch) if x_batch is not None else len(y_known) if y_known is not None else 1
    return SearchJob(
        x=x_batch,
        rows_x=rows,
        params=resolve(model.manifest, fields),
        y_known=None if y_known is None else np.asarray(y_known, F32),
        y_mask=None if y_mask is None else np.asarray(y_mask, bool),
        control=Control(deadline=deadline),
    )


def predict(model: LoadedModel, *jobs: SearchJob) -> list[PredictOutcome]:
    return predict_runner(model)(list(jobs), None)


def found_y(outcome: PredictOutcome, row: int = 0) -> np.ndarray:
    return np.array([p["y"] for p in outcome.predictions[row]])


def assert_same_points(found: np.ndarray, truth: np.ndarray, within: float) -> None:
    """Recall 1 (every true point has a prediction near it) and precision 1 (every
    prediction is near a true point)."""
    distance = np.linalg.norm(found[:, None, :] - truth[None, :, :], axis=2)
    assert distance.min(axis=0).max() < within, f"missed a true point: {found} vs {truth}"
    assert distance.min(axis=1).max() < within, f"a prediction is off: {found} vs {truth}"


def assert_lowest_first(outcome: PredictOutcome) -> None:
    for row in outcome.predictions:
        energies = [p["energy"] for p in row]
        assert energies == sorted(energies)


# --- finding the minima -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_both_double_well_minima_for_every_x(
    registries: dict[BackendChoice, Registry], backend: BackendChoice, method: str
) -> None:
    model = registries[backend].get("double-well")
    (outcome,) = predict(model, make_job(model, X_ROWS, method=method, seed=0))
    assert len(outcome.predictions) == len(X_ROWS)
    for row, (x0,) in enumerate(X_ROWS):
        assert len(outcome.predictions[row]) == 2  # the manifest's k
        assert_same_points(found_y(outcome, row), double_well_minima(x0), within=0.1)
    assert_lowest_first(outcome)
    assert outcome.stats["method"] == method
    assert outcome.stats["partial"] is False


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_all_eight_gaussian_centres(
    registries: dict[BackendChoice, Registry], backend: BackendChoice, method: str
) -> None:
    model = registries[backend].get("eight-gaussians")
    (outcome,) = predict(model, make_job(model, method=method, seed=0))
    assert len(outcome.predictions) == 1
    assert len(outcome.predictions[0]) == 8
    assert_same_points(found_y(outcome), RING_CENTRES, within=0.1)
    assert_lowest_first(outcome)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_every_ring_prediction_lies_on_the_ring(
    registries: dict[BackendChoice, Registry], backend: BackendChoice, method: str
) -> None:
    model = registries[backend].get("ring")
    worst = {}
    for seed in range(5):
        (outcome,) = predict(model, make_job(model, method=method, seed=seed))
        radii = np.linalg.norm(found_y(outcome), axis=1)
        assert len(radii) == 16  # the manifest's k: the ring has room for more modes
        worst[seed] = float(np.abs(radii - RING_RADIUS).max())
    assert max(worst.values()) < 0.05, f"largest | |y| - 1.5 | per seed: {worst}"


# --- fill in the blanks -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_clamped_components_stay_exact_and_the_rest_is_inferred(
    registries: dict[BackendChoice, Registry], backend: BackendChoice, method: str
) -> None:
    """Row 0 clamps y0 = 0.9 (so y1 = +-1.2 on the ring), row 1 clamps y1 = -1 (y0 =
    +-sqrt(1.25)). Clamped values stay bit-exact float32 in every candidate and every step."""
    model = registries[backend].get("ring")
    job = make_job(
        model,
        y_known=[[0.9, 123.0], [-7.0, -1.0]],  # unobserved entries are ignored
        y_mask=[[True, False], [False, True]],
        method=method,
        seed=1,
        k=2,
        return_trajectory=True,
    )
    (found,) = Search(model, [job]).run()
    assert found.y.shape[:2] == (2, job.params.num_starts)
    assert np.all(found.y[0, :, 0].view(np.uint32) == F32(0.9).view(np.uint32))
    assert np.all(found.y[1, :, 1].view(np.uint32) == F32(-1.0).view(np.uint32))
    assert found.trajectory is not None
    assert np.all(found.trajectory[:, 0, :, 0] == F32(0.9))
    assert np.all(found.trajectory[:, 1, :, 1] == F32(-1.0))

    (outcome,) = predict(model, job)
    first, second = found_y(outcome, 0), found_y(outcome, 1)
    assert first.shape == second.shape == (2, 2)
    assert set(first[:, 0].tolist()) == {float(F32(0.9))}
    np.testing.assert_allclose(sorted(first[:, 1]), [-1.2, 1.2], atol=0.05)
    assert set(second[:, 1].tolist()) == {-1.0}
    np.testing.assert_allclose(sorted(second[:, 0]), [-math.sqrt(1.25), math.sqrt(1.25)], atol=0.05)


def test_a_fully_clamped_job_stops_after_the_minimum_steps(
    registries: dict[BackendChoice, Registry],
) -> None:
    """All of y observed: every gradient is zero, so the job stops at the first step the
    tolerance may act, and every candidate is the given y."""
    model = registries[BackendChoice.ONNX].get("double-well")
    job = make_job(model, [[0.2]], y_known=[[1.25, -0.5]], y_mask=[[True, True]], seed=3)
    (outcome,) = predict(model, job)
    assert outcome.stats["steps_run"] == MIN_STEPS_BEFORE_TOL
    assert outcome.predictions[0] == [
        {
            "y": [1.25, -0.5],
            "energy": pytest.approx(((1.05**2 - 1) ** 2) + 0.25, rel=1e-6),
            "mass": 1.0,
            "converged": True,
        }
    ]


# --- reproducibility ----------------------------------------------------------------------
def comparable(outcome: PredictOutcome) -> tuple[Any, dict[str, Any]]:
    stats = {k: v for k, v in outcome.stats.items() if k not in ("time_ms", "coalesced_jobs")}
    return outcome.predictions, stats


def other_jobs(model: LoadedModel, method: str) -> list[SearchJob]:
    """Jobs unlike the seeded one: unseeded, other x, other sizes, one fill-in-the-blanks."""
    return [
        make_job(model, [[0.5], [-0.1], [0.0]], method=method, num_starts=16),
        make_job(model, [[-0.9]], method=method, seed=8, steps=3),
        make_job(
            model,
            [[0.1]],
            y_known=[[0.0, 0.5]],
            y_mask=[[False, True]],
            method=method,
            seed=9,
            num_starts=40,
        ),
    ]


@pytest.mark.parametrize("method", METHODS)
def test_a_seeded_job_replays_bit_for_bit_alone_or_coalesced(
    registries: dict[BackendChoice, Registry], method: str
) -> None:
    model = registries[BackendChoice.ONNX].get("double-well")
    assert model.rows_independent is True  # checked at load: coalescing is safe here
    seeded = make_job(model, [[0.2], [-0.7]], method=method, seed=7)
    (alone,) = predict(model, seeded)
    others = other_jobs(model, method)
    together = predict(model, others[0], seeded, *others[1:])
    assert comparable(together[1]) == comparable(alone)
    assert alone.stats["coalesced_jobs"] == 1
    assert together[1].stats["coalesced_jobs"] == 4
    # and run again alone: the same bits
    assert comparable(predict(model, seeded)[0]) == comparable(alone)


@pytest.mark.parametrize("method", METHODS)
def test_a_seeded_job_runs_alone_where_rows_depend_on_the_batch(
    registries: dict[BackendChoice, Registry], method: str
) -> None:
    """The torch backend as if its load-time check had found rows that depend on the batch
    around them: seeded jobs then run in their own backend calls and still replay, while
    unseeded jobs share theirs. (The analytic energies pass that check on torch here, so
    the flag is set by hand on the loaded model; the search code only reads the flag.)"""
    loaded = registries[BackendChoice.TORCH].get("double-well")
    model = dataclasses.replace(loaded, rows_independent=False)
    seeded = make_job(model, [[0.2], [-0.7]], method=method, seed=7)
    (alone,) = predict(model, seeded)
    unseeded, other_seeded, _ = other_jobs(model, method)
    unseeded_too = make_job(model, [[0.7]], method=method)
    jobs = [unseeded, seeded, unseeded_too, other_seeded]
    outcomes = predict(model, *jobs)
    assert comparable(outcomes[1]) == comparable(alone)
    assert [o.stats["coalesced_jobs"] for o in outcomes] == [2, 1, 2, 1]
    # every answer went back to its own job
    for job, outcome in zip(jobs, outcomes, strict=True):
        assert outcome.stats["seed"] == job.params.seed
        assert outcome.stats["candidates"] == job.rows
        assert len(outcome.predictions) == job.rows_x


def test_deterministic_groups(registries: dict[BackendChoice, Registry]) -> None:
    model = registries[BackendChoice.ONNX].get("double-well")
    seeded, unseeded = make_job(model, [[0.0]], seed=1), make_job(model, [[0.0]])
    jobs = [unseeded, seeded, unseeded, seeded, seeded]
    assert deterministic_groups(jobs, rows_independent=True) == [[0, 1, 2, 3, 4]]
    assert deterministic_groups(jobs, rows_independent=False) == [[0, 2], [1], [3], [4]]
    assert deterministic_groups([seeded, seeded], rows_independent=False) == [[0], [1]]
    assert deterministic_groups([unseeded] * 3, rows_independent=False) == [[0, 1, 2]]


# --- stopping -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_a_job_at_its_deadline_comes_back_partial(
    registries: dict[BackendChoice, Registry], method: str
) -> None:
    model = registries[BackendChoice.ONNX].get("double-well")
    short = make_job(model, [[0.0]], method=method, seed=2, steps=10, tol=0)
    late = make_job(
        model,
        [[0.2], [0.4]],
        deadline=time.time() + 0.02,
        method=method,
        seed=1,
        steps=100_000,
        tol=0,
    )
    done, cut = predict(model, short, late)
    assert cut.stats["partial"] is True
    assert cut.stats["steps_run"] < 100_000
    assert len(cut.predictions) == 2
    assert all(math.isfinite(p["energy"]) for row in cut.predictions for p in row)
    # its batch mate was not cut short
    # langevin follows its chains, and dfo its rounds, with a gradient descent
    refine = {
        "langevin": math.ceil(10 * LANGEVIN_REFINE_SHARE) + math.ceil(10 * LANGEVIN_LEAD_SHARE),
        "dfo": DFO_REFINE_STEPS,
    }
    refine_steps = refine.get(method, 0)
    assert done.stats["partial"] is False
    assert done.stats["steps_run"] == 10 + refine_steps


def test_tol_stops_the_search_once_every_start_is_flat(
    registries: dict[BackendChoice, Registry],
) -> None:
    model = registries[BackendChoice.ONNX].get("double-well")
    job = make_job(model, [[0.2]], method="gd", seed=0, steps=1000, tol=1e-2)
    (found,) = Search(model, [job]).run()
    assert MIN_STEPS_BEFORE_TOL <= found.steps_run < 1000
    assert found.partial is False
    assert found.grad_norm is not None
    assert found.grad_norm.max() < 1e-2
    (outcome,) = predict(model, job)
    assert all(p["converged"] is True for p in outcome.predictions[0])
    assert_same_points(found_y(outcome), double_well_minima(0.2), within=0.01)
    # tol 0 never stops early
    (found,) = Search(model, [make_job(model, [[0.2]], seed=0, steps=200, tol=0)]).run()
    assert found.steps_run == 200


def test_each_x_of_a_request_stops_searching_once_its_own_starts_are_flat(
    registries: dict[BackendChoice, Registry],
) -> None:
    """Rows of an x that has converged drop out of the backend calls while the request's
    other x keep going; the converged x keeps its answer, and replays the same."""
    model = registries[BackendChoice.ONNX].get("double-well")
    rows_x = [[-0.9], [0.0], [0.4], [0.95]]

    def job() -> SearchJob:
        return make_job(model, rows_x, method="gd", seed=3, steps=1000, tol=1e-2)

    (found,) = Search(model, [job()]).run()
    starts = job().params.num_starts
    searched = found.evaluations - len(rows_x) * starts  # the final re-score is one pass
    assert found.steps_run < 1000
    assert searched < len(rows_x) * starts * found.steps_run  # some x stopped before others
    assert found.grad_norm is not None
    assert found.grad_norm.max() < 1e-2
    for row, x0 in zip(found.y, rows_x, strict=True):
        best = row[np.argsort(np.linalg.norm(row - double_well_minima(x0[0])[0], axis=1))[0]]
        np.testing.assert_allclose(best, double_well_minima(x0[0])[0], atol=0.01)
    (again,) = Search(model, [make_job(model, [[5.0]], seed=9, steps=3), job()]).run()[1:]
    np.testing.assert_array_equal(again.y, found.y)


def test_each_job_is_delivered_once_as_soon_as_it_stops(
    registries: dict[BackendChoice, Registry],
) -> None:
    model = registries[BackendChoice.ONNX].get("double-well")
    jobs = [make_job(model, [[0.1]], seed=1, steps=s, tol=0) for s in (40, 5, 20)]
    delivered: list[tuple[int, PredictOutcome]] = []
    outcomes = predict_runner(model)(jobs, lambda i, o: delivered.append((i, o)))
    assert [i for i, _ in delivered] == [1, 2, 0]  # in the order they stop
    for i, outcome in delivered:
        assert outcome is outcomes[i]
    assert [o.stats["steps_run"] for o in outcomes] == [40, 5, 20]


def test_each_job_is_delivered_once_when_seeded_jobs_run_alone(
    registries: dict[BackendChoice, Registry],
) -> None:
    loaded = registries[BackendChoice.ONNX].get("double-well")
    model = dataclasses.replace(loaded, rows_independent=False)
    jobs = [
        make_job(model, [[0.1]], seed=1, steps=10),
        make_job(model, [[0.1]], steps=10),
        make_job(model, [[0.1]], seed=2, steps=10),
        make_job(model, [[0.1]], steps=30),
    ]
    delivered: list[int] = []
    outcomes = predict_runner(model)(jobs, lambda i, o: delivered.append(i))
    assert sorted(delivered) == [0, 1, 2, 3]
    assert [o.stats["seed"] for o in outcomes] == [j.params.seed for j in jobs]


# --- enumeration --------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_enumerate_ranks_every_label_by_energy(
    labels_models: Path, backend: BackendChoice, temperature: float
) -> None:
    model = load_registry(Settings(models_dir=labels_models, backend=backend)).get("labels")
    x = np.array([[0.3, 0.8], [-1.0, 0.25]], F32)
    job = make_job(model, x, k=3, temperature=temperature, seed=0)
    assert job.params.method == "enumerate"
    (outcome,) = predict(model, job)
    energy = -(x.astype(np.float64) @ Labels().w.detach().numpy().astype(np.float64))  # [N, 3]
    for row in range(len(x)):
        ranked = np.argsort(energy[row])
        weights = np.exp(-(energy[row] - energy[row].min()) / temperature)
        weights /= weights.sum()
        predictions = outcome.predictions[row]
        assert [p["y"] for p in predictions] == [[int(label)] for label in ranked]
        np.testing.assert_allclose(
            [p["energy"] for p in predictions], energy[row, ranked], rtol=1e-6
        )
        np.testing.assert_allclose([p["mass"] for p in predictions], weights[ranked], rtol=1e-6)
        assert all(p["converged"] is None for p in predictions)
    assert outcome.stats["method"] == "enumerate"
    assert outcome.stats["candidates"] == 2 * 3
    # the manifest's k keeps the best two
    (top,) = predict(model, make_job(model, x, seed=0))
    assert [len(row) for row in top.predictions] == [2, 2]
    assert [p["y"] for p in top.predictions[0]] == [p["y"] for p in outcome.predictions[0][:2]]


def test_labels_module_matches_the_closed_form() -> None:
    """The reference energies above come from the module's weights: check them once."""
    x = torch.tensor([[0.3, 0.8]])
    energy = Labels()(x.repeat(3, 1), torch.tensor([[0.0], [1.0], [2.0]]))
    np.testing.assert_allclose(energy.detach().numpy(), [-0.3, -1.3, 0.65], rtol=1e-6)
