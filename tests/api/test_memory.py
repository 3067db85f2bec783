"""A process serving the seven shipped models on onnxruntime stays small (issue 9: it
imported torch for the cross-backend check and started at ~500 MB even on onnxruntime)."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import SHIPPED_MODELS
from tests.servers import Server, rss_mb


def test_serving_on_onnxruntime_loads_no_torch_and_stays_under_300_mb(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory(SHIPPED_MODELS, EBM_BACKEND="onnx")
    with server.client() as client:
        assert client.get("/readyz").status_code == 200
        body = {"x": [[0.0, 20.0, 10.0]], "seed": 0}
        assert client.post("/v1/models/car/predict", json=body).status_code == 200
    maps = open(f"/proc/{server.process.pid}/maps").read()  # noqa: SIM115
    assert "libtorch" not in maps
    assert rss_mb(server.process.pid) < 300
