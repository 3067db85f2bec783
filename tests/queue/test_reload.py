"""Queue mode: POST /v1/admin/reload reloads the API's catalog and tells every worker to
reload; SIGHUP reloads one worker. Work in flight is not dropped."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.queue.conftest import QueueStack, readiness, start_stack
from tests.servers import RedisServer, Server, WorkerProcess

PAIR = {"x": [[0.0, 0.0]], "y": [[0.0, 0.0]], "version": 2}


def _score_v2(api: Server) -> httpx.Response:
    return httpx.post(f"{api.url}/v1/models/quad/energy", json=PAIR, timeout=10)


def _until_v2_scores(api: Server, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while (response := _score_v2(api)).status_code != 200:
        assert time.monotonic() < deadline, response.text
        time.sleep(0.2)
    assert response.json()["version"] == 2


@pytest.fixture
def stack(
    server_factory: Callable[..., Server],
    worker_factory: Callable[..., WorkerProcess],
    redis_factory: Callable[..., RedisServer],
    analytic_models: Path,
    tmp_path: Path,
) -> QueueStack:
    """An API and a worker on quad version 1 alone, their own Redis, reloads allowed."""
    shutil.copytree(analytic_models / "quad" / "1", tmp_path / "models" / "quad" / "1")
    return start_stack(
        server_factory,
        worker_factory,
        redis_factory(),
        tmp_path / "models",
        EBM_ADMIN_KEY="s3cret",
    )


def _add_version_2(analytic_models: Path, tmp_path: Path) -> None:
    shutil.copytree(analytic_models / "quad" / "2", tmp_path / "models" / "quad" / "2")


def test_admin_reload_reaches_the_workers(
    stack: QueueStack, analytic_models: Path, tmp_path: Path
) -> None:
    assert _score_v2(stack.api).status_code == 404
    _add_version_2(analytic_models, tmp_path)
    response = httpx.post(
        f"{stack.api.url}/v1/admin/reload",
        headers={"Authorization": "Bearer s3cret"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["models"] == {"quad": [1, 2]}
    assert response.json()["workers_notified"] == 1
    _until_v2_scores(stack.api)
    assert readiness(stack.api)["detail"]["models"] == {"quad": [1, 2]}


def test_sighup_reloads_a_worker(stack: QueueStack, analytic_models: Path, tmp_path: Path) -> None:
    _add_version_2(analytic_models, tmp_path)
    worker = stack.workers[0]
    worker.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while "reloaded: serving quad" not in worker.log_text():
        assert time.monotonic() < deadline, worker.log_text()[-2000:]
        time.sleep(0.2)
    assert worker.process.poll() is None
    stack.api.process.send_signal(signal.SIGHUP)  # the API's catalog, for version 2
    _until_v2_scores(stack.api)
