"""Dynamic batching: coalesce concurrent jobs into one backend call, split results back.

One :class:`Batcher` serves one (model, version, operation). It is used in-process by the
embedded dispatcher and, inside ``ebm worker``, behind the Redis queue: one code path.

Policy, chosen so the batcher adds nothing when there is nothing to wait for:

- A job that finds the batcher idle runs at once: no timer, no waiting for company.
- Jobs that arrive while a batch is computing queue up and all run together next, up to
  ``max_rows`` rows (a single job larger than that runs alone; it is never split).
- Only under load (other jobs were already queued behind the first) does the batcher wait for
  the batch to fill up: at most ``max_delay_s`` after the first job arrived, and never longer
  than the batch is expected to compute. Jobs that arrive while a batch computes run in the
  next one anyway, so waiting longer than a batch takes only delays everyone: with one-pair
  scores of ~50 us, a 2 ms wait capped four closed-loop clients at a third of their
  throughput.
- The queue is bounded (``Overloaded`` -> 429) and every job has a deadline: a job whose
  deadline passes before its batch starts is dropped, its caller gets ``DeadlineExceeded``.
- A batch expected to take less than ``inline_below_s`` (scaled from the last measured
  batch) runs on the event loop itself: handing a 30 us backend call to a thread and
  waking the loop afterwards costs several times the call. Longer batches run in the
  executor so the loop keeps parsing requests meanwhile. When the batcher is idle and such
  a batch is expected, the first job of a loop turn yields once, so the turn's other
  arrivals queue up, and computes them all in its own task (``_flush``): the coalescing of
  waking the batcher's task, without its task switches, and without a deadline timer per
  job (they run within the turn; a job the flush leaves to the task gets its timer then).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.dispatch.drain import DrainRate
from app.errors import DeadlineExceeded, Overloaded, ShuttingDown

P = TypeVar("P")  # what a job carries to the backend
R = TypeVar("R")  # what comes back for one job

#: Runs a batch in a compute thread; returns one result per payload, in order.
BatchRunner = Callable[[Sequence[P]], Sequence[R]]
#: A runner that may also hand job i's result over early, through ``deliver(i, result)``
#: (a search stops some jobs before others: they need not wait for the whole batch).
EarlyRunner = Callable[[Sequence[P], Callable[[int, R], None]], Sequence[R]]

log = logging.getLogger("ebm.batcher")


@dataclass(eq=False)
class Job(Generic[P, R]):
    payload: P
    rows: int
    deadline: float  # loop.time() seconds
    future: asyncio.Future[R]
    enqueued_at: float = field(default_factory=time.monotonic)
    timer: asyncio.TimerHandle | None = None  # answers 504 at the deadline (see _arm)


@dataclass
class BatcherStats:
    batches: int = 0
    jobs: int = 0
    rows: int = 0
    expired: int = 0
    rejected: int = 0
    largest_batch_rows: int = 0


class Batcher(Generic[P, R]):
    def __init__(
        self,
        runner: BatchRunner[P, R] | None = None,
        *,
        early_runner: EarlyRunner[P, R] | None = None,
        executor: Executor,
        max_rows: int,
        max_delay_s: float,
        max_queue: int,
        inline_below_s: float = 0.0,
        name: str = "batcher",
    ) -> None:
        if (runner is None) == (early_runner is None):
            raise ValueError("give exactly one of runner and early_runner")
        self._runner = runner
        self._early_runner = early_runner
        self._executor = executor
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.inline_below_s = inline_below_s
        self.name = name
        self.stats = BatcherStats()
        self._queue: deque[Job[P, R]] = deque()
        self._arrived = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # the task holds a batch (collecting it or computing it)
        self._flush_pending = False  # a _flush callback is scheduled
        self._last_batch_s = 0.0
        self._last_batch_rows = 0
        self._drain = DrainRate()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, payload: P, rows: int, deadline: float) -> R:
        """Queue one job and wait for its result; ``deadline`` is in ``loop.time()`` seconds."""
        if self._closing:
            raise ShuttingDown(f"{self.name} is shutting down and takes no new work")
        if len(self._queue) >= self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(
                f"{self.name}: {len(self._queue)} jobs are already queued (limit "
                f"{self.max_queue}); retry later",
                # When the queue will have drained at the rate it has been draining (a
                # batch serves many jobs: the last batch's time x queue length was ~15x
                # too pessimistic).
                retry_after_s=min(60.0, self._drain.seconds_for(len(self._queue))),
            )
        loop = asyncio.get_running_loop()
        job: Job[P, R] = Job(payload, rows, deadline, loop.create_future())
        self._queue.append(job)
        if not self._busy and self._expected_s(rows) < self.inline_below_s:
            # Idle, and the last batch says this one runs inline: the first job of this loop
            # turn lets the turn's other arrivals queue up, then computes them all in its
            # own task, without waking the batcher's task (a task switch each way cost as
            # much as a one-pair backend call) and without waiting to be woken itself.
            leads = not self._flush_pending
            self._flush_pending = True
        else:
            leads = False
            self._wake_task(loop)
            self._arm(job, loop)
        try:
            if leads:
                try:
                    await asyncio.sleep(0)
                except asyncio.CancelledError:
                    job.future.cancel()  # its caller is gone: the flush skips it
                    loop.call_soon(self._flush)  # the others of this turn still run
                    raise
                self._flush()
            return await job.future  # (done already when this job's task flushed)
        finally:
            if job.timer is not None:
                job.timer.cancel()

    def _arm(self, job: Job[P, R], loop: asyncio.AbstractEventLoop) -> None:
        """The caller stops waiting at its deadline even if the batch is still running. A
        job computed by its turn's ``_flush`` needs no timer (its deadline is checked when
        it runs, within the turn); it gets one if the flush leaves it to the task."""
        if job.timer is None:
            job.timer = loop.call_at(job.deadline, self._expire, job)

    def _expire(self, job: Job[P, R]) -> None:
        expire(self.name, self.stats, job.future, job.enqueued_at)

    def _wake_task(self, loop: asyncio.AbstractEventLoop) -> None:
        self._arrived.set()
        if self._task is None:
            self._task = loop.create_task(self._run_forever(), name=self.name)

    async def close(self) -> None:
        """Stop taking jobs, finish everything already accepted, then stop the loop."""
        self._closing = True
        self._wake_task(asyncio.get_running_loop())
        assert self._task is not None
        await self._task

    async def _run_forever(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._arrived.clear()
                await self._arrived.wait()
                continue
            self._busy = True
            try:
                batch = await self._collect()
                if batch:
                    await self._run(batch)
            finally:
                self._busy = False

    def _flush(self) -> None:
        """Compute the queued jobs on the event loop, batch by batch, unless the task holds
        a batch (it takes them next) or a batch is now expected to be too slow to run
        inline (the task computes it in the executor)."""
        self._flush_pending = False
        loop = asyncio.get_running_loop()
        while self._queue and not self._busy:
            live = self._live(self._take_batch(), loop)
            if not live:
                continue
            rows = sum(job.rows for job in live)
            if self._expected_s(rows) >= self.inline_below_s:
                self._queue.extendleft(reversed(live))
                self._wake_task(loop)
                break
            self._compute(live, rows, loop)
        for job in self._queue:  # left to the task
            self._arm(job, loop)

    def _take_fitting(self, batch: list[Job[P, R]], rows: int) -> int:
        """Move queued jobs into ``batch`` while they fit in ``max_rows``."""
        while self._queue:
            job = self._queue[0]
            if job.future.done():  # expired or cancelled while queued: drop it
                self._queue.popleft()
                continue
            if rows + job.rows > self.max_rows:
                break
            batch.append(self._queue.popleft())
            rows += job.rows
        return rows

    def _take_batch(self) -> list[Job[P, R]]:
        """The first queued job (empty if it is done already) and the next ones that fit."""
        first = self._queue.popleft()
        if first.future.done():
            return []
        batch = [first]
        self._take_fitting(batch, first.rows)
        return batch

    async def _collect(self) -> list[Job[P, R]]:
        batch = self._take_batch()
        if not batch:
            return []
        rows = sum(job.rows for job in batch)
        first = batch[0]
        under_load = len(batch) > 1
        if under_load and self.max_delay_s > 0 and rows < self.max_rows and not self._closing:
            loop = asyncio.get_running_loop()
            delay = min(self.max_delay_s, self._expected_s(rows))
            until = loop.time() + delay - (time.monotonic() - first.enqueued_at)
            while rows < self.max_rows and not self._queue_blocked(rows):
                remaining = until - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                rows = self._take_fitting(batch, rows)
        return batch

    def _batch_call(
        self, live: list[Job[P, R]], loop: asyncio.AbstractEventLoop
    ) -> Callable[[Sequence[P]], Sequence[R]]:
        if self._runner is not None:
            return self._runner
        early = self._early_runner
        assert early is not None

        def deliver(i: int, result: R) -> None:  # from the compute thread
            loop.call_soon_threadsafe(_resolve, live[i].future, result)

        return lambda payloads: early(payloads, deliver)

    def _expected_s(self, rows: int) -> float:
        """The last batch's duration scaled to ``rows``; unknown (inf) before the first."""
        if not self._last_batch_rows:
            return float("inf")
        return self._last_batch_s * max(1.0, rows / self._last_batch_rows)

    def _queue_blocked(self, rows: int) -> bool:
        """The next queued job would not fit: waiting longer cannot grow this batch."""
        return bool(self._queue) and rows + self._queue[0].rows > self.max_rows

    def _live(self, batch: list[Job[P, R]], loop: asyncio.AbstractEventLoop) -> list[Job[P, R]]:
        """The jobs of ``batch`` still waited for; those past their deadline get their 504."""
        now = loop.time()
        live = []
        for job in batch:
            if job.deadline <= now:
                self._expire(job)
            elif not job.future.done():
                live.append(job)
        return live

    async def _run(self, batch: list[Job[P, R]]) -> None:
        loop = asyncio.get_running_loop()
        live = self._live(batch, loop)
        if not live:
            return
        rows = sum(job.rows for job in live)
        if self._expected_s(rows) < self.inline_below_s:
            self._compute(live, rows, loop)
            return
        call = self._batch_call(live, loop)
        # The compute alone, timed in the thread: with the hand-off to the thread and back
        # counted, a batch looked slower than it computes, and every later batch stayed off
        # the event loop once one had gone to the executor.
        took: list[float] = []

        def timed(payloads: Sequence[P]) -> Sequence[R]:
            started = time.monotonic()
            try:
                return call(payloads)
            finally:
                took.append(time.monotonic() - started)

        try:
            results = await loop.run_in_executor(
                self._executor, timed, [job.payload for job in live]
            )
        except Exception as exc:  # one bad batch must not stop the loop; callers get the error
            self._fail(live, exc)
            return
        finally:
            if took:
                self._measured(rows, took[0])
        self._answer(live, results)

    def _compute(self, live: list[Job[P, R]], rows: int, loop: asyncio.AbstractEventLoop) -> None:
        """Run a batch on the event loop itself (expected to take under ``inline_below_s``)."""
        started = time.monotonic()
        try:
            results = self._batch_call(live, loop)([job.payload for job in live])
        except Exception as exc:
            self._fail(live, exc)
            return
        finally:
            self._measured(rows, time.monotonic() - started)
        self._answer(live, results)

    def _measured(self, rows: int, seconds: float) -> None:
        self._last_batch_s = seconds
        self._last_batch_rows = rows

    def _fail(self, live: list[Job[P, R]], exc: Exception) -> None:
        log.exception("%s: batch of %d jobs failed", self.name, len(live), exc_info=exc)
        for job in live:
            if not job.future.done():
                job.future.set_exception(exc)

    def _answer(self, live: list[Job[P, R]], results: Sequence[R]) -> None:
        self.stats.batches += 1
        self.stats.jobs += len(live)
        self._drain.observe(len(live), self._last_batch_s)
        self.stats.rows += self._last_batch_rows
        self.stats.largest_batch_rows = max(self.stats.largest_batch_rows, self._last_batch_rows)
        for job, result in zip(live, results, strict=True):
            _resolve(job.future, result)


def expire(name: str, stats: BatcherStats, future: asyncio.Future[Any], since: float) -> None:
    """A job's deadline passed before it was answered: its caller gets 504 now (what is
    still computing for it leaves at its next step, its Control says so)."""
    if future.done():
        return
    stats.expired += 1
    waited_ms = (time.monotonic() - since) * 1000
    future.set_exception(DeadlineExceeded(f"{name}: deadline passed after {waited_ms:.0f} ms"))


def _resolve(future: asyncio.Future[R], result: R) -> None:
    if not future.done():  # expired, cancelled, or already handed over early
        future.set_result(result)
