"""Shared fixtures: analytic models published once per session, real servers on free ports."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.analytic import publish_quadratic
from tests.servers import REPO, Server, start_server, stop_server

SHIPPED_MODELS = REPO / "models"


@pytest.fixture(scope="session")
def analytic_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the quadratic energy in versions 1 and 2 (both backends)."""
    root = tmp_path_factory.mktemp("analytic-models")
    publish_quadratic(root, version=1)
    publish_quadratic(root, version=2)
    return root


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
    """The shipped models and the quadratic, each cross-checked on torch at start."""
    return server_factory(serving_models, EBM_CROSS_CHECK="true")


@pytest.fixture(scope="session")
def search_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models dir with the analytic search energies (both backends): the double well
    (conditional), the 8 Gaussians and the ring (unconditional). About 20 s to export."""
    from tests.analytic import publish_search_models

    root = tmp_path_factory.mktemp("search-models")
    publish_search_models(root)
    return root


@pytest.fixture(scope="session")
def search_server(server_factory: Callable[..., Server], search_models: Path) -> Server:
    """A real server on the analytic search models, with the default settings."""
    return server_factory(search_models)
