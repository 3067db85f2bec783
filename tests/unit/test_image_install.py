"""The image's Python install, rebuilt the way the Dockerfile does it (no Docker engine
here): a clean venv with only the files the Dockerfile copies, `pip install .`, then
`ebm serve` from that venv on the copied models must answer /readyz and score."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import REPO, free_port, rss_mb


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (REPO / "Dockerfile").read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def _copy_like_the_dockerfile(root: Path) -> tuple[Path, Path, dict[str, str]]:
    """Lay out what the image holds: (WORKDIR, models dir, the EBM_* environment)."""
    workdir = root / "srv" / "app"
    workdir.mkdir(parents=True)
    env: dict[str, str] = {}
    for keyword, rest in _instructions():
        if keyword == "WORKDIR":
            workdir = root / rest.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif keyword == "ENV":
            env |= dict(re.findall(r"(EBM_\w+)=(\S+)", rest))
        elif keyword == "COPY":
            *sources, target = rest.split()
            destination = root / target.lstrip("/") if target.startswith("/") else workdir / target
            for source in sources:
                path = REPO / source
                if path.is_dir():
                    shutil.copytree(path, destination, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    destination.mkdir(parents=True, exist_ok=True)
                    shutil.copy(path, destination / path.name)
    models = root / env["EBM_MODELS_DIR"].lstrip("/")
    return workdir, models, env


def test_the_image_install_serves_the_shipped_models(tmp_path: Path) -> None:
    workdir, models, env = _copy_like_the_dockerfile(tmp_path)
    assert (workdir / "pyproject.toml").is_file()
    assert (models / "car").is_dir()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [
            *(str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"),
            *("-c", "constraints.txt", "."),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    # The serving install carries no torch: onnxruntime runs the gradient graphs.
    no_torch = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], check=False)
    assert no_torch.returncode != 0
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("EBM_")}
    server_env |= env | {"EBM_MODELS_DIR": str(models)}
    process = subprocess.Popen(
        [str(venv / "bin" / "ebm"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,  # not the repository: nothing can be imported from it
        env=server_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                ready = httpx.get(f"{url}/readyz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert ready is not None, process.stdout.read().decode() if process.stdout else ""
        assert ready.status_code == 200, ready.text
        detail = ready.json()["detail"]
        assert detail["unavailable"] == []
        assert "car" in detail["models"]
        scored = httpx.post(
            f"{url}/v1/models/car/energy",
            json={"x": [[0.0, 20.0, 10.0]], "y": [[20.0, 2.5]]},
            timeout=10,
        )
        assert scored.status_code == 200, scored.text
        assert httpx.get(f"{url}/v1/models/car", timeout=5).json()["backend"] == "onnx"
        # Without torch installed too, the seven shipped models serve in under 300 MB.
        assert rss_mb(process.pid) < 300
    finally:
        process.terminate()
        process.wait(timeout=20)
