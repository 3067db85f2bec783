"""Shared fixtures: analytic models published once per session, real servers on free ports."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.analytic import publish_quadratic

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO / "models"


@pytest.fixture(scope="session")
def analytic_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the quadratic energy in versions 1 and 2 (both backends)."""
    root = tmp_path_factory.mktemp("analytic-models")
    publish_quadratic(root, version=1)
    publish_quadratic(root, version=2)
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, process: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(models_dir: Path, log_dir: Path, **env: str) -> Server:
    """`ebm serve` in a subprocess on a free port; returns once /readyz answers 200."""
    port = free_port()
    log = log_dir / f"server-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EBM_")}
    full_env |= {"EBM_MODELS_DIR": str(models_dir), "EBM_LOG_LEVEL": "info", **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code in (200, 503):
                return Server(process, url, log)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="session")
def server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []
    log_dir = tmp_path_factory.mktemp("server-logs")

    def make(models_dir: Path, **env: str) -> Server:
        server = start_server(models_dir, log_dir, **env)
        servers.append(server)
        return server

    yield make
    for server in servers:
        stop_server(server)


@pytest.fixture(scope="session")
def serving_models(analytic_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped models plus the analytic quadratic, in one models dir."""
    root = tmp_path_factory.mktemp("serving-models")
    for source in [*SHIPPED_MODELS.iterdir(), *analytic_models.iterdir()]:
        if source.is_dir() and any(p.name.isdigit() for p in source.iterdir()):
            shutil.copytree(source, root / source.name)
    return root


@pytest.fixture(scope="session")
def server(server_factory: Callable[..., Server], serving_models: Path) -> Server:
    return server_factory(serving_models)
