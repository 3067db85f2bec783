"""A job whose caller is gone leaves the batch at the next step: its rows drop out of every
later backend call, and its batch mates' answers do not change."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest

from app.config import BackendChoice, Settings
from app.inference.control import Control
from app.inference.params import resolve
from app.inference.predict import predict_runner
from app.inference.sampling import SampleJob, SampleParams, sample_runner
from app.inference.search import SearchJob
from app.registry.backends.base import Array, EnergyOutput
from app.registry.loader import LoadedModel, load_registry

X = np.array([[0.5, -1.0]], dtype=np.float32)


class CallLog:
    """The real backend, recording the rows of every call and running ``at_call[n]`` just
    before call n (1-based)."""

    def __init__(self, model: LoadedModel, at_call: dict[int, Callable[[], None]]) -> None:
        self.inner = model.backend
        self.name = self.inner.name
        self.rows: list[int] = []
        self.at_call = at_call

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        action = self.at_call.get(len(self.rows) + 1)
        if action is not None:
            action()
        self.rows.append(len(inputs["y"]))
        return self.inner.energy(inputs, grad)

    @property
    def has_decoder(self) -> bool:
        return self.inner.has_decoder

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        return self.inner.decode(inputs)


@pytest.fixture(scope="module")
def quad(analytic_models: Path) -> LoadedModel:
    settings = Settings(models_dir=analytic_models, backend=BackendChoice.ONNX)
    model = load_registry(settings).get("quad", 1)
    assert model.rows_independent
    return model


def logged(model: LoadedModel, at_call: dict[int, Callable[[], None]]) -> CallLog:
    return CallLog(model, at_call)


def search_job(model: LoadedModel, seed: int) -> SearchJob:
    params = resolve(model.manifest, {"seed": seed, "num_starts": 8, "steps": 50, "tol": 0})
    return SearchJob(x=X, rows_x=1, params=params)


@pytest.mark.parametrize("how", ["cancelled", "expired"])
def test_a_search_job_whose_caller_is_gone_leaves_at_the_next_step(
    quad: LoadedModel, how: str
) -> None:
    gone, stays = search_job(quad, 1), search_job(quad, 2)

    def leave() -> None:
        if how == "cancelled":
            gone.control.cancelled = True
        else:
            gone.control.deadline = time.time() - 1

    backend = logged(quad, {5: leave})
    model = dataclasses.replace(quad, backend=backend)
    first, second = predict_runner(model)([gone, stays], None)
    assert first is None  # nobody to answer
    assert second is not None
    assert backend.rows[:5] == [16] * 5  # both jobs until the step it went away
    assert set(backend.rows[5:]) == {8}  # then only the job that stays
    (alone,) = predict_runner(quad)([search_job(quad, 2)], None)
    assert alone is not None
    assert second.predictions == alone.predictions  # its batch mate's answer is unchanged


def sample_job(seed: int) -> SampleJob:
    params = SampleParams(
        n=4, chains=4, steps=40, thin=1, step_size=0.01, temperature=1.0, seed=seed, seeded=True
    )
    return SampleJob(x=X, rows_x=1, params=params, control=Control())


def test_a_sampling_chain_past_its_deadline_leaves_at_the_next_step(quad: LoadedModel) -> None:
    gone, stays = sample_job(1), sample_job(2)

    def expire() -> None:
        gone.control.deadline = time.time() - 1

    backend = logged(quad, {3: expire})
    model = dataclasses.replace(quad, backend=backend)
    first, second = sample_runner(model)([gone, stays])
    assert first is None  # 504 for its caller: no partial samples
    assert second is not None
    assert backend.rows[:3] == [8, 8, 8]
    assert set(backend.rows[3:]) == {4}
    (alone,) = sample_runner(quad)([sample_job(2)])
    assert alone is not None
    assert second.samples == alone.samples


def test_chains_of_different_lengths_leave_when_done(quad: LoadedModel) -> None:
    short, long = sample_job(1), sample_job(2)
    short = dataclasses.replace(short, params=dataclasses.replace(short.params, steps=5))
    backend = logged(quad, {})
    model = dataclasses.replace(quad, backend=backend)
    results = sample_runner(model)([short, long])
    assert all(r is not None for r in results)
    # the short job's 4 chains run 5 + 3 steps, then only the long job's rows remain
    assert backend.rows == [8] * short.params.chain_steps + [4] * (
        long.params.chain_steps - short.params.chain_steps
    )


def test_a_job_cancelled_before_its_batch_runs_is_not_computed(quad: LoadedModel) -> None:
    job = sample_job(1)
    job.control.cancelled = True
    backend = logged(quad, {})
    assert sample_runner(dataclasses.replace(quad, backend=backend))([job]) == [None]
    assert backend.rows == []
