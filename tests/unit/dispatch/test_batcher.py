"""The batcher coalesces, splits, bounds its queue, honours deadlines and loses nothing."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.dispatch.batcher import Batcher
from app.errors import DeadlineExceeded, Overloaded, ShuttingDown


class Recorder:
    """A runner that doubles numbers, records each batch, and can be held at a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, payloads: Sequence[int]) -> list[int]:
        self.entered.set()
        self.gate.wait(5)
        self.batches.append(list(payloads))
        return [2 * p for p in payloads]


def make(runner: Recorder, **kwargs: float) -> Batcher[int, int]:
    options = {"max_rows": 8, "max_delay_s": 0.0, "max_queue": 100} | kwargs
    return Batcher(
        runner,
        executor=ThreadPoolExecutor(1),
        max_rows=int(options["max_rows"]),
        max_delay_s=options["max_delay_s"],
        max_queue=int(options["max_queue"]),
        name="test",
    )


def far() -> float:
    return asyncio.get_running_loop().time() + 10


def test_jobs_arriving_during_a_batch_run_together_and_get_their_own_results() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner)
        runner.gate.clear()
        first = asyncio.ensure_future(batcher.submit(100, 1, far()))
        await asyncio.to_thread(runner.entered.wait, 5)  # batch 1 is computing
        rest = [asyncio.ensure_future(batcher.submit(i, 1, far())) for i in range(6)]
        await asyncio.sleep(0.01)
        runner.gate.set()
        assert await first == 200
        assert await asyncio.gather(*rest) == [0, 2, 4, 6, 8, 10]
        assert runner.batches == [[100], [0, 1, 2, 3, 4, 5]]
        assert batcher.stats.batches == 2
        assert batcher.stats.largest_batch_rows == 6

    asyncio.run(scenario())


def test_max_rows_splits_the_queue_and_an_oversized_job_runs_alone() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner, max_rows=4)
        runner.gate.clear()
        head = asyncio.ensure_future(batcher.submit(-1, 1, far()))
        await asyncio.to_thread(runner.entered.wait, 5)
        sizes = [2, 2, 3, 9, 1]
        jobs = [
            asyncio.ensure_future(batcher.submit(i, rows, far())) for i, rows in enumerate(sizes)
        ]
        await asyncio.sleep(0.01)
        runner.gate.set()
        await asyncio.gather(head, *jobs)
        # [0,1] fill 4 rows; 3 rows then 9 rows do not fit together; 9 runs alone.
        assert runner.batches == [[-1], [0, 1], [2], [3], [4]]

    asyncio.run(scenario())


def test_idle_job_runs_at_once_even_with_a_long_max_delay() -> None:
    async def scenario() -> None:
        batcher = make(Recorder(), max_delay_s=1.0)
        started = time.perf_counter()
        assert await batcher.submit(3, 1, far()) == 6
        assert time.perf_counter() - started < 0.2

    asyncio.run(scenario())


def test_under_load_the_batcher_waits_up_to_max_delay_for_more() -> None:
    async def scenario() -> None:
        runner = Recorder()
        # wide margins (0.45 s between the late arrival and the end of the wait): a loaded CI
        # machine delayed the late job past a 0.2 s wait once
        batcher = make(runner, max_delay_s=0.5)
        runner.gate.clear()
        head = asyncio.ensure_future(batcher.submit(0, 1, far()))
        await asyncio.to_thread(runner.entered.wait, 5)
        early = [asyncio.ensure_future(batcher.submit(i, 1, far())) for i in (1, 2)]
        await asyncio.sleep(0.3)  # the head batch takes 0.3 s: waiting is worth as long
        runner.gate.set()  # batch 2 now forms from [1, 2] and, being under load, waits
        await asyncio.sleep(0.05)
        late = asyncio.ensure_future(batcher.submit(3, 1, far()))
        await asyncio.gather(head, *early, late)
        assert runner.batches == [[0], [1, 2, 3]]

    asyncio.run(scenario())


def test_under_load_fast_batches_do_not_wait_for_company() -> None:
    """Waiting longer than a batch computes only delays it (who arrives meanwhile runs in
    the next one): with a 1 s max_delay, one-pair-fast batches of queued jobs ran 1 s late."""

    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner, max_delay_s=1.0)
        await batcher.submit(0, 1, far())  # a batch measured at well under a millisecond
        started = time.monotonic()
        jobs = [asyncio.ensure_future(batcher.submit(i, 1, far())) for i in (1, 2, 3)]
        await asyncio.gather(*jobs)  # queued together: under load, a batch of three
        assert time.monotonic() - started < 0.2
        assert runner.batches == [[0], [1, 2, 3]]

    asyncio.run(scenario())


def test_batching_off_runs_every_job_alone() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner, max_rows=1, max_delay_s=0.05)
        results = await asyncio.gather(*(batcher.submit(i, 1, far()) for i in range(5)))
        assert results == [0, 2, 4, 6, 8]
        assert all(len(batch) == 1 for batch in runner.batches)

    asyncio.run(scenario())


def test_full_queue_refuses_with_retry_after() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner, max_queue=2)
        runner.gate.clear()
        head = asyncio.ensure_future(batcher.submit(0, 1, far()))
        await asyncio.to_thread(runner.entered.wait, 5)
        queued = [asyncio.ensure_future(batcher.submit(i, 1, far())) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(3, 1, far())
        assert info.value.status_code == 429
        assert int(info.value.headers()["Retry-After"]) >= 1
        runner.gate.set()
        assert await asyncio.gather(head, *queued) == [0, 2, 4]  # accepted jobs all complete
        assert batcher.stats.rejected == 1

    asyncio.run(scenario())


def test_deadline_passing_in_the_queue_gives_504_and_skips_compute() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner)
        runner.gate.clear()
        head = asyncio.ensure_future(batcher.submit(0, 1, far()))
        await asyncio.to_thread(runner.entered.wait, 5)
        soon = asyncio.get_running_loop().time() + 0.02
        doomed = asyncio.ensure_future(batcher.submit(7, 1, soon))
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await doomed
        runner.gate.set()
        await head
        await batcher.submit(1, 1, far())
        assert [7] not in runner.batches
        assert all(7 not in batch for batch in runner.batches)
        assert batcher.stats.expired == 1

    asyncio.run(scenario())


def test_a_failing_batch_fails_its_jobs_and_the_loop_goes_on() -> None:
    calls = []

    def flaky(payloads: Sequence[int]) -> list[int]:
        calls.append(list(payloads))
        if len(calls) == 1:
            raise RuntimeError("backend exploded")
        return list(payloads)

    async def scenario() -> None:
        batcher: Batcher[int, int] = Batcher(
            flaky, executor=ThreadPoolExecutor(1), max_rows=8, max_delay_s=0, max_queue=8
        )
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.submit(1, 1, far())
        assert await batcher.submit(2, 1, far()) == 2

    asyncio.run(scenario())


def test_close_finishes_accepted_jobs_and_refuses_new_ones() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner)
        runner.gate.clear()
        jobs = [asyncio.ensure_future(batcher.submit(i, 1, far())) for i in range(4)]
        await asyncio.to_thread(runner.entered.wait, 5)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0.01)
        with pytest.raises(ShuttingDown):
            await batcher.submit(9, 1, far())
        runner.gate.set()
        await closing
        assert await asyncio.gather(*jobs) == [0, 2, 4, 6]

    asyncio.run(scenario())


def test_many_concurrent_jobs_each_get_their_own_answer() -> None:
    async def scenario() -> None:
        runner = Recorder()
        batcher = make(runner, max_rows=16, max_delay_s=0.001, max_queue=1000)
        results = await asyncio.gather(*(batcher.submit(i, 1, far()) for i in range(500)))
        assert results == [2 * i for i in range(500)]
        assert sum(len(b) for b in runner.batches) == 500
        assert max(len(b) for b in runner.batches) > 1

    asyncio.run(scenario())


def on_a_compute_thread(
    runner: Callable[[Sequence[float]], list[float]], inline_below_s: float
) -> Batcher[float, float]:
    """A batcher whose executor's threads are named ``compute...``, to tell where it ran."""
    return Batcher(
        runner,
        executor=ThreadPoolExecutor(1, thread_name_prefix="compute"),
        max_rows=8,
        max_delay_s=0,
        max_queue=8,
        inline_below_s=inline_below_s,
    )


def test_fast_batches_run_on_the_event_loop_slow_ones_in_the_executor() -> None:
    threads: list[str] = []

    def runner(payloads: Sequence[float]) -> list[float]:
        threads.append(threading.current_thread().name)
        time.sleep(payloads[0])
        return list(payloads)

    async def scenario(inline_below_s: float) -> None:
        batcher = on_a_compute_thread(runner, inline_below_s=inline_below_s)
        await batcher.submit(0.0, 1, far())  # first batch: no estimate yet, executor
        await batcher.submit(0.0, 1, far())  # measured fast: inline
        await batcher.submit(0.05, 1, far())  # still estimated fast: inline, measured slow
        await batcher.submit(0.0, 1, far())  # estimated slow now: executor

    asyncio.run(scenario(inline_below_s=0.01))
    assert [t.startswith("compute") for t in threads] == [True, False, False, True]
    threads.clear()
    asyncio.run(scenario(inline_below_s=0.0))
    assert all(t.startswith("compute") for t in threads)


def test_an_early_runner_hands_results_over_before_its_batch_ends() -> None:
    """A search stops some jobs before others: their callers must not wait for the rest."""
    release = threading.Event()

    def runner(payloads: Sequence[int], deliver: Callable[[int, int], None]) -> list[int]:
        deliver(0, payloads[0] * 10)  # job 0 is done at once
        release.wait(5)  # job 1 keeps computing until the test says so
        return [payloads[0] * 10, payloads[1] * 10]

    async def scenario() -> None:
        batcher: Batcher[int, int] = Batcher(
            early_runner=runner,
            executor=ThreadPoolExecutor(1),
            max_rows=8,
            max_delay_s=0.05,
            max_queue=10,
            name="early",
        )
        # Both are queued before the batcher's loop first runs: one batch of two.
        jobs = [asyncio.ensure_future(batcher.submit(v, 1, far())) for v in (1, 2)]
        done, pending = await asyncio.wait(jobs, timeout=2, return_when=asyncio.FIRST_COMPLETED)
        assert [t.result() for t in done] == [10]
        assert len(pending) == 1  # the second job is still computing
        release.set()
        assert await pending.pop() == 20
        assert batcher.stats.batches == 1

    asyncio.run(scenario())


def test_a_batcher_takes_exactly_one_kind_of_runner() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Batcher(executor=ThreadPoolExecutor(1), max_rows=1, max_delay_s=0, max_queue=1)


def test_retry_after_follows_the_measured_drain_rate() -> None:
    """A batch serves many jobs: 64 queued jobs that one 50 ms batch drains are told to come
    back in a second, not in 64 x 50 ms (the last batch's time per queued job, ~15x too
    pessimistic on a burst that really drained in 2.9 s)."""

    class Slow(Recorder):
        def __call__(self, payloads: Sequence[int]) -> list[int]:
            time.sleep(0.05)
            return super().__call__(payloads)

    async def scenario() -> None:
        runner = Slow()
        batcher = make(runner, max_rows=64, max_queue=64)
        await asyncio.gather(*(batcher.submit(i, 1, far()) for i in range(64)))  # measured
        runner.gate.clear()
        head = asyncio.ensure_future(batcher.submit(0, 1, far()))
        await asyncio.to_thread(runner.entered.wait, 5)
        queued = [asyncio.ensure_future(batcher.submit(i, 1, far())) for i in range(64)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(99, 1, far())
        assert info.value.retry_after_s < 1.0
        assert info.value.headers()["Retry-After"] == "1"
        runner.gate.set()
        await asyncio.gather(head, *queued)

    asyncio.run(scenario())


def test_jobs_a_flush_leaves_to_the_executor_still_get_504_at_their_deadline() -> None:
    threads: list[str] = []
    gate = threading.Event()

    def runner(payloads: Sequence[float]) -> list[float]:
        threads.append(threading.current_thread().name)
        if payloads[0] > 0:
            time.sleep(payloads[0])
        else:
            gate.wait(5)
        return list(payloads)

    async def scenario() -> None:
        batcher = on_a_compute_thread(runner, inline_below_s=0.01)
        await batcher.submit(0.004, 1, far())  # measured: ~4 ms a row, inline from now on
        loop = asyncio.get_running_loop()
        # Each alone looks inline; together (5 rows, ~20 ms) they go to the executor.
        jobs = [asyncio.ensure_future(batcher.submit(0.0, 1, far())) for _ in range(4)]
        short = asyncio.ensure_future(batcher.submit(0.0, 1, loop.time() + 0.1))
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(short, 2)  # while its batch is still held at the gate
        gate.set()
        assert await asyncio.gather(*jobs) == [0.0] * 4

    asyncio.run(scenario())
    assert [t.startswith("compute") for t in threads] == [True, True]


def test_a_batch_is_timed_by_its_compute_not_by_the_wait_for_the_loop() -> None:
    threads: list[str] = []
    entered = threading.Event()

    def runner(payloads: Sequence[float]) -> list[float]:
        threads.append(threading.current_thread().name)
        entered.set()
        time.sleep(0.005)
        return list(payloads)

    async def scenario() -> None:
        batcher = on_a_compute_thread(runner, inline_below_s=0.02)
        first = asyncio.ensure_future(batcher.submit(0.0, 1, far()))  # no estimate: thread
        await asyncio.to_thread(entered.wait, 5)
        time.sleep(0.1)  # the loop is busy elsewhere while the 5 ms batch finishes
        await first
        await batcher.submit(0.0, 1, far())  # 5 ms measured: inline

    asyncio.run(scenario())
    assert [t.startswith("compute") for t in threads] == [True, False]


def doubling_inline(max_rows: int) -> tuple[Batcher[int, int], list[list[int]]]:
    """A batcher that runs every batch inline once one was measured, and its batches."""
    batches: list[list[int]] = []

    def runner(payloads: Sequence[int]) -> list[int]:
        batches.append(list(payloads))
        return [2 * p for p in payloads]

    batcher: Batcher[int, int] = Batcher(
        runner,
        executor=ThreadPoolExecutor(1),
        max_rows=max_rows,
        max_delay_s=0,
        max_queue=8,
        inline_below_s=1.0,
    )
    return batcher, batches


def test_a_cancelled_first_job_of_a_loop_turn_does_not_strand_the_others() -> None:
    async def scenario() -> list[list[int]]:
        batcher, batches = doubling_inline(max_rows=8)
        assert await batcher.submit(1, 1, far()) == 2  # measured: inline from now on
        first = asyncio.ensure_future(batcher.submit(10, 1, far()))
        second = asyncio.ensure_future(batcher.submit(20, 1, far()))
        await asyncio.sleep(0)  # both queued; the first waits out the turn to compute both
        first.cancel()
        assert await asyncio.wait_for(second, 2) == 40
        with pytest.raises(asyncio.CancelledError):
            await first
        return batches

    assert asyncio.run(scenario()) == [[1], [20]]


def test_the_jobs_of_one_loop_turn_share_one_inline_batch() -> None:
    async def scenario() -> list[list[int]]:
        batcher, batches = doubling_inline(max_rows=4)
        await batcher.submit(0, 1, far())
        results = await asyncio.gather(*(batcher.submit(i, 1, far()) for i in range(6)))
        assert results == [2 * i for i in range(6)]
        return batches

    assert asyncio.run(scenario()) == [[0], [0, 1, 2, 3], [4, 5]]
