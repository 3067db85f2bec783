"""Nothing accepted is lost: workers killed mid-batch, Redis killed under load (with and
without persistence), poison and expired jobs, a bounded backlog. Real redis-server and
worker processes, killed with SIGKILL."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.queue.conftest import FAST_RECOVERY, QueueStack, readiness, start_stack
from tests.servers import RedisServer, Server, WorkerProcess

CAR = ("--models", "car")


def car_body(i: int, **extra: Any) -> dict[str, Any]:
    """A seeded car /predict, different for each i."""
    x = [[-0.9 + 0.009 * (i % 200), 10.0 + 0.1 * (i % 180), 7.0 + 0.02 * (i % 200)]]
    return {"x": x, "seed": i, "num_starts": 32, "steps": 60, **extra}


def predictions(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


async def fire(url: str, bodies: list[dict[str, Any]], timeout: float = 60) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        return await asyncio.gather(
            *(client.post("/v1/models/car/predict", json=body) for body in bodies)
        )


def expected(server: Server, bodies: list[dict[str, Any]]) -> list[Any]:
    """What embedded mode answers (seeded, same backend)."""
    return [predictions(r) for r in asyncio.run(fire(server.url, bodies))]


def worker_counters(api: Server) -> dict[str, dict[str, str]]:
    return {w["id"]: w for w in readiness(api)["detail"]["live_workers"]}


def busy(api: Server, more_than: int) -> Callable[[], bool]:
    """Whether the live workers hold more than ``more_than`` jobs between them."""
    return lambda: sum(int(w["in_flight"]) for w in worker_counters(api).values()) > more_than


def once(condition: Callable[[], bool], action: Callable[[], None]) -> threading.Thread:
    """Run ``action`` in the background as soon as ``condition`` holds (20 s at most)."""

    def watch() -> None:
        wait_for(condition, 20, "the moment to act")
        action()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- two workers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(
    server_factory: Callable[..., Server],
    worker_factory: Callable[..., WorkerProcess],
    redis_factory: Callable[..., RedisServer],
    serving_models: Path,
) -> QueueStack:
    return start_stack(
        server_factory,
        worker_factory,
        redis_factory(),
        serving_models,
        workers=2,
        worker_args=CAR,
        **FAST_RECOVERY,
    )


def test_two_workers_share_a_load(pair: QueueStack, server: Server) -> None:
    bodies = [car_body(i) for i in range(80)]
    answers = asyncio.run(fire(pair.api.url, bodies))
    assert [predictions(r) for r in answers] == expected(server, bodies)
    wait_for(lambda: len(worker_counters(pair.api)) == 2, 5, "two heartbeats")
    jobs = [int(w["jobs"]) for w in worker_counters(pair.api).values()]
    assert sum(jobs) >= 80
    assert min(jobs) > 0, jobs


def test_a_worker_killed_mid_batch_loses_nothing(pair: QueueStack, server: Server) -> None:
    bodies = [car_body(1000 + i) for i in range(200)]
    victim = pair.workers[0]
    before = sum(int(w["jobs"]) for w in worker_counters(pair.api).values())

    # SIGKILL once the workers hold jobs, in the middle of their batches.
    killer = once(busy(pair.api, 20), lambda: victim.process.send_signal(signal.SIGKILL))
    answers = asyncio.run(fire(pair.api.url, bodies))
    killer.join()
    assert victim.process.wait(timeout=5) == -signal.SIGKILL
    assert [predictions(r) for r in answers] == expected(server, bodies)  # 0 lost, 0 wrong
    survivor = worker_counters(pair.api)
    assert len(survivor) == 1
    (counters,) = survivor.values()
    assert int(counters["reclaimed"]) > 0  # the victim's jobs were taken over
    assert sum(int(w["jobs"]) for w in survivor.values()) + before >= 200


def test_sigterm_finishes_the_jobs_a_worker_holds_and_exits(
    pair: QueueStack, server: Server
) -> None:
    (leaving,) = [w for w in pair.workers if w.process.poll() is None]
    # 300 starts: each job runs alone (over the 256-row batch limit), a second of work in all
    bodies = [car_body(2000 + i, num_starts=300, steps=60) for i in range(16)]

    # SIGTERM while it holds jobs: it must finish and answer them before it exits.
    stopper = once(busy(pair.api, 4), lambda: leaving.process.send_signal(signal.SIGTERM))
    answers = asyncio.run(fire(pair.api.url, bodies))
    stopper.join()
    assert leaving.process.wait(timeout=30) == 0
    assert "stopped" in leaving.log_text()
    assert [predictions(r) for r in answers] == expected(server, bodies)


# --- Redis killed -------------------------------------------------------------------------
def _paced_load(
    url: str, bodies: list[dict[str, Any]], every_s: float, retry_until: float
) -> list[tuple[list[float], httpx.Response]]:
    """Send one request every ``every_s`` (each in its own thread); a 503 is retried after
    its Retry-After until ``retry_until``. Returns per request the seconds each refused
    attempt took, and the final response."""
    results: list[Any] = [None] * len(bodies)

    def one(i: int) -> None:
        refused: list[float] = []
        with httpx.Client(base_url=url, timeout=60) as client:
            while True:
                started = time.monotonic()
                response = client.post("/v1/models/car/predict", json=bodies[i])
                if response.status_code != 503 or time.monotonic() > retry_until:
                    results[i] = (refused, response)
                    return
                refused.append(time.monotonic() - started)
                assert "Retry-After" in response.headers
                time.sleep(min(0.5, float(response.headers["Retry-After"])))

    threads = []
    for i in range(len(bodies)):
        thread = threading.Thread(target=one, args=(i,))
        thread.start()
        threads.append(thread)
        time.sleep(every_s)
    for thread in threads:
        thread.join()
    return results


@pytest.fixture(scope="module")
def redis_stack(
    server_factory: Callable[..., Server],
    worker_factory: Callable[..., WorkerProcess],
    redis_factory: Callable[..., RedisServer],
    serving_models: Path,
) -> QueueStack:
    """Redis with AOF (appendfsync always), an API and a worker."""
    redis = redis_factory(persistent=True)
    return start_stack(
        server_factory, worker_factory, redis, serving_models, worker_args=CAR, **FAST_RECOVERY
    )


def test_redis_killed_under_load_with_aof_loses_no_accepted_request(
    redis_stack: QueueStack, server: Server
) -> None:
    redis = redis_stack.redis
    bodies = [car_body(3000 + i, num_starts=256, steps=100) for i in range(60)]

    def outage() -> None:
        time.sleep(0.8)
        redis.kill()
        time.sleep(1.5)
        redis.start()

    chaos = threading.Thread(target=outage)
    chaos.start()
    results = _paced_load(redis_stack.api.url, bodies, 0.04, retry_until=time.monotonic() + 30)
    chaos.join()
    refused = [t for attempts, _ in results for t in attempts]
    assert refused, "no request met the outage"
    assert max(refused) < 2.5  # a refusal is quick: 503 + Retry-After, never a hang
    assert [predictions(r) for _, r in results] == expected(server, bodies)
    # the service resumed by itself: new requests go through the same processes
    url = f"{redis_stack.api.url}/v1/models/car/predict"
    assert predictions(httpx.post(url, json=bodies[0], timeout=30))
    assert redis_stack.workers[0].process.poll() is None


def test_redis_restarted_empty_fails_in_flight_requests_cleanly_then_resumes(
    redis_stack: QueueStack, server: Server
) -> None:
    redis = redis_stack.redis
    # slow enough that some are still queued or computing when Redis dies
    bodies = [car_body(4000 + i, num_starts=2048, steps=300, deadline_ms=20_000) for i in range(8)]
    outcome: list[Any] = []

    def load() -> None:
        started = time.monotonic()
        for r in asyncio.run(fire(redis_stack.api.url, bodies)):
            outcome.append((r, time.monotonic() - started))

    loader = threading.Thread(target=load)
    loader.start()
    time.sleep(1.0)
    redis.kill()
    for aof in redis.directory.glob("appendonly*"):  # it comes back with no data at all
        shutil.rmtree(aof) if aof.is_dir() else aof.unlink()
    time.sleep(1.0)
    redis.start()
    loader.join()
    statuses = sorted(r.status_code for r, _ in outcome)
    assert set(statuses) <= {200, 503, 504}
    assert 503 in statuses, statuses  # the lost jobs are reported, not hung
    assert all(seconds < 20 for _, seconds in outcome)  # every one within its deadline
    for response, _ in outcome:
        if response.status_code != 200:
            assert response.json()["error"]["type"] in ("queue_unavailable", "deadline_exceeded")
    # service resumes without restarting the API or the worker
    body = car_body(4100)
    deadline = time.monotonic() + 10
    while True:
        response = httpx.post(f"{redis_stack.api.url}/v1/models/car/predict", json=body, timeout=30)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert predictions(response) == expected(server, [body])[0]
    assert redis_stack.workers[0].process.poll() is None


# --- what must never be computed ------------------------------------------------------------
@pytest.fixture(scope="module")
def idle_stack(
    server_factory: Callable[..., Server],
    redis_factory: Callable[..., RedisServer],
    serving_models: Path,
) -> QueueStack:
    """An API in queue mode with no worker yet, a backlog limit of 3, 2 deliveries."""
    redis = redis_factory()
    api = server_factory(
        serving_models,
        EBM_REDIS_URL=redis.url,
        EBM_MAX_BACKLOG="3",
        EBM_MAX_DELIVERIES="2",
        **FAST_RECOVERY,
    )
    return QueueStack(redis, api, [])


def test_the_backlog_is_bounded_by_refusing_new_work(idle_stack: QueueStack) -> None:
    bodies = [car_body(i, deadline_ms=1500) for i in range(6)]
    answers = asyncio.run(fire(idle_stack.api.url, bodies))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [429, 429, 429, 504, 504, 504]
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "EBM_MAX_BACKLOG" in refused.json()["error"]["message"]
    client = idle_stack.redis.client()
    assert client.xlen("ebm:jobs:car") == 3  # nothing trimmed: the 3 accepted jobs are kept
    client.delete("ebm:jobs:car")


def test_poison_and_expired_jobs_are_never_computed(
    idle_stack: QueueStack,
    worker_factory: Callable[..., WorkerProcess],
    serving_models: Path,
) -> None:
    client = idle_stack.redis.client()
    client.xgroup_create("ebm:jobs:car", "workers", id="0", mkstream=True)
    poisoned: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: poisoned.append(
            httpx.post(
                f"{idle_stack.api.url}/v1/models/car/predict",
                json=car_body(1, deadline_ms=30_000),
                timeout=40,
            )
        )
    )
    caller.start()
    wait_for(lambda: client.xlen("ebm:jobs:car") == 1, 5, "the job to be queued")
    # Two consumers take the job and die without answering (delivery 1 and 2).
    ((_, [(entry_id, _)]),) = client.xreadgroup("workers", "crashed-1", {"ebm:jobs:car": ">"})
    time.sleep(1.6)
    client.xclaim("ebm:jobs:car", "workers", "crashed-2", 1500, [entry_id])
    # An expired job: its caller gets 504 before any worker exists.
    expired = httpx.post(
        f"{idle_stack.api.url}/v1/models/car/predict", json=car_body(2, deadline_ms=300)
    )
    assert expired.status_code == 504
    time.sleep(1.6)
    worker_factory(
        serving_models,
        idle_stack.redis.url,
        *CAR,
        EBM_MAX_DELIVERIES="2",
        **FAST_RECOVERY,
    )
    caller.join(timeout=30)
    (answer,) = poisoned
    assert answer.status_code == 500
    assert answer.json()["error"]["type"] == "dead_lettered"
    assert "delivered 3 times" in answer.json()["error"]["message"]
    (letter,) = client.xrange("ebm:dead:car")
    assert int(letter[1][b"deliveries"]) == 3
    assert client.xlen("ebm:jobs:car") == 0
    wait_for(lambda: bool(worker_counters(idle_stack.api)), 5, "a heartbeat")
    # The caller has its answer before the worker counts the dead letter: a heartbeat in
    # between still shows 0, so wait for both counts.
    wait_for(
        lambda: (
            {
                k: v
                for k, v in next(iter(worker_counters(idle_stack.api).values())).items()
                if k in ("expired", "dead_lettered")
            }
            == {"expired": "1", "dead_lettered": "1"}
        ),
        5,
        "the expired job to be dropped and the poisoned one counted",
    )
    (counters,) = worker_counters(idle_stack.api).values()
    assert counters["batches"] == "0"  # neither job reached the engine
