"""Iteration-level scheduling (EBM_ADMISSION=step): jobs join a running search at a step
boundary without changing anyone's answer, and lanes share the compute thread fairly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from app.config import BackendChoice, Settings
from app.dispatch.steps import ADMIT_SHARE, ADMIT_WAIT_STEPS, StepScheduler, _Lane, _Waiting
from app.errors import DeadlineExceeded
from app.inference.control import Control, deadline_after
from app.inference.params import resolve
from app.inference.predict import PredictOutcome
from app.inference.search import Candidates, Search, SearchJob
from app.registry.loader import LoadedModel, Registry, load_registry

X = np.array([[0.5, -1.0], [-0.3, 0.8]], dtype=np.float32)


@pytest.fixture(scope="module")
def registry(analytic_models: Path) -> Registry[LoadedModel]:
    return load_registry(Settings(models_dir=analytic_models, backend=BackendChoice.ONNX))


def job(model: LoadedModel, seed: int, method: str = "gd", steps: int = 40) -> SearchJob:
    params = resolve(
        model.manifest,
        {"seed": seed, "method": method, "num_starts": 8, "steps": steps, "tol": 0},
    )
    return SearchJob(x=X, rows_x=len(X), params=params)


def alone(model: LoadedModel, search_job: SearchJob) -> Candidates:
    (found,) = Search(model, [search_job]).run()
    assert found is not None
    return found


@pytest.mark.parametrize("method", ["gd", "langevin", "dfo"])
def test_a_job_admitted_mid_search_answers_the_same_bits_as_alone(
    registry: Registry[LoadedModel], method: str
) -> None:
    model = registry.get("quad", 1)
    assert model.rows_independent
    first, second, third = job(model, 1, method), job(model, 2, method), job(model, 3, method)
    found: dict[int, Candidates] = {}
    search = Search(model, [first])
    order = [first]
    for step in range(500):
        if step == 7:
            search.admit([second])
            order.append(second)
        if step == 19:
            kept = search.compact()
            order = [order[i] for i in kept]
            search.admit([third])
            order.append(third)
        if not search.advance(lambda i, c, jobs=order: found.__setitem__(id(jobs[i]), c)):
            break
    for each in (first, second, third):
        expected = alone(model, each)
        got = found[id(each)]
        assert got.steps_run == expected.steps_run
        np.testing.assert_array_equal(got.y, expected.y)
        np.testing.assert_array_equal(got.energy, expected.energy)


def _scheduler() -> StepScheduler:
    return StepScheduler(max_queue=16)


def test_a_short_search_on_another_lane_is_not_held_behind_a_long_one(
    registry: Registry[LoadedModel],
) -> None:
    """A 100,000-step search on quad v1 runs (seconds); a 40-step one on quad v2 arrives
    after it started and is answered while the long one is still running: lanes take
    steps in turn by compute time."""
    long_model, short_model = registry.get("quad", 1), registry.get("quad", 2)
    long_job = job(long_model, 1, steps=100_000)

    async def scenario() -> tuple[PredictOutcome, bool, int]:
        scheduler = _scheduler()
        loop = asyncio.get_running_loop()
        long = asyncio.ensure_future(scheduler.submit(long_model, long_job, loop.time() + 60, 4096))
        await asyncio.sleep(0.05)
        short = await scheduler.submit(short_model, job(short_model, 2), loop.time() + 60, 4096)
        still_running = not long.done()
        long_job.control.cancelled = True  # the caller leaves: it drops out at the next step
        long.cancel()
        await scheduler.close()
        return short, still_running, scheduler.stats.batches

    short, still_running, steps = asyncio.run(scenario())
    assert short.stats["steps_run"] == 40
    assert still_running
    assert steps < 10_000  # the long search did not run to its end first


def test_jobs_of_one_lane_share_steps_and_answer_as_alone(
    registry: Registry[LoadedModel],
) -> None:
    model = registry.get("quad", 1)
    # 400 steps: long enough to overlap arrivals 2 ms apart on a fast machine (a 40-step
    # quad search can end before the next job arrives, and then nobody shares a step)
    jobs = [job(model, seed, steps=400) for seed in range(4)]

    async def scenario() -> tuple[list[PredictOutcome], StepScheduler]:
        scheduler = _scheduler()
        loop = asyncio.get_running_loop()
        tasks = []
        for each in jobs:
            tasks.append(
                asyncio.ensure_future(scheduler.submit(model, each, loop.time() + 60, 4096))
            )
            await asyncio.sleep(0.002)  # arrivals spread over a few steps
        outcomes = list(await asyncio.gather(*tasks))
        await scheduler.close()
        return outcomes, scheduler

    outcomes, scheduler = asyncio.run(scenario())
    assert max(o.stats["coalesced_jobs"] for o in outcomes) > 1
    assert scheduler.stats.batches < sum(o.stats["steps_run"] for o in outcomes)
    for each, outcome in zip(jobs, outcomes, strict=True):
        expected = alone(model, each)
        best = outcome.predictions[0][0]
        assert best["energy"] == pytest.approx(float(expected.energy[0].min()), abs=0)


def test_a_job_still_waiting_at_its_deadline_gets_504(registry: Registry[LoadedModel]) -> None:
    model = registry.get("quad", 1)

    async def scenario() -> None:
        scheduler = _scheduler()
        loop = asyncio.get_running_loop()
        # The lane is full: a job of 4096 rows leaves no room for the next one.
        big = resolve(
            model.manifest,
            {"method": "gd", "seed": 0, "num_starts": 2048, "steps": 100_000, "tol": 0},
        )
        blocker = asyncio.ensure_future(
            scheduler.submit(
                model,
                SearchJob(X, len(X), big, control=Control(deadline_after(1500))),
                loop.time() + 1.5,
                4096,
            )
        )
        await asyncio.sleep(0.05)
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await scheduler.submit(model, job(model, 1), loop.time() + 0.2, 4096)
        outcome = await blocker
        assert outcome.stats["partial"] is True
        await scheduler.close()

    asyncio.run(scenario())


def test_jobs_arriving_at_a_running_lane_join_it_in_groups(
    registry: Registry[LoadedModel],
) -> None:
    """An idle lane admits at once; a running one holds newcomers until they make up
    ADMIT_SHARE of its rows or the oldest has waited ADMIT_WAIT_STEPS of its steps (one
    admission, one re-index and one later compaction for the group, not one per job)."""
    assert ADMIT_SHARE == 0.25  # (the counts below)
    model = registry.get("quad", 1)
    loop = asyncio.new_event_loop()
    try:
        lane = _Lane(model, "quad/1/gd", max_rows=4096)

        def arrive(seed: int) -> _Waiting:
            waiting = _Waiting(job(model, seed, steps=400), loop.create_future())
            waiting.lane_steps = lane.steps
            lane.pending.append(waiting)
            return waiting

        for seed in range(8):  # 8 jobs x 2 x x 8 starts = 128 rows
            arrive(seed)
        lane.admit()
        assert len(lane.running) == 8
        assert not lane.pending
        lane.step()
        arrive(8)  # 16 rows: under a quarter of 128
        for _ in range(ADMIT_WAIT_STEPS):
            lane.admit()
            assert len(lane.pending) == 1
            lane.step()
        lane.admit()  # it has waited ADMIT_WAIT_STEPS steps
        assert len(lane.running) == 9
        assert not lane.pending
        arrive(9)
        lane.admit()
        assert len(lane.pending) == 1
        arrive(10)  # 32 rows waiting: a quarter of 144 is 36
        lane.admit()
        assert len(lane.pending) == 2
        arrive(11)  # 48 rows
        lane.admit()
        assert len(lane.running) == 12
        assert not lane.pending
    finally:
        loop.close()
