"""How fast a queue drains: the Retry-After of a 429, from what was measured."""

from __future__ import annotations

import time

WINDOW_S = 0.25  # answers are counted over windows this long...
IDLE_S = 1.0  # ...and a window this long without one was idle, not slow: it is skipped


class DrainRate:
    """Jobs answered per second while busy, exponentially weighted (recent windows count
    most). Idle time never counts as slowness: a burst after a quiet hour is not told to
    come back in an hour."""

    def __init__(self, weight: float = 0.3) -> None:
        self.weight = weight
        self.rate = 0.0
        self._start = time.monotonic()
        self._count = 0

    def observe(self, jobs: int, seconds: float) -> None:
        """``jobs`` were answered by ``seconds`` of busy work (one batch)."""
        if seconds > 0:
            self._update(jobs / seconds)

    def tick(self, jobs: int = 1) -> None:
        """``jobs`` more were answered just now (a stream of replies)."""
        now = time.monotonic()
        elapsed = now - self._start
        if elapsed > IDLE_S:  # a gap: start counting afresh
            self._start, self._count = now, jobs
            return
        self._count += jobs
        if elapsed >= WINDOW_S:
            self._update(self._count / elapsed)
            self._start, self._count = now, 0

    def _update(self, rate: float) -> None:
        self.rate = rate if self.rate == 0 else (1 - self.weight) * self.rate + self.weight * rate

    def seconds_for(self, jobs: int) -> float:
        """How long ``jobs`` queued take to drain; 5 s before anything was measured."""
        return jobs / self.rate if self.rate > 0 else 5.0
