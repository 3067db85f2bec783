"""Queue-mode fixtures: real `redis-server` processes on free ports (never the machine's
shared instance), `ebm serve` with EBM_REDIS_URL, and `ebm worker` processes."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import (
    RedisServer,
    Server,
    WorkerProcess,
    start_worker,
    stop_process,
)

#: Fault tests need failures noticed fast: a dead worker's jobs are reclaimed after 1.5 s.
FAST_RECOVERY = {"EBM_VISIBILITY_TIMEOUT_MS": "1500", "EBM_HEARTBEAT_MS": "250"}


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []
    counter = itertools.count()

    def make(persistent: bool = False) -> RedisServer:
        directory = tmp_path_factory.mktemp(f"redis-{next(counter)}")
        server = RedisServer(directory, persistent).start()
        started.append(server)
        return server

    yield make
    for server in started:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(scope="session")
def worker_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., WorkerProcess]]:
    workers: list[WorkerProcess] = []
    log_dir = tmp_path_factory.mktemp("worker-logs")

    def make(models_dir: Path, redis_url: str, *args: str, **env: str) -> WorkerProcess:
        worker = start_worker(models_dir, redis_url, log_dir, *args, **env)
        workers.append(worker)
        return worker

    yield make
    for worker in workers:
        stop_process(worker.process)


@dataclass
class QueueStack:
    redis: RedisServer
    api: Server
    workers: list[WorkerProcess]


def start_stack(
    server_factory: Callable[..., Server],
    worker_factory: Callable[..., WorkerProcess],
    redis: RedisServer,
    models_dir: Path,
    workers: int = 1,
    worker_args: tuple[str, ...] = (),
    **env: str,
) -> QueueStack:
    """An API in queue mode and ``workers`` workers on ``redis``, started in parallel."""
    with ThreadPoolExecutor(1 + workers) as pool:
        api = pool.submit(server_factory, models_dir, EBM_REDIS_URL=redis.url, **env)
        started = [
            pool.submit(worker_factory, models_dir, redis.url, *worker_args, **env)
            for _ in range(workers)
        ]
        return QueueStack(redis, api.result(), [w.result() for w in started])


def readiness(server: Server) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/readyz", timeout=10).json()
    return body


@pytest.fixture(scope="session")
def queue_stack(
    server_factory: Callable[..., Server],
    worker_factory: Callable[..., WorkerProcess],
    redis_factory: Callable[..., RedisServer],
    serving_models: Path,
) -> QueueStack:
    """Queue mode on every served model: one API, one worker, their own Redis."""
    return start_stack(server_factory, worker_factory, redis_factory(), serving_models)
