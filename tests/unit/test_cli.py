"""The `ebm` command line and the settings it reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import build_parser, recipe_names
from app.config import BackendChoice, Settings
from tests.servers import REPO


def test_serve_arguments() -> None:
    args = build_parser().parse_args(["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.command, args.host, args.port) == ("serve", "0.0.0.0", 9000)


def test_train_names_a_model_or_all() -> None:
    parser = build_parser()
    assert parser.parse_args(["train", "car"]).name == "car"
    assert parser.parse_args(["train", "--all"]).all


def test_settings_come_from_ebm_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBM_BACKEND", "torch")
    monkeypatch.setenv("EBM_MAX_BATCH_SIZE", "1")
    monkeypatch.setenv("EBM_MAX_DELAY_MS", "0.5")
    monkeypatch.setenv("EBM_MODELS_DIR", "/srv/models")
    monkeypatch.setenv("EBM_API_KEYS", "a, b,,")
    settings = Settings()
    assert settings.backend == BackendChoice.TORCH
    assert settings.max_batch_size == 1
    assert settings.max_delay_ms == 0.5
    assert settings.models_dir == Path("/srv/models")
    assert settings.api_key_set() == {"a", "b"}


def test_invalid_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBM_BACKEND", "tpu")
    with pytest.raises(ValueError, match="backend"):
        Settings()


def test_unknown_recipe_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.py").write_text("")
    assert recipe_names(tmp_path) == ["a"]
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "train", "nope", "--models-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "no recipe" in result.stderr
    assert "recipes: a" in result.stderr


def test_worker_without_redis_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EBM_")}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert result.returncode == 2
    assert "--redis-url" in result.stderr


def test_worker_flags_are_validated_like_settings() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--redis-url", "redis://x", "--device", "tpu"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "device" in result.stderr
