"""The OpenAPI document can be trusted: number-array tensors, exact integer bounds, the real
error bodies of every status the server sends, security schemes when keys are set, links,
examples that work on the models they name, and /docs served without any CDN."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from app.api.openapi import REQUEST_EXAMPLES, build_openapi
from app.config import Settings
from app.main import create_app
from app.schemas import MAX_SEED, PredictRequest, SampleRequest
from tests.conftest import SHIPPED_MODELS
from tests.servers import Server

KEY = "openapi-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CAR_X = [[0.2, 20.0, 10.0]]


@pytest.fixture(scope="module")
def keyed_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(SHIPPED_MODELS, EBM_API_KEYS=KEY)


@pytest.fixture(scope="module")
def spec(keyed_server: Server) -> dict[str, Any]:
    with keyed_server.client() as client:
        response = client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _leaves(schema: dict[str, Any]) -> set[str]:
    """The types at the bottom of a (nested) array schema; "any" for an empty one."""
    if not schema:
        return {"any"}
    if "anyOf" in schema:
        return set().union(*(_leaves(option) for option in schema["anyOf"]))
    if schema.get("type") == "array":
        return _leaves(schema.get("items", {}))
    return {str(schema.get("type", "any"))}


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


# --- tensors ----------------------------------------------------------------------------
TENSORS = {
    "EnergyRequest": {"x": {"number"}, "y": {"number"}, "z": {"number"}},
    "PredictRequest": {"x": {"number"}, "y_known": {"number"}, "y_mask": {"boolean"}},
    "SampleRequest": {"x": {"number"}, "y_known": {"number"}, "y_mask": {"boolean"}},
    "EnergyResponse": {"grad_y": {"number"}, "grad_z": {"number"}, "z": {"number", "integer"}},
    "Prediction": {"y": {"number"}, "z": {"number", "integer"}, "trajectory": {"number"}},
    "Sample": {"y": {"number"}, "z": {"number", "integer"}, "trajectory": {"number"}},
}


def test_every_tensor_is_a_nested_array_of_numbers_or_booleans(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    for model, fields in TENSORS.items():
        for field, leaves in fields.items():
            found = _leaves(schemas[model]["properties"][field]) - {"null"}
            assert found == leaves, (model, field, found)
    # And nothing anywhere is an array of anything.
    assert not [node for node in _walk(spec) if node.get("items") == {}]


# --- integers -----------------------------------------------------------------------------
def test_whole_number_floats_are_integers_and_fractions_are_refused() -> None:
    body = PredictRequest.model_validate({"k": 1.0, "num_starts": 8.0, "seed": 0.0})
    assert (body.k, body.num_starts, body.seed) == (1, 8, 0)
    assert all(type(v) is int for v in (body.k, body.num_starts, body.seed))
    assert SampleRequest.model_validate({"n": 2.0, "thin": 1e1}).thin == 10
    with pytest.raises(ValidationError, match="whole number"):
        PredictRequest.model_validate({"k": 1.5})
    with pytest.raises(ValidationError):
        PredictRequest.model_validate({"k": True})  # strict: a boolean is not 1


def test_the_server_takes_1_0_for_an_integer_and_refuses_1_5(keyed_server: Server) -> None:
    with keyed_server.client(headers=AUTH) as client:
        whole = client.post(
            "/v1/models/car/predict", json={"x": CAR_X, "k": 1.0, "seed": 3.0, "steps": 5.0}
        )
        fraction = client.post("/v1/models/car/predict", json={"x": CAR_X, "k": 1.5})
    assert whole.status_code == 200, whole.text
    assert len(whole.json()["predictions"][0]) == 1
    assert whole.json()["stats"]["seed"] == 3
    assert fraction.status_code == 422
    assert fraction.json()["error"] == {
        "type": "invalid_request",
        "message": "k: Input should be a whole number, got 1.5",
    }


def test_the_seed_maximum_is_the_exact_integer_the_server_takes(
    spec: dict[str, Any], keyed_server: Server
) -> None:
    for model in ("EnergyRequest", "PredictRequest", "SampleRequest"):
        seed = spec["components"]["schemas"][model]["properties"]["seed"]["anyOf"][0]
        assert seed == {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
        assert type(seed["maximum"]) is int
    with keyed_server.client(headers=AUTH) as client:
        largest = client.post("/v1/models/mixture/sample", json={"n": 1, "seed": MAX_SEED})
        beyond = client.post("/v1/models/mixture/sample", json={"n": 1, "seed": MAX_SEED + 1})
    assert largest.status_code == 200, largest.text
    assert largest.json()["stats"]["seed"] == MAX_SEED
    assert beyond.status_code == 422


def test_every_integer_bound_is_an_integer(spec: dict[str, Any]) -> None:
    bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
    for node in _walk(spec):
        if node.get("type") == "integer":
            assert all(type(node[b]) is int for b in bounds if b in node), node


# --- errors -------------------------------------------------------------------------------
DOCUMENTED = {
    ("post", "/v1/models/{name}/energy"): {400, 401, 404, 405, 413, 422, 429, 500, 503, 504},
    ("post", "/v1/models/{name}/predict"): {400, 401, 404, 405, 413, 422, 429, 500, 503, 504},
    ("post", "/v1/models/{name}/sample"): {400, 401, 404, 405, 413, 422, 429, 500, 503, 504},
    ("get", "/v1/models/{name}"): {401, 404, 405, 413, 422, 503},
    ("get", "/v1/models"): {401, 405, 413, 503},
}


def test_every_v1_operation_documents_its_errors_with_the_real_body(
    spec: dict[str, Any],
) -> None:
    for (method, path), codes in DOCUMENTED.items():
        responses = spec["paths"][path][method]["responses"]
        assert {int(c) for c in responses if c != "200"} >= codes, (method, path)
        for code in codes:
            content = responses[str(code)]["content"]["application/json"]["schema"]
            assert content == {"$ref": "#/components/schemas/ErrorResponse"}, (path, code)
            assert responses[str(code)]["description"]
    for _, _, operation in _operations(spec):
        if "429" in operation["responses"]:
            assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        if "401" in operation["responses"]:
            assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    assert "HTTPValidationError" not in json.dumps(spec)


def test_a_models_metadata_has_its_real_schema(spec: dict[str, Any], keyed_server: Server) -> None:
    responses = spec["paths"]["/v1/models/{name}"]["get"]["responses"]
    detail = _resolve(spec, responses["200"]["content"]["application/json"]["schema"])
    assert {"version", "inputs", "x", "y", "z", "inference", "batching", "card"} <= set(
        detail["properties"]
    )
    assert set(detail["required"]) >= {"name", "version", "inputs", "y", "card", "training"}
    with keyed_server.client(headers=AUTH) as client:
        car = client.get("/v1/models/car").json()
        missing = client.get("/v1/models/nope")
    assert set(car) <= set(detail["properties"])
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"type", "message"}


# --- security -----------------------------------------------------------------------------
def test_keys_set_declare_both_schemes_on_every_guarded_operation(
    spec: dict[str, Any], keyed_server: Server
) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["ApiKeyBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["ApiKeyBearer"]["description"],
    }
    assert schemes["ApiKeyHeader"]["type"] == "apiKey"
    assert (schemes["ApiKeyHeader"]["in"], schemes["ApiKeyHeader"]["name"]) == (
        "header",
        "X-API-Key",
    )
    for path, _, operation in _operations(spec):
        if path.startswith("/v1/models"):
            assert operation["security"] == [{"ApiKeyBearer": []}, {"ApiKeyHeader": []}]
            assert "401" in operation["responses"]
        else:
            assert "security" not in operation, path
    with keyed_server.client() as client:
        assert client.get("/v1/models").status_code == 401
        assert client.get("/v1/models", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/v1/models", headers=AUTH).status_code == 200


def test_without_keys_nothing_is_declared_and_admin_has_its_own_scheme() -> None:
    open_spec = build_openapi(create_app(Settings()))
    assert "securitySchemes" not in open_spec["components"]
    assert all("security" not in op for _, _, op in _operations(open_spec))
    assert all("401" not in op["responses"] for _, _, op in _operations(open_spec))
    admin_spec = build_openapi(create_app(Settings(admin_key="admin")))
    assert set(admin_spec["components"]["securitySchemes"]) == {"AdminBearer"}
    reload = admin_spec["paths"]["/v1/admin/reload"]["post"]
    assert reload["security"] == [{"AdminBearer": []}]
    assert {"401", "403"} <= set(reload["responses"])


# --- links and examples -------------------------------------------------------------------
def test_links_lead_from_the_list_to_each_model_and_its_operations(
    spec: dict[str, Any], keyed_server: Server
) -> None:
    listing = spec["paths"]["/v1/models"]["get"]["responses"]["200"]["links"]
    with keyed_server.client(headers=AUTH) as client:
        names = [m["name"] for m in client.get("/v1/models").json()["models"]]
    assert len(listing) == len(names) == 7
    assert {link["operationId"] for link in listing.values()} == {"get_model"}
    detail = spec["paths"]["/v1/models/{name}"]["get"]["responses"]["200"]["links"]
    assert set(detail) == {"energy", "predict", "sample"}
    assert all(link["parameters"] == {"name": "$response.body#/name"} for link in detail.values())
    operation_ids = {op["operationId"] for _, _, op in _operations(spec)}
    assert {link["operationId"] for link in detail.values()} <= operation_ids


def test_every_request_example_works_on_the_model_it_names(
    spec: dict[str, Any], keyed_server: Server
) -> None:
    sent = 0
    with keyed_server.client(headers=AUTH) as client:
        for path, _, operation in _operations(spec):
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is None or operation["operationId"] not in REQUEST_EXAMPLES:
                continue
            for name, example in body["examples"].items():
                url = path.replace("{name}", example["x-model"])
                response = client.post(url, json=example["value"])
                assert response.status_code == 200, (path, name, response.text)
                sent += 1
    assert sent == sum(len(e) for e in REQUEST_EXAMPLES.values())


def test_the_sample_examples_fit_conditional_and_unconditional_models(
    spec: dict[str, Any], keyed_server: Server
) -> None:
    sample = spec["components"]["schemas"]["SampleRequest"]
    assert "x" in sample["examples"][0]  # the first one shown fits a conditional model
    assert "conditional" in sample["properties"]["x"]["description"]
    with keyed_server.client(headers=AUTH) as client:
        car = client.post("/v1/models/car/sample", json=sample["examples"][0])
        mixture = client.post("/v1/models/mixture/sample", json=sample["examples"][1])
    assert car.status_code == 200, car.text
    assert mixture.status_code == 200, mixture.text


# --- docs offline -------------------------------------------------------------------------
@pytest.mark.parametrize(("page", "assets"), [("/docs", 3), ("/redoc", 2)])
def test_the_docs_pages_load_everything_from_the_server(
    keyed_server: Server, page: str, assets: int
) -> None:
    with keyed_server.client() as client:
        html = client.get(page)
        assert html.status_code == 200
        assert "text/html" in html.headers["content-type"]
        assert "http://" not in html.text
        assert "https://" not in html.text
        urls = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert len(urls) == assets, urls
        for url in urls:
            assert url.startswith("/docs/assets/"), url
            asset = client.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 1000, url
        if page == "/docs":
            assert "'/openapi.json'" in html.text
            assert '"validatorUrl": null' in html.text
        assert client.get("/openapi.json").status_code == 200
