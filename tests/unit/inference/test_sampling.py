"""Sampling: prior latents decoded onto the model's manifold; Langevin chains that sample
exp(-E/T) (checked on a quadratic, whose Gibbs distribution is a known Gaussian)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.config import BackendChoice, Settings
from app.inference.sampling import SampleJob, SampleParams, sample_runner
from app.registry.loader import LoadedModel, load_registry
from tests.analytic import publish_circle, quad_minimum

X = np.array([[0.5, -1.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def circle(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("circle")
    publish_circle(root)
    return load_registry(Settings(models_dir=root, backend=BackendChoice.ONNX)).get("circle")


@pytest.fixture(scope="module")
def quad(analytic_models: Path) -> LoadedModel:
    settings = Settings(models_dir=analytic_models, backend=BackendChoice.ONNX)
    return load_registry(settings).get("quad", 1)


def params(n: int, seed: int = 0, **kw: float | int) -> SampleParams:
    fields: dict[str, float | int] = {
        "chains": n,
        "steps": 200,
        "thin": 1,
        "step_size": 0.01,
        "temperature": 1.0,
    } | kw
    return SampleParams(
        n=n,
        chains=int(fields["chains"]),
        steps=int(fields["steps"]),
        thin=int(fields["thin"]),
        step_size=float(fields["step_size"]),
        temperature=float(fields["temperature"]),
        seed=seed,
        seeded=True,
    )


def test_prior_samples_lie_on_the_decoded_manifold(circle: LoadedModel) -> None:
    job = SampleJob(x=None, rows_x=3, params=params(50), decodes=True)
    (out,) = sample_runner(circle)([job])
    assert out.stats["method"] == "prior"
    assert len(out.samples) == 3
    for row in out.samples:
        assert len(row) == 50
        y = np.array([s["y"] for s in row])
        z = np.array([s["z"] for s in row])[:, 0]
        np.testing.assert_allclose(np.linalg.norm(y, axis=1), 2.0, atol=1e-5)
        np.testing.assert_allclose([s["energy"] for s in row], 0.0, atol=1e-5)
        assert (np.abs(z) <= np.pi).all()
        assert z.std() > 1.0


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_langevin_chains_sample_the_gibbs_distribution(
    quad: LoadedModel, temperature: float
) -> None:
    """E = ||y - y*||^2: exp(-E/T) is N(y*, T/2 I); with step eps the chain's stationary
    variance is T / (2 (1 - eps)), 1% above."""
    # 600 steps of burn-in: the drift contracts by 1 - 2 eps = 0.98 a step, from starts
    # up to 13 away
    job = SampleJob(x=X, rows_x=1, params=params(4000, steps=600, temperature=temperature))
    (out,) = sample_runner(quad)([job])
    y = np.array([s["y"] for s in out.samples[0]])
    assert y.shape == (4000, 2)
    np.testing.assert_allclose(y.mean(axis=0), quad_minimum(X)[0], atol=0.05 * temperature**0.5)
    expected_var = temperature / (2 * (1 - 0.01))
    np.testing.assert_allclose(y.var(axis=0), expected_var, rtol=0.1)


def test_thinning_keeps_states_of_the_same_chains(quad: LoadedModel) -> None:
    job = SampleJob(x=X, rows_x=1, params=params(12, chains=3, steps=20, thin=5))
    (out,) = sample_runner(quad)([job])
    assert len(out.samples[0]) == 12
    assert out.stats["steps_run"] == 20 + 3 * 5 + 1
    y = np.array([s["y"] for s in out.samples[0]])
    assert len(np.unique(y, axis=0)) == 12  # four states of each of three chains


def test_clamped_components_stay_exact(quad: LoadedModel) -> None:
    known = np.array([[1.234567, 0.0]], dtype=np.float32)
    mask = np.array([[True, False]])
    job = SampleJob(x=X, rows_x=1, params=params(500), y_known=known, y_mask=mask)
    (out,) = sample_runner(quad)([job])
    y = np.array([s["y"] for s in out.samples[0]], dtype=np.float32)
    assert (y[:, 0] == known[0, 0]).all()
    np.testing.assert_allclose(y[:, 1].mean(), quad_minimum(X)[0, 1], atol=0.1)
    assert y[:, 1].std() > 0.5


def test_seeded_samples_replay_alone_or_coalesced(quad: LoadedModel, circle: LoadedModel) -> None:
    for model, decodes in ((quad, False), (circle, True)):
        x = X if model.manifest.x is not None else None

        def job(
            seed: int, n: int = 8, x: np.ndarray | None = x, decodes: bool = decodes
        ) -> SampleJob:
            return SampleJob(x=x, rows_x=1, params=params(n, seed=seed), decodes=decodes)

        run = sample_runner(model)
        alone = run([job(7)])[0]
        together = run([job(1, 3), job(7), job(2, 20)])
        assert json.dumps(alone.samples) == json.dumps(together[1].samples)
        assert json.dumps(alone.samples) != json.dumps(together[0].samples)
