"""Request and response bodies of the HTTP API (pydantic v2).

Tensors travel as nested lists, row-major, the batch on the first axis. Their shapes depend
on the model, so the schema accepts nested lists and ``app.api.tensors`` checks them against
the model's manifest.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

NestedList = list[Any]


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

    x: NestedList | None = Field(
        None, description="Observations [N, *x_shape]; omit for unconditional models."
    )
    y: NestedList = Field(description="Answers to score [N, *y_shape], paired row by row with x.")
    z: NestedList | None = Field(None, description="Latent values [N, *z_shape], latent models.")
    grad: bool = Field(False, description="Also return dE/dy (and dE/dz for latent models).")
    version: int | None = Field(None, ge=1, description="Model version; default the newest.")
    deadline_ms: float | None = Field(
        None, gt=0, le=600_000, description="Give up (504) after this long; default server's."
    )


class EnergyResponse(BaseModel):
    model: str
    version: int
    energy: list[float] = Field(description="E(x, y) per row [N].")
    grad_y: NestedList | None = Field(None, description="dE/dy [N, *y_shape], with grad.")
    grad_z: NestedList | None = Field(None, description="dE/dz [N, *z_shape], with grad.")


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
