"""A job's deadline and cancellation, as the compute loop sees them between steps.

A deadline is absolute wall-clock time (``time.time()`` seconds since the epoch): one
number that means the same in every process and on every machine, so it can travel inside
a job. Wall clocks of different machines disagree a little; the Redis transport corrects
for that by measuring each process's offset to the Redis server's clock (see
``app.dispatch.redis_keys``), so within one process a deadline is always on its own clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


def deadline_after(ms: float) -> float:
    """The wall-clock deadline ``ms`` milliseconds from now."""
    return time.time() + ms / 1000


def seconds_left(deadline: float) -> float:
    return deadline - time.time()


@dataclass
class Control:
    """Shared by the caller and the runner: the caller sets ``cancelled`` (its client went
    away); the runner reads both fields between steps and lets the job's rows leave."""

    deadline: float = math.inf
    cancelled: bool = False

    def expired(self, margin_s: float = 0.0) -> bool:
        return time.time() + margin_s >= self.deadline

    def gone(self) -> bool:
        """Nobody waits for this job's answer any more: cancelled, or past its deadline."""
        return self.cancelled or self.expired()
