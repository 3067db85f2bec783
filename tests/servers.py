"""Real servers for tests and benchmarks: `ebm serve` in a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


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
        options: dict[str, Any] = {"timeout": 30, **kwargs}
        return httpx.Client(base_url=self.url, **options)

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


# --- Redis and workers (queue mode) -----------------------------------------------------
class RedisServer:
    """A real `redis-server` on a free port, its data in ``directory``. With ``persistent``
    it writes an AOF with ``appendfsync always`` (every accepted write survives a SIGKILL)."""

    def __init__(self, directory: Path, persistent: bool) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persistent
            else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.directory),
                *persistence,
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.exceptions.RedisError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, exactly a crash."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def client(self) -> Any:
        import redis

        return redis.Redis(port=self.port)


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start_worker(
    models_dir: Path, redis_url: str, log_dir: Path, *args: str, **env: str
) -> WorkerProcess:
    """`ebm worker` in a subprocess; returns once it logs that it serves."""
    log = log_dir / f"worker-{free_port()}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EBM_")}
    full_env |= {"EBM_MODELS_DIR": str(models_dir), "EBM_REDIS_URL": redis_url, **env}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", *args],
            cwd=REPO,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    worker = WorkerProcess(process, log)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{worker.log_text()}")
        if " serving " in worker.log_text():
            return worker
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"worker did not start:\n{worker.log_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
