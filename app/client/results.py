"""What the SDK's calls return: small frozen dataclasses mirroring the response schemas.

Tensors come back as read-only numpy arrays (float32, as the server computes; integer
labels stay int64), whichever transport carried them: JSON lists are converted once per
field, msgpack tensor maps arrive as arrays already. The per-prediction and per-sample
lists of the wire are regrouped per x into arrays with the candidates on the first axis,
so a caller indexes ``result.predictions[i].y[j]`` instead of walking dictionaries.
Dataclasses holding arrays use ``eq=False``: ``==`` on arrays is element-wise, so a
field-by-field equality would be ambiguous.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

Array = NDArray[Any]
Float32 = NDArray[np.float32]


def _frozen(array: Array) -> Array:
    array.setflags(write=False)
    return array


def floats(value: Any) -> Float32:
    """A response tensor (nested lists or an array) as a read-only float32 array (a
    msgpack float32 tensor is taken as it is, without a copy)."""
    array: Float32 = np.asarray(value, dtype=np.float32)
    return _frozen(array)


def values(value: Any) -> Array:
    """A tensor that may hold labels: integers stay int64, numbers become float32."""
    array = np.asarray(value)
    return _frozen(np.asarray(array, dtype=np.int64 if array.dtype.kind in "iub" else np.float32))


def _stacked(items: Sequence[Mapping[str, Any]], key: str) -> Array | None:
    """``key`` of every item stacked on a new first axis; None when the server sent none
    (a field is present for all of a response's items or for none)."""
    if not items or items[0].get(key) is None:
        return None
    return values([item[key] for item in items])


# --- models ------------------------------------------------------------------------------
@dataclass(frozen=True)
class UnavailableVersion:
    version: int
    reason: str  # the load check it failed


@dataclass(frozen=True)
class ModelSummary:
    """One entry of GET /v1/models."""

    name: str
    available: bool
    versions: tuple[int, ...]  # versions that serve
    latest: int | None
    unavailable: tuple[UnavailableVersion, ...]
    backend: str | None
    task: str | None

    @staticmethod
    def fields_from(body: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "name": body["name"],
            "available": body["available"],
            "versions": tuple(body["versions"]),
            "latest": body["latest"],
            "unavailable": tuple(
                UnavailableVersion(u["version"], u["reason"]) for u in body["unavailable"]
            ),
            "backend": body.get("backend"),
            "task": body.get("task"),
        }


@dataclass(frozen=True)
class ModelList:
    """GET /v1/models: every model, available or not. Iterates over its summaries."""

    models: tuple[ModelSummary, ...]
    request_id: str

    def __iter__(self) -> Iterator[ModelSummary]:
        return iter(self.models)

    def __len__(self) -> int:
        return len(self.models)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    @classmethod
    def from_body(cls, body: Mapping[str, Any], request_id: str) -> ModelList:
        models = tuple(ModelSummary(**ModelSummary.fields_from(m)) for m in body["models"])
        return cls(models, request_id)


@dataclass(frozen=True)
class TensorSpec:
    """One input of the energy, per row (the batch axis is not part of ``shape``)."""

    shape: tuple[int, ...]
    dtype: str
    kind: str  # continuous or discrete
    low: tuple[float, ...] | None
    high: tuple[float, ...] | None
    names: tuple[str, ...] | None
    num_classes: int | None
    prior: str | None
    periodic: bool
    description: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> TensorSpec:
        def maybe_tuple(key: str) -> tuple[Any, ...] | None:
            value = body.get(key)
            return None if value is None else tuple(value)

        return cls(
            shape=tuple(body["shape"]),
            dtype=body.get("dtype", "float32"),
            kind=body.get("kind", "continuous"),
            low=maybe_tuple("low"),
            high=maybe_tuple("high"),
            names=maybe_tuple("names"),
            num_classes=body.get("num_classes"),
            prior=body.get("prior"),
            periodic=body.get("periodic", False),
            description=body.get("description", ""),
        )


@dataclass(frozen=True)
class ModelInfo(ModelSummary):
    """GET /v1/models/{name}: one version's specs. The rest of the answer (inference
    defaults, batching limits, card, metrics, training, parity) is in ``detail`` as sent:
    it is documentation more than data, and typing it here would duplicate the manifest."""

    version: int  # the version described
    description: str
    inputs: tuple[str, ...]  # the energy's inputs, in order: x (if any), y, z?
    x: TensorSpec | None
    y: TensorSpec
    z: TensorSpec | None
    detail: Mapping[str, Any]
    request_id: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any], request_id: str) -> ModelInfo:
        def spec(key: str) -> TensorSpec | None:
            value = body.get(key)
            return None if value is None else TensorSpec.from_body(value)

        return cls(
            **ModelSummary.fields_from(body),
            version=body["version"],
            description=body["description"],
            inputs=tuple(body["inputs"]),
            x=spec("x"),
            y=TensorSpec.from_body(body["y"]),
            z=spec("z"),
            detail=body,
            request_id=request_id,
        )


# --- energy ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class EnergyResult:
    """POST /v1/models/{name}/energy."""

    model: str
    version: int
    energy: Float32  # E(x, y) per row [N], or F(x, y) with free_energy
    grads: Mapping[str, Float32]  # with grad: {"y": dE/dy [N, *y_shape], "z": dE/dz ...}
    z: Array | None  # free_energy=min: the arg-min z per row (int64 labels, discrete z)
    beta: float | None  # free_energy=marginal: the beta used
    num_samples: int | None  # free_energy=marginal: the z values averaged over
    stats: Mapping[str, Any] | None  # free_energy=min over a continuous z: descent stats
    request_id: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any], request_id: str) -> EnergyResult:
        grads = {
            key.removeprefix("grad_"): floats(value)
            for key, value in body.items()
            if key.startswith("grad_") and value is not None
        }
        z = body.get("z")
        return cls(
            model=body["model"],
            version=body["version"],
            energy=floats(body["energy"]),
            grads=grads,
            z=None if z is None else values(z),
            beta=body.get("beta"),
            num_samples=body.get("num_samples"),
            stats=body.get("stats"),
            request_id=request_id,
        )


# --- predict -----------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Predictions:
    """The predictions for one x, lowest energy first: k of them on each first axis."""

    y: Array  # [k, *y_shape] (a discrete y: [k, 1] int64 labels)
    energy: Float32  # [k]
    mass: Float32  # [k]: share of softmax(-E/T) of the candidates merged into each
    converged: NDArray[np.bool_] | None  # [k]; None where no gradient was taken
    z: Array | None  # [k, *z_shape] (a discrete z: [k] int64 labels); latent models
    trajectory: Float32 | None  # [k, steps, *y_shape], with return_trajectory

    def __len__(self) -> int:
        return len(self.energy)

    @classmethod
    def from_body(cls, row: Sequence[Mapping[str, Any]]) -> Predictions:
        converged = [p.get("converged") for p in row]
        trajectory = _stacked(row, "trajectory")
        return cls(
            y=values([p["y"] for p in row]),
            energy=floats([p["energy"] for p in row]),
            mass=floats([p["mass"] for p in row]),
            converged=None
            if not row or None in converged
            else _frozen(np.array(converged, dtype=np.bool_)),
            z=_stacked(row, "z"),
            trajectory=None if trajectory is None else floats(trajectory),
        )


@dataclass(frozen=True, eq=False)
class PredictResult:
    """POST /v1/models/{name}/predict: one :class:`Predictions` per x."""

    model: str
    version: int
    predictions: tuple[Predictions, ...]
    stats: Mapping[str, Any]  # method, steps run, candidates, time, seed (for a replay)
    request_id: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any], request_id: str) -> PredictResult:
        return cls(
            model=body["model"],
            version=body["version"],
            predictions=tuple(Predictions.from_body(row) for row in body["predictions"]),
            stats=body["stats"],
            request_id=request_id,
        )


# --- sample ------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Samples:
    """The samples for one x: n of them on each first axis."""

    y: Float32  # [n, *y_shape]
    energy: Float32  # [n]
    z: Array | None  # [n, *z_shape] (a discrete z: [n] int64 labels); latent models
    trajectory: Float32 | None  # [n, T, *y_shape], with return_trajectory

    def __len__(self) -> int:
        return len(self.energy)

    @classmethod
    def from_body(cls, row: Sequence[Mapping[str, Any]]) -> Samples:
        trajectory = _stacked(row, "trajectory")
        return cls(
            y=floats([s["y"] for s in row]),
            energy=floats([s["energy"] for s in row]),
            z=_stacked(row, "z"),
            trajectory=None if trajectory is None else floats(trajectory),
        )


@dataclass(frozen=True, eq=False)
class SampleResult:
    """POST /v1/models/{name}/sample: one :class:`Samples` per x."""

    model: str
    version: int
    samples: tuple[Samples, ...]
    stats: Mapping[str, Any]
    request_id: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any], request_id: str) -> SampleResult:
        return cls(
            model=body["model"],
            version=body["version"],
            samples=tuple(Samples.from_body(row) for row in body["samples"]),
            stats=body["stats"],
            request_id=request_id,
        )
