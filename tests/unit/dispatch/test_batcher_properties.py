"""Properties of coalescing: jobs concatenated into one backend call and split back.

However jobs are grouped into batches, each gets exactly its own rows, in order, with the
same bits as when it runs alone; no row is lost or duplicated, and the batcher packs its
queue greedily in arrival order up to ``max_rows`` (a larger job runs alone, never split).
The energy is a tiny numpy one computed column by column, so its rows cannot depend on the
batch around them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.dispatch.batcher import Batcher
from app.inference.scoring import ScoreJob, score_runner, split_output
from app.registry.backends.base import Array, EnergyOutput

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=60)


class ColumnEnergy:
    """E(x, y) = sum_c (y_c - (2 x_c + 0.5))^2, dE/dy = 2 (y - 2 x - 0.5), row by row."""

    name = "numpy"
    has_decoder = False

    def __init__(self) -> None:
        self.calls: list[int] = []  # rows per backend call

    def energy(self, inputs: Mapping[str, Array], grad: bool) -> EnergyOutput:
        x, y = inputs["x"], inputs["y"]
        self.calls.append(len(y))
        diff = y - (np.float32(2) * x + np.float32(0.5))
        energy = diff[:, 0] * diff[:, 0]
        for c in range(1, diff.shape[1]):
            energy = energy + diff[:, c] * diff[:, c]
        grads = {"y": np.float32(2) * diff} if grad else {}
        return EnergyOutput(energy=energy, grads=grads)

    def decode(self, inputs: Mapping[str, Array]) -> Array:
        raise NotImplementedError


def make_jobs(rows: Sequence[int], dim: int, seed: int) -> list[ScoreJob]:
    rng = np.random.default_rng(seed)
    return [
        ScoreJob(
            {
                "x": rng.standard_normal((n, dim), dtype=np.float32),
                "y": rng.standard_normal((n, dim), dtype=np.float32),
            }
        )
        for n in rows
    ]


def same(a: EnergyOutput, b: EnergyOutput) -> bool:
    """Equal bit for bit, gradients included."""
    return (
        a.energy.shape == b.energy.shape
        and a.energy.tobytes() == b.energy.tobytes()
        and a.grads.keys() == b.grads.keys()
        and all(
            a.grads[k].shape == b.grads[k].shape and a.grads[k].tobytes() == b.grads[k].tobytes()
            for k in a.grads
        )
    )


def greedy_batches(rows: Sequence[int], max_rows: int) -> list[list[int]]:
    """The packing the batcher promises for a queue that is full before it starts: in order,
    each batch as many jobs as fit in ``max_rows``, a job larger than that alone."""
    batches: list[list[int]] = []
    used = 0
    for i, n in enumerate(rows):
        if batches and used + n <= max_rows:
            batches[-1].append(i)
            used += n
        else:
            batches.append([i])
            used = n
    return batches


job_rows = st.lists(st.integers(1, 9), min_size=1, max_size=12)


@SETTINGS
@given(rows=st.lists(st.integers(0, 7), min_size=1, max_size=10), dim=st.integers(1, 3))
def test_split_output_gives_each_job_its_own_rows_in_order(rows: list[int], dim: int) -> None:
    total = sum(rows)
    energy = np.arange(total, dtype=np.float32) * np.float32(0.5) - 3
    grad = np.arange(total * dim, dtype=np.float32).reshape(total, dim)
    pieces = split_output(EnergyOutput(energy, {"y": grad}), rows)

    assert [len(p.energy) for p in pieces] == rows
    assert [len(p.grads["y"]) for p in pieces] == rows
    # Concatenated back: the original, each row exactly once and in place.
    np.testing.assert_array_equal(np.concatenate([p.energy for p in pieces]), energy)
    np.testing.assert_array_equal(np.concatenate([p.grads["y"] for p in pieces]), grad)
    start = 0
    for n, piece in zip(rows, pieces, strict=True):
        np.testing.assert_array_equal(piece.energy, energy[start : start + n])
        np.testing.assert_array_equal(piece.grads["y"], grad[start : start + n])
        start += n


@SETTINGS
@given(
    rows=job_rows,
    dim=st.integers(1, 3),
    grad=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_coalesced_call_answers_each_job_as_it_would_alone(
    rows: list[int], dim: int, grad: bool, seed: int
) -> None:
    jobs = make_jobs(rows, dim, seed)
    backend = ColumnEnergy()
    run = score_runner(backend, grad)
    together = run(jobs)
    assert backend.calls == [sum(rows)]  # one backend call for all of them
    alone = [run([job])[0] for job in jobs]
    assert len(together) == len(jobs)
    for job, got, expected in zip(jobs, together, alone, strict=True):
        assert len(got.energy) == job.rows
        assert same(got, expected)


@SETTINGS
@given(rows=job_rows, max_rows=st.integers(1, 20), seed=st.integers(0, 2**32 - 1))
def test_the_batcher_packs_greedily_in_order_and_every_job_gets_its_own_answer(
    rows: list[int], max_rows: int, seed: int
) -> None:
    jobs = make_jobs(rows, 2, seed)
    index = {id(job): i for i, job in enumerate(jobs)}
    backend = ColumnEnergy()
    run = score_runner(backend, True)
    batches: list[list[int]] = []

    def recording(payloads: Sequence[ScoreJob]) -> list[EnergyOutput]:
        batches.append([index[id(job)] for job in payloads])
        return run(payloads)

    async def scenario() -> list[EnergyOutput]:
        with ThreadPoolExecutor(1) as executor:
            batcher: Batcher[ScoreJob, EnergyOutput] = Batcher(
                recording,
                executor=executor,
                max_rows=max_rows,
                max_delay_s=0.0,
                max_queue=len(jobs),
                inline_below_s=1.0,
            )
            deadline = asyncio.get_running_loop().time() + 30
            # Every job is queued before the batcher's loop first runs.
            results = await asyncio.gather(
                *(batcher.submit(job, job.rows, deadline) for job in jobs)
            )
            await batcher.close()
            assert batcher.stats.jobs == len(jobs)
            assert batcher.stats.rows == sum(rows)
            assert batcher.stats.batches == len(batches)
            return results

    results = asyncio.run(scenario())

    # Each job in exactly one batch, in arrival order: nothing lost, nothing twice.
    assert [i for batch in batches for i in batch] == list(range(len(jobs)))
    for batch in batches:
        assert len(batch) == 1 or sum(rows[i] for i in batch) <= max_rows
    for before, after in itertools.pairwise(batches):  # full: the next did not fit
        assert sum(rows[i] for i in before) + rows[after[0]] > max_rows
    assert batches == greedy_batches(rows, max_rows)
    assert backend.calls == [sum(rows[i] for i in batch) for batch in batches]

    # Whatever the grouping, the same bits as each job alone.
    alone = [run([job])[0] for job in jobs]
    for got, expected in zip(results, alone, strict=True):
        assert same(got, expected)
