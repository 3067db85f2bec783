"""Request and response bodies of the HTTP API (pydantic v2).

Tensors travel as nested lists, row-major, the batch on the first axis. Their shapes depend
on the model, so the schema accepts nested lists and ``app.api.tensors`` checks them against
the model's manifest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler, WithJsonSchema
from pydantic_core import PydanticKnownError, core_schema

from app.api.body import ParsedTensor

NestedList = list[Any]


def _nested(leaf: dict[str, Any], depth: int) -> dict[str, Any]:
    """Rows of ``leaf`` values nested up to ``depth`` levels (a row's rank, at most 3)."""
    inner: dict[str, Any] = {"type": "array", "items": leaf}
    for _ in range(depth - 1):
        inner = {"type": "array", "items": {"anyOf": [leaf, inner]}}
    return {"type": "array", "minItems": 1, "items": inner}


class _ListOrParsed:
    """A request tensor: nested lists, or the array the body parser process already made
    of them (large bodies, see app.api.body). Refused as "a valid list" otherwise."""

    def __get_pydantic_core_schema__(
        self, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(_list_or_parsed)


def _list_or_parsed(value: Any) -> Any:
    if isinstance(value, list | ParsedTensor):
        return value
    raise PydanticKnownError("list_type")


# [N, *shape]: nested lists of numbers (true/false for a mask), as the schema says;
# app.api.tensors checks the shape against the model.
Tensor = Annotated[Any, _ListOrParsed(), WithJsonSchema(_nested({"type": "number"}, 3))]
Mask = Annotated[Any, _ListOrParsed(), WithJsonSchema(_nested({"type": "boolean"}, 3))]


class ErrorBody(BaseModel):
    type: str = Field(description="Stable machine-readable error kind.")
    message: str = Field(description="What was wrong and what is allowed.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class EnergyRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # "yes" is not a boolean and "2" is not a version
        json_schema_extra={
            "examples": [
                {"x": [[0.2, 20.0, 10.0]], "y": [[20.0, 2.5]]},
                {
                    "x": [[0.2, 20.0, 10.0], [0.2, 20.0, 10.0]],
                    "y": [[20.0, 2.5], [20.0, 0.0]],
                    "grad": True,
                },
            ]
        },
    )

    x: Tensor | None = Field(
        None, description="Observations [N, *x_shape]; omit for unconditional models."
    )
    y: Tensor = Field(description="Answers to score [N, *y_shape], paired row by row with x.")
    z: Tensor | None = Field(None, description="Latent values [N, *z_shape], latent models.")
    grad: bool = Field(False, description="Also return dE/dy (and dE/dz for latent models).")
    version: int | None = Field(None, ge=1, description="Model version; default the newest.")
    deadline_ms: float | None = Field(
        None, gt=0, le=600_000, description="Give up (504) after this long; default server's."
    )
    free_energy: Literal["min", "marginal"] | None = Field(
        None,
        description="Latent models, z omitted: reduce E(x, y, z) over z. min: F = min_z E "
        "(enumeration of a discrete z, multi-start descent over a continuous one; returns the "
        "arg-min z). marginal: F = -1/beta log mean_z exp(-beta E) over every label of a "
        "discrete z, or num_samples prior samples of a continuous one.",
    )
    beta: float | None = Field(
        None, gt=0, le=1e6, description="Inverse temperature of the marginal; default the model's."
    )
    num_samples: int | None = Field(
        None, ge=1, le=100_000, description="Prior samples of a continuous z for the marginal."
    )
    seed: int | None = Field(
        None, ge=0, lt=2**63, description="Seeds prior samples and descent starts."
    )


class EnergyResponse(BaseModel):
    model: str
    version: int
    energy: list[float] = Field(description="E(x, y) per row [N], or F(x, y) with free_energy.")
    grad_y: NestedList | None = Field(None, description="dE/dy [N, *y_shape], with grad.")
    grad_z: NestedList | None = Field(None, description="dE/dz [N, *z_shape], with grad.")
    z: list[Any] | None = Field(None, description="With free_energy=min: the arg-min z per row.")


class SearchFields(BaseModel):
    """Fields shared by /predict and /sample: fill-in-the-blanks, seed, budget, version."""

    model_config = ConfigDict(extra="forbid", strict=True)

    x: Tensor | None = Field(
        None, description="Observations [N, *x_shape]; omit for unconditional models."
    )
    y_known: Tensor | None = Field(
        None,
        description="Fill in the blanks: values [N, *y_shape] of the observed components of "
        "y (those where y_mask is true); the others are inferred. Needs y_mask.",
    )
    y_mask: Mask | None = Field(
        None, description="Booleans [N, *y_shape]: true where y_known is observed (clamped)."
    )
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Seeds every random draw: the same seed gives the same answer. "
        "Default: a fresh seed, returned in stats.",
    )
    deadline_ms: float | None = Field(
        None,
        gt=0,
        le=600_000,
        description="Stop by then and return the best found so far, marked partial (504 if "
        "nothing could start). Default: the server's request timeout.",
    )
    version: int | None = Field(None, ge=1, description="Model version; default the newest.")


class PredictRequest(SearchFields):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"x": [[0.2, 20.0, 10.0]], "k": 2, "seed": 0},
                {"x": [[0.2, 20.0, 10.0]], "method": "dfo", "num_starts": 512, "seed": 1},
            ]
        },
    )

    k: int | None = Field(None, ge=1, le=1000, description="Predictions per x, at most.")
    method: Literal["auto", "gd", "langevin", "dfo", "enumerate"] | None = Field(
        None, description="Optimiser; auto = what the model's manifest says suits it."
    )
    num_starts: int | None = Field(
        None, ge=1, le=65_536, description="Candidates per x (starts; dfo: population)."
    )
    steps: int | None = Field(
        None, ge=0, le=100_000, description="Iterations (dfo: resampling rounds)."
    )
    step_size: float | None = Field(
        None, gt=0, le=1e6, description="gd: first Adam step; langevin: first step size."
    )
    noise_scale: float | None = Field(
        None, ge=0, le=1e6, description="langevin: noise multiplier; dfo: first jitter std."
    )
    temperature: float | None = Field(
        None, gt=0, le=1e6, description="T of softmax(-E/T): mode masses, dfo resampling."
    )
    merge_radius: float | None = Field(
        None, gt=0, le=1e6, description="Candidates closer than this in y merge into a mode."
    )
    tol: float | None = Field(
        None, ge=0, le=1e6, description="Stop once every start's gradient norm is below this."
    )
    return_trajectory: bool = Field(False, description="Also return each prediction's path.")


class Prediction(BaseModel):
    y: NestedList
    energy: float
    z: NestedList | int | None = Field(None, description="Latent of the prediction, if any.")
    mass: float = Field(description="Share of softmax(-E/T) of the candidates merged into it.")
    converged: bool | None = Field(
        None, description="Gradient norm below tol at the end (null for gradient-free methods)."
    )
    trajectory: list[NestedList] | None = None


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[list[Prediction]] = Field(description="Per x, lowest energy first.")
    stats: dict[str, Any] = Field(description="Method, steps run, candidates, time, seed.")


class SampleRequest(SearchFields):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"n": 8, "seed": 0},
                {"x": [[0.2, 20.0, 10.0]], "n": 16, "steps": 200, "seed": 0},
            ]
        },
    )

    n: int = Field(16, ge=1, le=100_000, description="Samples per x.")
    temperature: float = Field(
        1.0, gt=0, le=1e6, description="Samples follow exp(-E/T); scales a normal prior's variance."
    )
    steps: int | None = Field(
        None, ge=0, le=100_000, description="Langevin: burn-in steps (default: the model's)."
    )
    step_size: float | None = Field(
        None, gt=0, le=1e6, description="Langevin step (default: the model's langevin step)."
    )
    chains: int | None = Field(
        None, ge=1, le=100_000, description="Langevin chains per x; default n (one state each)."
    )
    thin: int = Field(1, ge=1, le=10_000, description="Langevin: steps between kept states.")
    return_trajectory: bool = Field(False, description="Langevin: each chain's path.")


class Sample(BaseModel):
    y: NestedList
    energy: float
    z: NestedList | int | None = None
    trajectory: list[NestedList] | None = None


class SampleResponse(BaseModel):
    model: str
    version: int
    samples: list[list[Sample]] = Field(description="Per x, n samples.")
    stats: dict[str, Any]


class ModelSummary(BaseModel):
    name: str
    available: bool
    versions: list[int] = Field(description="Versions that serve.")
    latest: int | None
    unavailable: list[dict[str, Any]] = Field(
        description="Versions that failed a load check, with the reason."
    )
    backend: str | None
    task: str | None


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)
