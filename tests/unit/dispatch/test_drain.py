"""The drain rate behind Retry-After counts busy time only."""

from __future__ import annotations

import time

from app.dispatch.drain import DrainRate


def test_nothing_measured_means_a_modest_default() -> None:
    assert DrainRate().seconds_for(10) == 5.0


def test_batches_give_jobs_per_busy_second() -> None:
    drain = DrainRate()
    drain.observe(100, 0.5)  # 200 jobs/s
    assert drain.seconds_for(400) == 2.0


def test_an_idle_gap_is_not_counted_as_slowness() -> None:
    drain = DrainRate()
    drain.observe(100, 0.5)
    drain._start -= 3600  # an hour without answers
    drain.tick(1)
    assert drain.rate == 200  # unchanged: the gap only restarts the window
    for _ in range(60):  # then answers at ~1000/s
        time.sleep(0.005)
        drain.tick(5)
    assert drain.rate > 250
