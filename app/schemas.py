"""Request and response bodies of the HTTP API (pydantic v2).

Tensors travel as nested lists, row-major, the batch on the first axis. Their shapes depend
on the model, so the schema accepts nested lists and ``app.api.tensors`` checks them against
the model's manifest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError, PydanticKnownError, core_schema

from app.api.body import ParsedTensor
from app.registry.manifest import Batching, Card, InferenceDefaults, TensorSpec, Training


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

# Response tensors (finite numbers: a result that is not finite is refused, never sent):
# a batch [N, *shape], one row [*shape] (rank 1 to 3, as requests take), a path of rows.
_ROW: dict[str, Any] = _nested({"type": "number"}, 3)["items"]
BatchOut = Annotated[list[Any], WithJsonSchema(_nested({"type": "number"}, 3))]
RowOut = Annotated[list[Any], WithJsonSchema(_ROW)]
PathOut = Annotated[list[Any], WithJsonSchema({"type": "array", "items": _ROW})]


def _whole_number(value: Any) -> Any:
    """JSON Schema's "integer" counts 1.0 as an integer, so an integer field takes it (as 1);
    1.5 is refused. Booleans stay refused (strict mode): true is not 1."""
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise PydanticCustomError(
            "int_from_float", "Input should be a whole number, got {value}", {"value": value}
        )
    return value


# An integer field: JSON integers and whole-number floats such as 1.0 or 1e3, exactly the
# values the schema's "integer" admits.
Integer = Annotated[int, BeforeValidator(_whole_number)]
# The optional form (the validator outside the union, so that Field bounds stay "minimum"
# and "maximum" of the integer in the schema).
IntegerOrNone = Annotated[int | None, BeforeValidator(_whole_number)]

# Seeds are 63-bit; the schema states the bound as this exact integer (inclusive).
MAX_SEED = 2**63 - 1


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
    version: IntegerOrNone = Field(None, ge=1, description="Model version; default the newest.")
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
    num_samples: IntegerOrNone = Field(
        None, ge=1, le=100_000, description="Prior samples of a continuous z for the marginal."
    )
    seed: IntegerOrNone = Field(
        None, ge=0, le=MAX_SEED, description="Seeds prior samples and descent starts."
    )


class EnergyResponse(BaseModel):
    model: str
    version: int
    energy: list[float] = Field(description="E(x, y) per row [N], or F(x, y) with free_energy.")
    grad_y: BatchOut | None = Field(None, description="dE/dy [N, *y_shape], with grad.")
    grad_z: BatchOut | None = Field(None, description="dE/dz [N, *z_shape], with grad.")
    z: list[int | RowOut] | None = Field(
        None,
        description="With free_energy=min: the arg-min z per row (a label for a discrete z).",
    )
    beta: float | None = Field(None, description="With free_energy=marginal: the beta used.")
    num_samples: int | None = Field(
        None, description="With free_energy=marginal: the z values averaged over."
    )
    stats: dict[str, Any] | None = Field(
        None, description="With free_energy=min over a continuous z: the descent's stats."
    )


class SearchFields(BaseModel):
    """Fields shared by /predict and /sample: fill-in-the-blanks, seed, budget, version."""

    model_config = ConfigDict(extra="forbid", strict=True)

    x: Tensor | None = Field(
        None,
        description="Observations [N, *x_shape], one answer set per row: required by "
        "conditional models (GET /v1/models/{name} lists x in its inputs; e.g. car), refused "
        "by unconditional ones (e.g. mixture).",
    )
    y_known: Tensor | None = Field(
        None,
        description="Fill in the blanks: values [N, *y_shape] of the observed components of "
        "y (those where y_mask is true); the others are inferred. Needs y_mask.",
    )
    y_mask: Mask | None = Field(
        None, description="Booleans [N, *y_shape]: true where y_known is observed (clamped)."
    )
    seed: IntegerOrNone = Field(
        None,
        ge=0,
        le=MAX_SEED,
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
    version: IntegerOrNone = Field(None, ge=1, description="Model version; default the newest.")


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

    k: IntegerOrNone = Field(None, ge=1, le=1000, description="Predictions per x, at most.")
    method: Literal["auto", "gd", "langevin", "dfo", "enumerate"] | None = Field(
        None, description="Optimiser; auto = what the model's manifest says suits it."
    )
    num_starts: IntegerOrNone = Field(
        None, ge=1, le=65_536, description="Candidates per x (starts; dfo: population)."
    )
    steps: IntegerOrNone = Field(
        None, ge=0, le=100_000, description="Iterations (langevin: chain steps; dfo: rounds)."
    )
    step_size: float | None = Field(
        None, gt=0, le=1e6, description="gd: first Adam step; langevin: first chain step."
    )
    noise_scale: float | None = Field(
        None,
        ge=0,
        le=1e6,
        description="langevin: sqrt(T) of its chains (unset: T from the landscape); "
        "dfo: first jitter std.",
    )
    temperature: float | None = Field(
        None, gt=0, le=1e6, description="T of softmax(-E/T) for the mode masses."
    )
    merge_radius: float | None = Field(
        None, gt=0, le=1e6, description="Candidates closer than this in y merge into a mode."
    )
    tol: float | None = Field(
        None,
        ge=0,
        le=1e6,
        description="Stop once every start's projected gradient norm is below this; unset: "
        "once every start is estimated within 0.1% of the bounds of a stationary point.",
    )
    return_trajectory: bool = Field(False, description="Also return each prediction's path.")


class Prediction(BaseModel):
    y: RowOut = Field(description="The answer [*y_shape] (a discrete y: [label]).")
    energy: float
    z: RowOut | int | None = Field(
        None, description="Latent of the prediction [*z_shape] (a discrete z: its label)."
    )
    mass: float = Field(description="Share of softmax(-E/T) of the candidates merged into it.")
    converged: bool | None = Field(
        None,
        description="Stationary at the end: by tol when set, else by estimated distance "
        "(null where no gradient was taken).",
    )
    trajectory: PathOut | None = Field(
        None, description="With return_trajectory: y at each step [steps, *y_shape]."
    )


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[list[Prediction]] = Field(description="Per x, lowest energy first.")
    stats: dict[str, Any] = Field(description="Method, steps run, candidates, time, seed.")


class SampleRequest(SearchFields):
    """n samples per x. A conditional model (car, shapes, digits-inpaint) needs x; an
    unconditional one (mixture, ellipse, spiral) takes none."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                # conditional models need x (this one is car's); unconditional ones omit it
                {"x": [[0.2, 20.0, 10.0]], "n": 16, "steps": 200, "seed": 0},
                {"n": 8, "seed": 0},
            ]
        },
    )

    n: Integer = Field(16, ge=1, le=100_000, description="Samples per x.")
    temperature: float = Field(
        1.0, gt=0, le=1e6, description="Samples follow exp(-E/T); scales a normal prior's variance."
    )
    steps: IntegerOrNone = Field(
        None, ge=0, le=100_000, description="Langevin: burn-in steps (default: the model's)."
    )
    step_size: float | None = Field(
        None, gt=0, le=1e6, description="Langevin step (default: the model's langevin step)."
    )
    chains: IntegerOrNone = Field(
        None, ge=1, le=100_000, description="Langevin chains per x; default n (one state each)."
    )
    thin: Integer = Field(1, ge=1, le=10_000, description="Langevin: steps between kept states.")
    return_trajectory: bool = Field(False, description="Langevin: each chain's path.")


class Sample(BaseModel):
    y: RowOut = Field(description="The sample [*y_shape].")
    energy: float
    z: RowOut | int | None = Field(
        None, description="Its latent [*z_shape] (a discrete z: its label), latent models."
    )
    trajectory: PathOut | None = Field(
        None, description="With return_trajectory: the chain's kept states [T, *y_shape]."
    )


class SampleResponse(BaseModel):
    model: str
    version: int
    samples: list[list[Sample]] = Field(description="Per x, n samples.")
    stats: dict[str, Any]


class UnavailableVersion(BaseModel):
    version: int
    reason: str = Field(description="The load check it failed.")


class ModelSummary(BaseModel):
    name: str
    available: bool
    versions: list[int] = Field(description="Versions that serve.")
    latest: int | None
    unavailable: list[UnavailableVersion] = Field(
        description="Versions that failed a load check, with the reason."
    )
    backend: str | None
    task: str | None


class EffectiveSettings(BaseModel):
    """What a method runs with when a request sets none of these."""

    num_starts: int
    steps: int
    step_size: float
    noise_scale: float | None = Field(
        description="None: langevin derives its temperature from the landscape."
    )
    temperature: float


class ModelInference(InferenceDefaults):
    """The manifest's inference defaults, the method auto picks, and each usable method's
    effective settings."""

    default_method: str
    effective: dict[str, EffectiveSettings]


class ModelBatching(Batching):
    """The manifest's batching limits and those in force (EBM_MAX_BATCH_SIZE and
    EBM_MAX_DELAY_MS override the manifest)."""

    effective_max_batch_size: int
    effective_max_delay_ms: float


class ModelDetail(ModelSummary):
    """GET /v1/models/{name}: one version's specs, defaults, limits, card and provenance."""

    version: int = Field(description="The version described (?version=N, default the newest).")
    description: str
    inputs: list[str] = Field(description="The energy's inputs, in order: x (if any), y, z?.")
    x: TensorSpec | None = Field(description="Observation spec; null for unconditional models.")
    y: TensorSpec
    z: TensorSpec | None = Field(description="Latent spec; null without a latent.")
    inference: ModelInference
    batching: ModelBatching
    card: Card
    metrics: dict[str, float | int | str] = Field(description="Measured held-out quality.")
    training: Training
    parity: dict[str, dict[str, float]] | None = Field(
        None, description="Load-time agreement of the backend with the probe (embedded mode)."
    )
    rows_independent: bool | None = Field(
        None,
        description="Whether a row's result is independent of its batch here (embedded mode; "
        "null in queue mode, where workers load the artifacts).",
    )


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: str
    detail: dict[str, Any] = Field(default_factory=dict)


class UnavailableModel(BaseModel):
    name: str
    version: int
    reason: str = Field(description="The load check it failed.")


class ReloadResult(BaseModel):
    """POST /v1/admin/reload: what serves after the reload."""

    models: dict[str, list[int]] = Field(description="Versions that serve, per model.")
    unavailable: list[UnavailableModel] = Field(description="Versions that failed a check.")
    took_ms: float = Field(description="How long loading and swapping took.")
    workers_notified: int | None = Field(
        None, description="Queue mode: workers that were told to reload too."
    )
