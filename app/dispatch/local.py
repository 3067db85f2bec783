"""Embedded dispatcher: one in-process batcher per (model, version, operation), no Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from app.config import Settings
from app.dispatch.batcher import Batcher, BatcherStats
from app.errors import ShuttingDown
from app.inference.predict import PredictOutcome, predict_runner
from app.inference.sampling import SampleJob, SampleOutcome, sample_runner
from app.inference.scoring import ScoreJob, score_runner
from app.inference.search import SearchJob
from app.registry.backends.base import EnergyOutput
from app.registry.loader import LoadedModel


def batching_limits(model: LoadedModel, settings: Settings) -> tuple[int, float]:
    """(max rows, max delay in s): the manifest's, unless the environment overrides them."""
    batching = model.manifest.batching
    max_rows = settings.max_batch_size or batching.max_batch_size
    delay_ms = batching.max_delay_ms if settings.max_delay_ms is None else settings.max_delay_ms
    return max_rows, delay_ms / 1000


def _loop_time(monotonic_deadline: float) -> float:
    """A ``time.monotonic()`` deadline (what compute threads compare against) on the event
    loop's clock (what the batcher's timers use)."""
    return asyncio.get_running_loop().time() + (monotonic_deadline - time.monotonic())


class LocalDispatcher:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        # Backend calls run off the event loop so HTTP parsing continues meanwhile; the
        # libraries release the GIL while they compute.
        self._executor = ThreadPoolExecutor(
            max_workers=settings.compute_threads, thread_name_prefix="ebm-compute"
        )
        self._batchers: dict[tuple[str, int, str], Batcher[Any, Any]] = {}
        self._closed = False

    def _batcher(
        self, model: LoadedModel, op: str, runners: Callable[[], dict[str, Any]]
    ) -> Batcher[Any, Any]:
        """The batcher of (model, version, op), made on first use with ``runners()`` (the
        Batcher's ``runner`` or ``early_runner``)."""
        key = (model.name, model.version, op)
        batcher = self._batchers.get(key)
        if batcher is None:
            max_rows, max_delay_s = batching_limits(model, self._settings)
            batcher = Batcher(
                **runners(),
                executor=self._executor,
                max_rows=max_rows,
                max_delay_s=max_delay_s,
                max_queue=self._settings.max_queue,
                inline_below_s=self._settings.inline_below_ms / 1000,
                name=f"{model.name}/{model.version}/{op}",
            )
            self._batchers[key] = batcher
        return batcher

    async def _submit(
        self,
        model: LoadedModel,
        op: str,
        runners: Callable[[], dict[str, Any]],
        job: Any,
        rows: int,
        deadline: float,
    ) -> Any:
        if self._closed:
            raise ShuttingDown("the server is shutting down and takes no new work")
        return await self._batcher(model, op, runners).submit(job, rows, deadline)

    async def score(
        self, model: LoadedModel, job: ScoreJob, grad: bool, deadline: float
    ) -> EnergyOutput:
        op = "energy+grad" if grad else "energy"
        result: EnergyOutput = await self._submit(
            model,
            op,
            lambda: {"runner": score_runner(model.backend, grad)},
            job,
            job.rows,
            deadline,
        )
        return result

    async def predict(self, model: LoadedModel, job: SearchJob) -> PredictOutcome:
        result: PredictOutcome = await self._submit(
            model,
            f"predict:{job.params.method}",
            lambda: {"early_runner": predict_runner(model)},
            job,
            job.rows,
            _loop_time(job.deadline),
        )
        return result

    async def sample(self, model: LoadedModel, job: SampleJob) -> SampleOutcome:
        result: SampleOutcome = await self._submit(
            model,
            "sample",
            lambda: {"runner": sample_runner(model)},
            job,
            job.rows,
            _loop_time(job.deadline),
        )
        return result

    def stats(self) -> dict[str, BatcherStats]:
        return {b.name: b.stats for b in self._batchers.values()}

    def ready(self) -> tuple[bool, str]:
        if self._closed:
            return False, "shutting down"
        return True, "embedded dispatcher running"

    async def close(self) -> None:
        self._closed = True
        for batcher in self._batchers.values():
            await batcher.close()
        self._executor.shutdown(wait=True)
