"""Reload without dropping a request (SIGHUP, POST /v1/admin/reload), and a drain on
SIGTERM: new requests get 503 while those in flight finish (issue 9)."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SHIPPED_MODELS
from tests.servers import Server

ADMIN = {"Authorization": "Bearer s3cret"}
# A search that runs to its 3 s deadline and answers 200, partial.
SLOW = {
    "x": [[0.0, 20.0, 9.0]] * 4,
    "num_starts": 512,
    "steps": 2000,
    "tol": 0.0,
    "deadline_ms": 3000,
}


@pytest.fixture
def models(analytic_models: Path, tmp_path: Path) -> Path:
    """car and quad version 1; quad version 2 is added by the tests."""
    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "car", root / "car")
    shutil.copytree(analytic_models / "quad" / "1", root / "quad" / "1")
    return root


def _in_background(call: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    return thread, answers


def _slow_predict(server: Server) -> httpx.Response:
    with server.client(timeout=30) as client:
        return client.post("/v1/models/car/predict", json=SLOW)


def _versions(server: Server, name: str) -> list[int]:
    with server.client() as client:
        summary: dict[str, Any] = client.get(f"/v1/models/{name}").json()
    return list(summary["versions"])


def test_reload_is_refused_without_the_admin_key(
    server_factory: Callable[..., Server], models: Path
) -> None:
    off = server_factory(models)
    with off.client() as client:
        response = client.post("/v1/admin/reload", headers=ADMIN)
    assert response.status_code == 403
    assert "set EBM_ADMIN_KEY" in response.json()["error"]["message"]
    on = server_factory(models, EBM_ADMIN_KEY="s3cret")
    with on.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            response = client.post("/v1/admin/reload", headers=headers)
            assert response.status_code == 401, response.text
            assert response.json()["error"]["type"] == "unauthorized"


def test_reload_swaps_models_without_dropping_a_request_in_flight(
    server_factory: Callable[..., Server], models: Path, analytic_models: Path
) -> None:
    server = server_factory(models, EBM_ADMIN_KEY="s3cret")
    assert _versions(server, "quad") == [1]
    thread, answers = _in_background(lambda: _slow_predict(server))
    time.sleep(0.5)  # the search is computing on the old models
    shutil.copytree(analytic_models / "quad" / "2", models / "quad" / "2")
    tampered = models / "quad" / "3"
    shutil.copytree(analytic_models / "quad" / "2", tampered)
    (tampered / "manifest.json").write_text(
        (tampered / "manifest.json").read_text().replace('"version": 2', '"version": 3')
    )
    with (tampered / "energy.onnx").open("ab") as artifact:
        artifact.write(b"\0")
    with server.client() as client:
        response = client.post("/v1/admin/reload", headers=ADMIN)
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["models"]["quad"] == [1, 2]
    (problem,) = report["unavailable"]
    assert (problem["name"], problem["version"]) == ("quad", 3)
    assert "energy.onnx has sha256" in problem["reason"]
    thread.join()
    assert answers[0].status_code == 200, answers[0].text
    assert answers[0].json()["stats"]["partial"] is True
    assert _versions(server, "quad") == [1, 2]
    with server.client() as client:
        score = client.post("/v1/models/quad/energy", json={"x": [[0, 0]], "y": [[0, 0]]})
    assert score.status_code == 200
    assert score.json()["version"] == 2


def test_sighup_reloads_the_models(
    server_factory: Callable[..., Server], models: Path, analytic_models: Path
) -> None:
    server = server_factory(models)
    shutil.copytree(analytic_models / "quad" / "2", models / "quad" / "2")
    server.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while _versions(server, "quad") != [1, 2]:
        assert time.monotonic() < deadline, server.log_text()[-2000:]
        time.sleep(0.2)
    assert "reloaded in" in server.log_text()


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(
    server_factory: Callable[..., Server], models: Path
) -> None:
    server = server_factory(models, EBM_SHUTDOWN_GRACE_S="20")
    thread, answers = _in_background(lambda: _slow_predict(server))
    time.sleep(0.5)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with server.client() as client:
        refused = client.post("/v1/models/quad/energy", json={"x": [[0, 0]], "y": [[0, 0]]})
        alive = client.get("/healthz")
        ready = client.get("/readyz")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["type"] == "shutting_down"
    assert refused.headers["connection"] == "close"
    assert refused.headers["retry-after"] == "1"
    assert alive.status_code == 200
    assert ready.status_code == 503
    assert "shutting down" in ready.json()["detail"]["reason"]
    thread.join()
    assert answers[0].status_code == 200, answers[0].text  # finished, not cut off
    server.process.wait(timeout=15)
    assert "draining: 1 request(s) in flight" in server.log_text()
