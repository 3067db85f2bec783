"""Free energies and sampling of the shipped latent models, over HTTP on a real server.

The reductions are checked against the same energies scored with z given: the mixture's
F_beta is the logsumexp formula over its 8 labels, and the ellipse's F_inf is the minimum of
its learned energy over a dense z grid.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np

from tests.conftest import Server

POINTS = [[2.0, 0.0], [0.0, 0.0], [-1.0, 1.5], [0.3, -2.2]]


def _post(server: Server, name: str, op: str, body: Any) -> httpx.Response:
    with server.client() as client:
        return client.post(f"/v1/models/{name}/{op}", json=body, timeout=60)


def _energies_over(server: Server, name: str, y: list[list[float]], zs: np.ndarray) -> np.ndarray:
    """E(y_i, z_j) ``[len(y), len(zs)]`` from /energy with z given, one request per y."""
    rows = []
    for point in y:
        body = {"y": [point] * len(zs), "z": zs.reshape(len(zs), -1).tolist()}
        response = _post(server, name, "energy", body)
        assert response.status_code == 200, response.text
        rows.append(response.json()["energy"])
    return np.array(rows)


def test_mixture_free_energies_are_the_formulas_over_its_labels(server: Server) -> None:
    energy = _energies_over(server, "mixture", POINTS, np.arange(8.0))
    for beta in (0.5, 1.0, 3.0):
        body = _post(
            server, "mixture", "energy", {"y": POINTS, "free_energy": "marginal", "beta": beta}
        ).json()
        expected = -np.log(np.mean(np.exp(-beta * energy), axis=1)) / beta
        np.testing.assert_allclose(body["energy"], expected, atol=1e-3)
    body = _post(server, "mixture", "energy", {"y": POINTS, "free_energy": "min"}).json()
    np.testing.assert_allclose(body["energy"], energy.min(axis=1), atol=1e-6)
    assert body["z"] == energy.argmin(axis=1).tolist()


def test_ellipse_min_free_energy_is_the_minimum_over_a_dense_latent_grid(server: Server) -> None:
    grid = np.linspace(-np.pi, np.pi, 4001, dtype=np.float32)
    energy = _energies_over(server, "ellipse", POINTS, grid)
    body = _post(server, "ellipse", "energy", {"y": POINTS, "free_energy": "min", "seed": 3})
    assert body.status_code == 200, body.text
    np.testing.assert_allclose(body.json()["energy"], energy.min(axis=1), atol=1e-3)
    assert body.json()["stats"]["method"] == "gd"


def test_ellipse_marginal_matches_a_fine_quadrature(server: Server) -> None:
    grid = (np.arange(8000, dtype=np.float64) + 0.5) / 8000 * 2 * np.pi - np.pi
    energy = _energies_over(server, "ellipse", POINTS, grid.astype(np.float32))
    for beta in (1.0, 20.0):
        expected = -np.log(np.mean(np.exp(-beta * energy), axis=1)) / beta
        body = _post(
            server, "ellipse", "energy", {"y": POINTS, "free_energy": "marginal", "beta": beta}
        ).json()
        np.testing.assert_allclose(body["energy"], expected, atol=1e-3)


def test_free_energy_errors(server: Server) -> None:
    cases = [
        ("car", {"x": [[0.0, 20.0, 10.0]], "y": [[20.0, 2.0]], "free_energy": "min"}),
        ("ellipse", {"y": POINTS, "z": [[0.0]] * 4, "free_energy": "min"}),
        ("ellipse", {"y": POINTS, "free_energy": "max"}),
        ("ellipse", {"y": POINTS, "z": [[0.0]] * 4, "beta": 2.0}),
        ("ellipse", {"y": POINTS, "free_energy": "marginal", "beta": 0}),
    ]
    for name, body in cases:
        response = _post(server, name, "energy", body)
        assert response.status_code == 422, (body, response.text)
        assert set(response.json()["error"]) == {"type", "message"}


def test_sampling_a_decoder_model_draws_prior_latents_onto_its_curve(server: Server) -> None:
    body = _post(server, "ellipse", "sample", {"n": 20, "seed": 5}).json()
    (samples,) = body["samples"]
    assert len(samples) == 20
    assert body["stats"]["method"] == "prior"
    z = np.array([s["z"] for s in samples])
    energy = _energies_over(server, "ellipse", [s["y"] for s in samples[:5]], z[:5])
    np.testing.assert_allclose(np.diag(energy), [s["energy"] for s in samples[:5]], atol=1e-5)
    assert max(s["energy"] for s in samples) < 1e-4  # y = Dec(z) exactly


def test_sampling_the_mixture_lands_near_its_centres(server: Server) -> None:
    body = _post(server, "mixture", "sample", {"n": 200, "seed": 1}).json()
    (samples,) = body["samples"]
    assert body["stats"]["method"] == "langevin"
    y = np.array([s["y"] for s in samples])
    radius = np.linalg.norm(y, axis=1)
    # eight clusters of std 0.15 on the ring of radius 2
    assert np.mean(np.abs(radius - 2.0) < 0.5) > 0.95
    assert len({s["z"] for s in samples}) == 8


def test_sample_counts_seed_and_errors(server: Server) -> None:
    body = {"x": [[0.0, 20.0, 10.0], [0.5, 15.0, 8.0]], "n": 6, "chains": 2, "thin": 3}
    first = _post(server, "car", "sample", body | {"seed": 4}).json()
    again = _post(server, "car", "sample", body | {"seed": 4}).json()
    assert [len(row) for row in first["samples"]] == [6, 6]
    assert first["samples"] == again["samples"]
    assert first["stats"]["seed"] == 4
    for name, bad, status in [
        ("digits", {"x": [[[0.0] * 8] * 8], "n": 2}, 422),
        ("car", {"x": [[0.0, 20.0, 10.0]], "n": 0}, 422),
        ("car", {"n": 2}, 422),
        ("ellipse", {"x": [[0.0]], "n": 2}, 422),
        ("car", {"x": [[0.0, 20.0, 10.0]], "n": 100_000, "steps": 100_000}, 413),
    ]:
        response = _post(server, name, "sample", bad)
        assert response.status_code == status, (bad, response.text)
    assert _post(server, "car", "sample", body).status_code == 200  # still serving
