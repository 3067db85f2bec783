"""The compute engine: the one place jobs are computed, in embedded mode and in workers.

It owns the batchers (one per model, version and batch kind), the table from operation
to runner, and the compute threads. ``ebm serve`` in embedded mode calls
:meth:`Engine.run` from its routes; ``ebm worker`` calls it for the jobs it pulls from
Redis. A job's deadline and cancellation travel in its :class:`Control`: a caller that stops
waiting (its task is cancelled) marks the job cancelled, and the runner lets its rows leave
at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from app.config import Admission, Settings
from app.dispatch.batcher import Batcher, BatcherStats
from app.dispatch.steps import StepScheduler
from app.dispatch.wire import Envelope, Op, Result
from app.errors import ShuttingDown
from app.inference.control import seconds_left
from app.inference.predict import predict_runner
from app.inference.sampling import SampleJob, sample_runner
from app.inference.scoring import ScoreJob, score_runner
from app.inference.search import SearchJob
from app.registry.loader import LoadedModel, Registry
from app.registry.manifest import Batching


def batching_limits(batching: Batching, settings: Settings) -> tuple[int, float]:
    """(max rows, max delay in s): the manifest's, unless the environment overrides them."""
    max_rows = settings.max_batch_size or batching.max_batch_size
    delay_ms = batching.max_delay_ms if settings.max_delay_ms is None else settings.max_delay_ms
    return max_rows, delay_ms / 1000


@dataclass(frozen=True)
class Route:
    """Where one job goes: its batcher's kind and how to make that batcher's runner."""

    kind: str  # jobs of the same model, version and kind share backend calls
    runner: Callable[[], dict[str, Any]]  # Batcher kwargs: ``runner`` or ``early_runner``


def _score_route(model: LoadedModel, job: Any) -> Route:
    assert isinstance(job, ScoreJob)
    grad = job.grad
    return Route(
        "energy+grad" if grad else "energy",
        lambda: {"runner": score_runner(model.backend, grad)},
    )


def _predict_route(model: LoadedModel, job: Any) -> Route:
    assert isinstance(job, SearchJob)
    return Route(f"predict:{job.params.method}", lambda: {"early_runner": predict_runner(model)})


def _sample_route(model: LoadedModel, job: Any) -> Route:
    assert isinstance(job, SampleJob)
    job.decodes = job.decodes and model.backend.has_decoder
    return Route("sample", lambda: {"runner": sample_runner(model)})


#: The operation-to-runner table.
ROUTES: dict[Op, Callable[[LoadedModel, Any], Route]] = {
    "score": _score_route,
    "predict": _predict_route,
    "sample": _sample_route,
}


class Engine:
    def __init__(self, registry: Registry[LoadedModel], settings: Settings) -> None:
        self.registry = registry
        self._settings = settings
        # Backend calls run off the event loop so HTTP parsing (or Redis reading) continues
        # meanwhile; the libraries release the GIL while they compute.
        self._executor = ThreadPoolExecutor(
            max_workers=settings.compute_threads, thread_name_prefix="ebm-compute"
        )
        self._batchers: dict[tuple[str, int, str], Batcher[Any, Any]] = {}
        # EBM_ADMISSION=step: searches are scheduled step by step (app.dispatch.steps).
        self._steps: StepScheduler | None = None
        if settings.admission == Admission.STEP:
            self._steps = StepScheduler(max_queue=settings.max_queue)
        self._closed = False

    def _batcher(self, model: LoadedModel, route: Route) -> Batcher[Any, Any]:
        key = (model.name, model.version, route.kind)
        batcher = self._batchers.get(key)
        if batcher is None:
            max_rows, max_delay_s = batching_limits(model.manifest.batching, self._settings)
            batcher = Batcher(
                **route.runner(),
                executor=self._executor,
                max_rows=max_rows,
                max_delay_s=max_delay_s,
                max_queue=self._settings.max_queue,
                inline_below_s=self._settings.inline_below_ms / 1000,
                name=f"{model.name}/{model.version}/{route.kind}",
            )
            self._batchers[key] = batcher
        return batcher

    async def run(self, env: Envelope) -> Result:
        """Compute one job; raises the job's EBMError (504 at its deadline, ...)."""
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new work")
        model = self.registry.get(env.model, env.version)
        loop_deadline = asyncio.get_running_loop().time() + seconds_left(env.deadline)
        try:
            if self._steps is not None and isinstance(env.job, SearchJob):
                max_rows, _ = batching_limits(model.manifest.batching, self._settings)
                return await self._steps.submit(model, env.job, loop_deadline, max_rows)
            batcher = self._batcher(model, ROUTES[env.op](model, env.job))
            result: Result = await batcher.submit(env.job, env.job.rows, loop_deadline)
        except asyncio.CancelledError:
            env.control.cancelled = True  # the caller is gone: its rows leave next step
            raise
        return result

    def stats(self) -> dict[str, BatcherStats]:
        stats = {b.name: b.stats for b in self._batchers.values()}
        if self._steps is not None:
            stats[self._steps.name] = self._steps.stats
        return stats

    @property
    def queued(self) -> int:
        waiting = self._steps.queued if self._steps is not None else 0
        return waiting + sum(b.queued for b in self._batchers.values())

    async def close(self) -> None:
        """Take no new jobs, finish the accepted ones, stop the threads."""
        self._closed = True
        if self._steps is not None:
            await self._steps.close()
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=True)
