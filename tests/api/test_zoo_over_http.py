"""Every shipped model over HTTP: its metadata carries the card, and /energy reproduces the
energies (and gradients) torch computed at export for the manifest's probe rows."""

from __future__ import annotations

import numpy as np
import pytest

from app.registry.manifest import read_manifest
from tests.conftest import SHIPPED_MODELS
from tests.servers import Server

MANIFESTS = sorted(SHIPPED_MODELS.glob("*/[0-9]*/manifest.json"))


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.parent.parent.name for p in MANIFESTS])
def test_energy_endpoint_reproduces_the_export_probe(server: Server, path: object) -> None:
    manifest = read_manifest(path)  # type: ignore[arg-type]
    assert manifest.probe is not None
    # grad only where there is something to differentiate (digits' y is a label)
    body = {**manifest.probe.inputs, "grad": bool(manifest.grad_names)}
    body["version"] = manifest.version
    with server.client() as client:
        response = client.post(f"/v1/models/{manifest.name}/energy", json=body)
        detail = client.get(f"/v1/models/{manifest.name}").json()
    assert response.status_code == 200, response.text
    result = response.json()
    np.testing.assert_allclose(result["energy"], manifest.probe.energy, rtol=1e-4, atol=1e-4)
    for name, grad in manifest.probe.grads.items():
        np.testing.assert_allclose(result[f"grad_{name}"], grad, rtol=1e-4, atol=1e-4)
    assert detail["card"]["task"]
    assert detail["card"]["method"]
    assert detail["metrics"] == manifest.metrics
