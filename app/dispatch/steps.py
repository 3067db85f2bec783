"""Iteration-level scheduling of searches (``EBM_ADMISSION=step``): the continuous
batching of LLM servers, applied to energy minimisation.

With whole-search admission (``search``, the :class:`~app.dispatch.batcher.Batcher`) a job
that arrives while a search runs waits for all of it, and one long search holds the compute
thread until it ends. Here a search is a sequence of steps and the scheduler owns the loop:

- **Lanes.** One lane per model, version and method (and, on a backend whose rows depend on
  the batch, one per seeded job, which must replay alone): one live :class:`Search` whose
  jobs share every backend call.
- **Admission at step boundaries.** A job waiting for its lane joins the lane's search
  before its next step, as long as the rows fit ``max_rows``; jobs that stop (step budget,
  convergence, deadline: partial; cancelled or expired: no answer) leave at the boundary
  and are answered at once.
- **Fair share across lanes.** Each lane accumulates the compute time its steps took; the
  next step goes to the lane that has had least (a lane that arrives starts level with the
  least-served one, so it neither starves the others nor is starved). A long search on one
  model delays another model's step by about one of its own steps, not by the whole search.

The step loop runs on a thread of its own (backend calls release the GIL), so steps
follow one another without a hand-off to the event loop in between.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from app.dispatch.batcher import BatcherStats, expire
from app.dispatch.drain import DrainRate
from app.errors import Overloaded, ShuttingDown
from app.inference.predict import PredictOutcome, to_predictions
from app.inference.search import Candidates, Search, SearchJob
from app.registry.loader import LoadedModel

log = logging.getLogger("ebm.steps")


#: Jobs that arrive while a lane's search runs join it in groups: at the first boundary
#: where the waiting rows reach this share of the running rows, or where the oldest has
#: waited this many of the lane's steps. Each admission costs a boundary with a pass over
#: the jobs, a merge of the row state and a re-index, and jobs admitted together stop
#: together (one compaction): one at a time, under a closed loop of 32 jobs, a third of all
#: steps were such boundaries. Four steps are a few percent of a search's latency.
ADMIT_SHARE = 0.25
ADMIT_WAIT_STEPS = 4


@dataclass(eq=False)
class _Waiting:
    job: SearchJob
    future: asyncio.Future[PredictOutcome]
    enqueued_at: float = field(default_factory=time.monotonic)
    lane_steps: int = 0  # the lane's step count when it arrived


@dataclass(eq=False)
class _Lane:
    model: LoadedModel
    name: str
    max_rows: int
    pending: deque[_Waiting] = field(default_factory=deque)
    search: Search | None = None
    running: list[_Waiting] = field(default_factory=list)  # by segment index of ``search``
    served_s: float = 0.0  # compute time its steps have had (fair share)
    steps: int = 0  # steps taken, for the admission rule

    @property
    def busy(self) -> bool:
        return bool(self.pending) or (self.search is not None and self.search.live)

    def admit(self) -> None:
        """Move the waiting jobs that fit into the search (before its next step): at once
        into an idle lane, else in groups (``ADMIT_SHARE``, ``ADMIT_WAIT_STEPS``)."""
        rows = self.search.rows if self.search is not None else 0
        if rows and self.pending and not self._admit_now(rows):
            return
        joining: list[_Waiting] = []
        while self.pending:
            waiting = self.pending[0]
            if waiting.future.done():  # expired or cancelled while waiting
                self.pending.popleft()
                continue
            if rows and rows + waiting.job.rows > self.max_rows:
                break
            joining.append(self.pending.popleft())
            rows += waiting.job.rows
        if not joining:
            return
        jobs = [w.job for w in joining]
        if self.search is None:
            self.search = Search(self.model, jobs)
        else:
            self.search.admit(jobs)
        self.running.extend(joining)

    def _admit_now(self, running_rows: int) -> bool:
        if self.steps - self.pending[0].lane_steps >= ADMIT_WAIT_STEPS:
            return True
        waiting = sum(w.job.rows for w in self.pending)
        return waiting >= ADMIT_SHARE * running_rows

    def step(self) -> list[tuple[_Waiting, PredictOutcome]]:
        """One step boundary and one step (on a compute thread); the jobs it answered."""
        assert self.search is not None
        answered: list[tuple[_Waiting, PredictOutcome]] = []
        coalesced = len(self.running)

        def deliver(i: int, found: Candidates) -> None:
            waiting = self.running[i]
            answered.append((waiting, to_predictions(self.model, waiting.job, found, coalesced)))

        self.search.advance(deliver)
        self.steps += 1
        kept = self.search.compact()  # answered or dropped: forget them and their rows
        if len(kept) < len(self.running):
            self.running = [self.running[i] for i in kept]
        return answered


class StepScheduler:
    """The searches of one engine, scheduled step by step across every model, on a thread
    of their own: the step loop never waits for the event loop (no hand-off per step) and
    computes while the event loop parses requests. Jobs arrive under a lock; answers go
    back with ``call_soon_threadsafe``."""

    def __init__(self, *, max_queue: int, name: str = "steps") -> None:
        self.max_queue = max_queue
        self.name = name
        self.stats = BatcherStats()
        self._lanes: dict[tuple[str, int, str, int], _Lane] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._drain = DrainRate()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def queued(self) -> int:
        with self._changed:
            return sum(len(lane.pending) for lane in self._lanes.values())

    async def submit(
        self, model: LoadedModel, job: SearchJob, deadline: float, max_rows: int
    ) -> PredictOutcome:
        """Queue one search job; ``deadline`` in ``loop.time()`` seconds. Raises
        Overloaded (queue full), DeadlineExceeded (not answered by its deadline)."""
        if self._closing:
            raise ShuttingDown(f"{self.name} is shutting down and takes no new work")
        waiting_now = self.queued
        if waiting_now >= self.max_queue:
            self.stats.rejected += 1
            raise Overloaded(
                f"{self.name}: {waiting_now} searches are already waiting (limit "
                f"{self.max_queue}); retry later",
                retry_after_s=min(60.0, self._drain.seconds_for(waiting_now)),
            )
        loop = asyncio.get_running_loop()
        self._loop = loop
        waiting = _Waiting(job, loop.create_future())
        with self._changed:
            lane = self._lane(model, job, max_rows)
            waiting.lane_steps = lane.steps
            lane.pending.append(waiting)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._changed.notify()
        timer = loop.call_at(deadline, self._expire, waiting)
        try:
            return await waiting.future
        finally:
            timer.cancel()

    def _lane(self, model: LoadedModel, job: SearchJob, max_rows: int) -> _Lane:
        # A seeded job on a backend whose rows depend on the batch replays only alone.
        alone = id(job) if job.params.seeded and not model.rows_independent else 0
        key = (model.name, model.version, job.params.method, alone)
        lane = self._lanes.get(key)
        if lane is None:
            busy = [other.served_s for other in self._lanes.values() if other.busy]
            lane = _Lane(model, f"{model.name}/{model.version}/{job.params.method}", max_rows)
            lane.served_s = min(busy, default=0.0)  # level with the least-served lane
            self._lanes[key] = lane
        return lane

    def _expire(self, waiting: _Waiting) -> None:
        # Waiting to be admitted, or in a search that could not stop in time to answer
        # partial: 504 either way.
        expire(self.name, self.stats, waiting.future, waiting.enqueued_at)

    async def close(self) -> None:
        """Take no new jobs, finish every accepted one, then stop the thread."""
        with self._changed:
            self._closing = True
            self._changed.notify()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    def _next_lane(self) -> _Lane | None:
        """The busy lane that has had least compute (waits for one); None once closing
        and idle."""
        with self._changed:
            while True:
                for key in [k for k, lane in self._lanes.items() if not lane.busy]:
                    del self._lanes[key]
                busy = list(self._lanes.values())
                if busy:
                    lane = min(busy, key=lambda lane: lane.served_s)
                    lane.admit()
                    return lane
                if self._closing:
                    return None
                self._changed.wait()

    def _run(self) -> None:
        while (lane := self._next_lane()) is not None:
            if lane.search is None or not lane.search.live:
                lane.search, lane.running = None, []
                continue
            started = time.monotonic()
            try:
                answered = lane.step()
            except Exception as exc:  # one bad search must not stop the others
                log.exception("%s: a step of %s failed", self.name, lane.name)
                self._answer([(w, exc) for w in lane.running])
                lane.search, lane.running = None, []
                continue
            took = time.monotonic() - started
            lane.served_s += took
            rows = lane.search.rows if lane.search is not None else 0
            self.stats.batches += 1
            self.stats.rows += rows
            self.stats.largest_batch_rows = max(self.stats.largest_batch_rows, rows)
            if answered:
                self.stats.jobs += len(answered)
                self._drain.observe(len(answered), took)
                self._answer(answered)
            if lane.search is not None and not lane.search.segments:
                lane.search = None

    def _answer(self, answers: Sequence[tuple[_Waiting, PredictOutcome | Exception]]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(_resolve_all, answers)


def _resolve_all(answers: Sequence[tuple[_Waiting, PredictOutcome | Exception]]) -> None:
    for waiting, answer in answers:
        if waiting.future.done():  # expired or cancelled meanwhile
            continue
        if isinstance(answer, Exception):
            waiting.future.set_exception(answer)
        else:
            waiting.future.set_result(answer)
