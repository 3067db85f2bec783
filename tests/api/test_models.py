"""Discovery endpoints, health, docs: what a client reads before it sends work."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Server


def test_health_and_readiness(server: Server) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["detail"]["models"]["quad"] == [1, 2]


def test_model_list_and_detail(server: Server) -> None:
    with server.client() as client:
        listing = client.get("/v1/models").json()["models"]
        detail = client.get("/v1/models/quad").json()
        old = client.get("/v1/models/quad", params={"version": 1}).json()
        missing = client.get("/v1/models/quad", params={"version": 5})
    quad = next(m for m in listing if m["name"] == "quad")
    assert quad == {
        "name": "quad",
        "available": True,
        "versions": [1, 2],
        "latest": 2,
        "unavailable": [],
        "backend": "onnx",
        "task": "analytic quadratic",
    }
    assert detail["version"] == 2
    assert old["version"] == 1
    assert detail["inputs"] == ["x", "y"]
    assert detail["y"]["low"] == [-10.0, -10.0]
    assert detail["card"]["task"] == "analytic quadratic"
    assert detail["batching"]["max_rows_per_request"] == 64
    assert detail["batching"]["effective_max_batch_size"] == 256
    assert max(detail["parity"]["onnx_vs_torch"].values()) <= 1e-4
    assert missing.status_code == 404


def test_openapi_documents_the_energy_endpoint_with_examples(server: Server) -> None:
    with server.client() as client:
        spec = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert docs.status_code == 200
    for op, request in (
        ("energy", "EnergyRequest"),
        ("predict", "PredictRequest"),
        ("sample", "SampleRequest"),
    ):
        operation = spec["paths"][f"/v1/models/{{name}}/{op}"]["post"]
        assert {"404", "413", "422", "429", "504"} <= set(operation["responses"])
        assert spec["components"]["schemas"][request]["examples"]


def test_model_metadata_states_each_methods_effective_settings(server: Server) -> None:
    with server.client() as client:
        car = client.get("/v1/models/car").json()
        digits = client.get("/v1/models/digits").json()
    inference = car["inference"]
    assert inference["default_method"] == "gd"
    assert set(inference["effective"]) == {"gd", "langevin", "dfo"}
    assert inference["effective"]["gd"]["step_size"] == inference["step_size"]
    assert car["rows_independent"] is True  # onnxruntime rows do not depend on the batch
    assert set(digits["inference"]["effective"]) == {"enumerate"}


def test_a_broken_model_is_listed_unavailable_while_others_serve(
    server_factory: Callable[..., Server], serving_models: Path, tmp_path: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(serving_models, root)
    manifest_path = root / "quad" / "2" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"]["energy_onnx"]["sha256"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    server = server_factory(root)
    with server.client() as client:
        listing = client.get("/v1/models").json()["models"]
        quad = next(m for m in listing if m["name"] == "quad")
        pinned = client.post(
            "/v1/models/quad/energy", json={"x": [[0, 0]], "y": [[0, 0]], "version": 2}
        )
        default = client.post("/v1/models/quad/energy", json={"x": [[0, 0]], "y": [[0, 0]]})
    assert quad["versions"] == [1]
    assert quad["unavailable"][0]["version"] == 2
    assert "sha256" in quad["unavailable"][0]["reason"]
    assert pinned.status_code == 503
    assert pinned.json()["error"]["type"] == "model_unavailable"
    assert default.status_code == 200
    assert default.json()["version"] == 1
    assert "quad version 2 unavailable" in server.log_text()


def test_api_keys_guard_the_model_routes(
    server_factory: Callable[..., Server], serving_models: Path
) -> None:
    server = server_factory(serving_models, EBM_API_KEYS="k1, k2")
    body = {"x": [[0, 0]], "y": [[0, 0]]}
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        refused = client.post("/v1/models/quad/energy", json=body)
        # every model operation, the compute routes' own handler included
        unguarded = [
            path
            for path, payload in (
                ("/v1/models/quad/predict", {"x": [[0, 0]]}),
                ("/v1/models/quad/sample", {"x": [[0, 0]]}),
            )
            if client.post(path, json=payload).status_code != 401
        ] + [p for p in ("/v1/models", "/v1/models/quad") if client.get(p).status_code != 401]
        bearer = client.post(
            "/v1/models/quad/energy", json=body, headers={"Authorization": "Bearer k2"}
        )
        header = client.get("/v1/models", headers={"X-API-Key": "k1"})
        wrong = client.get("/v1/models", headers={"X-API-Key": "k3"})
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "unauthorized"
    assert unguarded == []
    assert bearer.status_code == 200
    assert header.status_code == 200
    assert wrong.status_code == 401
