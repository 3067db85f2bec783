"""Every recipe trains for a few steps and its export round-trips through the registry.

The smoke runs go two at a time in worker processes (this machine has two cores; most of a
smoke run is the ONNX export, which is single-threaded).
"""

from __future__ import annotations

import multiprocessing
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from app.cli import load_recipe, recipe_names
from app.config import BackendChoice, Settings
from app.registry.loader import load_registry
from tests.conftest import SHIPPED_MODELS

RECIPES = recipe_names(SHIPPED_MODELS)


Verdict = tuple[dict[str, float], str | None]  # worst parity per check, or a traceback


def _smoke_and_reload(name: str, models_dir: str) -> Verdict:
    """Run one recipe's smoke mode, then load what it published on each backend.

    Both steps run in the worker, so the reloads are spread over the cores too.
    """
    try:
        metrics = load_recipe(SHIPPED_MODELS, name)(Path(models_dir), smoke=True)
        assert metrics, f"{name} returned no metrics"
        parity: dict[str, float] = {}
        for backend in (BackendChoice.ONNX, BackendChoice.TORCH):
            settings = Settings(models_dir=Path(models_dir), backend=backend, cross_check=True)
            registry = load_registry(settings)
            assert registry.unavailable == [], registry.unavailable
            model = registry.get(name)
            assert model.backend.name == backend.value
            parity.update({k: max(d.values()) for k, d in model.parity.items()})
    except BaseException:
        return {}, traceback.format_exc()
    return parity, None


def _expected_cost(name: str) -> int:
    """The shipped energy graph's size: a fair guess at how long its export takes."""
    shipped = sorted(SHIPPED_MODELS.glob(f"{name}/[0-9]*/energy.onnx"))
    return shipped[-1].stat().st_size if shipped else 0


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Verdict]:
    root = tmp_path_factory.mktemp("smoke")
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
    longest_first = sorted(RECIPES, key=_expected_cost, reverse=True)
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        futures = {n: pool.submit(_smoke_and_reload, n, str(root / n)) for n in longest_first}
        return {name: future.result() for name, future in futures.items()}


def test_every_shipped_model_has_a_recipe() -> None:
    shipped = {p.parent.parent.name for p in SHIPPED_MODELS.glob("*/[0-9]*/manifest.json")}
    assert "car" in RECIPES
    assert shipped <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_smoke_training_publishes_a_servable_model(
    name: str, smoke_runs: dict[str, Verdict]
) -> None:
    parity, failure = smoke_runs[name]
    assert failure is None, failure
    # each backend reproduced the export's probe and agreed with the other one
    assert set(parity) == {"onnx_vs_probe", "onnx_vs_torch", "torch_vs_probe", "torch_vs_onnx"}
    assert max(parity.values()) <= 1e-4
