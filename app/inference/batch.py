"""How jobs share a batch: which may share backend calls, and per-job values as rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from app.registry.backends.base import Array


class _Params(Protocol):
    @property
    def seeded(self) -> bool: ...


class _Job(Protocol):
    @property
    def params(self) -> _Params: ...


def deterministic_groups(jobs: Sequence[_Job], rows_independent: bool) -> list[list[int]]:
    """Which jobs may share backend calls without changing anyone's answer.

    When the backend's rows depend on the batch around them (checked at load), a job whose
    caller chose the seed runs in its own calls, so it replays bit for bit; the others share.
    """
    if rows_independent:
        return [list(range(len(jobs)))]
    shared = [i for i, job in enumerate(jobs) if not job.params.seeded]
    alone = [[i] for i, job in enumerate(jobs) if job.params.seeded]
    return ([shared] if shared else []) + alone


def per_row(values: Sequence[float | np.floating], counts: Sequence[int]) -> Array:
    """One float32 column ``[sum(counts), 1]``: each job's value repeated over its rows."""
    if len(values) != len(counts):
        raise ValueError(f"{len(values)} values for {len(counts)} jobs")
    # One vectorised repeat: this runs every step for every job of a search.
    return np.repeat(np.asarray(values, dtype=np.float32), counts).reshape(-1, 1)
