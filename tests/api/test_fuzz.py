"""Schemathesis fuzzes a real server from the OpenAPI document it serves.

Every operation is fuzzed (examples, coverage and fuzzing phases, positive and negative
data) with every check, and a stateful run follows the document's links from the model
list to real model names, so the compute routes are reached with names that exist rather
than only with random ones (404). The number of examples is bounded and generation is
deterministic (fixed seed), so the run takes the same ~minute every time.

The server runs with API keys, so the auth checks (``ignored_auth``: no key must mean 401
wherever the document declares security) run too, with a small search budget and request
timeout, so that no generated request can hold the two cores for long.

Exceptions to a check are configured in ``CONFIG`` only, each with its reason, and each
exception is narrowed again by a check of ours (``EXTRA_CHECKS``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.generation.stateful.state_machine import APIStateMachine
from schemathesis.specs.openapi.schemas import OpenApiSchema

from tests.conftest import SHIPPED_MODELS
from tests.servers import Server

FUZZ_KEY = "fuzz-key"

CONFIG: dict[str, Any] = {
    "seed": 20240601,  # deterministic: the same cases every run
    "generation": {"mode": "all", "max-examples": 120, "deterministic": True},
    "auth": {"openapi": {"ApiKeyBearer": {"bearer": FUZZ_KEY}}},
    "request-timeout": 30,
    "phases": {"stateful": {"max-steps": 6}},
    "checks": {
        # Every check is on (the default, as `--checks all`); the exceptions:
        "not_a_server_error": {
            # 504 deadline_exceeded is documented and is the right answer when the client's
            # own deadline_ms passes (e.g. 0.001 ms); narrowed by
            # `a_504_only_for_a_deadline_the_client_set`.
            "expected-statuses": ["2xx", "3xx", "4xx", "504"],
        },
        "positive_data_acceptance": {
            "expected-statuses": [
                "2xx",
                "3xx",
                "401",
                "403",
                "404",
                "409",
                "429",
                "5xx",
                # The schema is the same for every model; what fits one (shape, bounds, which
                # fields apply) is in GET /v1/models/{name}, so a schema-valid body can still
                # not fit the model named: 422 invalid_input (narrowed by
                # `positive_data_refused_only_for_not_fitting_the_model`).
                "422",
                # Limits that depend on the model and the server's settings (rows per
                # request, EBM_MAX_SEARCH_COST): 413 payload_too_large, stating the limit.
                "413",
            ],
        },
    },
}


def positive_data_refused_only_for_not_fitting_the_model(
    ctx: CheckContext, response: Response, case: Case
) -> bool | None:
    """Schema-valid data may get 422 only as invalid_input (the body does not fit the
    model), never invalid_request: that would be the schema promising what the request
    validation refuses."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    kind = response.json()["error"]["type"]
    assert kind == "invalid_input", f"schema-valid data refused as {kind}: {response.text}"
    return True


def a_504_only_for_a_deadline_the_client_set(
    ctx: CheckContext, response: Response, case: Case
) -> bool | None:
    """504 only when the request set its own deadline_ms (the server's default, 10 s here,
    is far beyond what any request of this run needs)."""
    if response.status_code != 504:
        return None
    body = case.body if isinstance(case.body, dict) else {}
    assert body.get("deadline_ms") is not None, f"504 without a client deadline: {body}"
    assert response.json()["error"]["type"] == "deadline_exceeded", response.text
    return True


EXTRA_CHECKS: list[Callable[..., bool | None]] = [
    positive_data_refused_only_for_not_fitting_the_model,
    a_504_only_for_a_deadline_the_client_set,
]


@pytest.fixture(scope="module")
def fuzz_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory(
        SHIPPED_MODELS,
        EBM_API_KEYS=FUZZ_KEY,
        EBM_MAX_SEARCH_COST="20000",
        EBM_REQUEST_TIMEOUT_MS="10000",
    )


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> OpenApiSchema:
    config = schemathesis.Config.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """Schemathesis' lazy schemas (4.32) read and rename ``node._nodeid`` to label each
    operation's subtest; pytest 9 keeps the node id elsewhere, so give it the attribute."""
    node: Any = request.node
    node._nodeid = node.nodeid


@schema.parametrize()
def test_every_operation_conforms(case: Case) -> None:
    case.call_and_validate(additional_checks=EXTRA_CHECKS)


STATEFUL = hypothesis.settings(
    max_examples=120,
    stateful_step_count=8,
    derandomize=True,  # deterministic
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)


def test_the_links_reach_real_models(api_schema: OpenApiSchema) -> None:
    links = api_schema.raw_schema["paths"]["/v1/models"]["get"]["responses"]["200"]["links"]
    models = sorted(p.name for p in SHIPPED_MODELS.iterdir() if p.is_dir())
    assert len(links) == len(models)
    reached: set[tuple[str, str]] = set()

    class Links(api_schema.as_state_machine()):  # type: ignore[misc]
        def after_call(self, response: Response, case: Case) -> None:
            super().after_call(response, case)
            name = (case.path_parameters or {}).get("name")
            if name in models and response.status_code != 404:
                reached.add((case.operation.path.rsplit("/", 1)[-1], name))

        def validate_response(
            self,
            response: Response,
            case: Case,
            additional_checks: list[Any] | None = None,
            **kwargs: Any,
        ) -> None:
            super().validate_response(
                response, case, additional_checks=[*EXTRA_CHECKS, *(additional_checks or [])]
            )

    assert issubclass(Links, APIStateMachine)
    Links.run(settings=STATEFUL)
    # The links led to real models, and from there to their compute routes.
    assert {op for op, _ in reached} >= {"{name}", "energy", "predict", "sample"}, reached
