"""The manifest of one model version (``models/<name>/<version>/manifest.json``), validated.

The manifest is the contract between a training recipe and the service: tensor specs with
shapes and bounds, artifact files with their sha256, inference defaults, batching limits,
training provenance and measured metrics, and a golden probe (inputs with the energies and
gradients torch computed at export) that every backend must reproduce at load.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import ManifestError

MANIFEST_FILE = "manifest.json"
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
# A version folder: a plain positive number, ASCII digits, no leading zero.
VERSION_PATTERN = r"[1-9][0-9]{0,8}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(_Strict):
    """One input of the energy, per row: the batch axis is not part of ``shape``."""

    shape: list[int] = Field(min_length=1, description="Per-row shape, e.g. [2].")
    dtype: Literal["float32"] = "float32"
    kind: Literal["continuous", "discrete"] = "continuous"
    low: list[float] | None = Field(None, description="Lower bounds, one per component.")
    high: list[float] | None = Field(None, description="Upper bounds, one per component.")
    names: list[str] | None = Field(None, description="Component names, one per component.")
    num_classes: int | None = Field(None, ge=2, description="Values of a discrete input.")
    prior: Literal["normal", "uniform", "categorical"] | None = None
    periodic: bool = Field(
        False, description="Values wrap around from high to low (an angle); needs bounds."
    )
    description: str = ""

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @model_validator(mode="after")
    def _check(self) -> TensorSpec:
        if any(d < 1 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a dimension below 1")
        for field in ("low", "high", "names"):
            values = getattr(self, field)
            if values is not None and len(values) != self.size:
                raise ValueError(
                    f"{field} has {len(values)} entries; shape {self.shape} has {self.size}"
                )
        if (
            self.low is not None
            and self.high is not None
            and any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True))
        ):
            raise ValueError("every low bound must be below its high bound")
        if self.periodic and (self.low is None or self.high is None):
            raise ValueError("a periodic input needs low and high bounds (its period)")
        if self.kind == "discrete" and self.num_classes is None:
            raise ValueError("a discrete input needs num_classes")
        if self.kind == "discrete" and self.shape != [1]:
            raise ValueError("a discrete input holds one label per row: shape [1]")
        return self


class Artifact(_Strict):
    # No separator and no leading dot: an artifact cannot name anything outside its folder.
    file: str = Field(
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$", description="File name beside the manifest."
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Artifacts(_Strict):
    energy_onnx: Artifact | None = Field(None, description="Energy and grad_y graph (ONNX).")
    score_onnx: Artifact | None = Field(
        None, description="Energy-only graph (ONNX), used when no gradient is asked for."
    )
    energy_pt2: Artifact | None = Field(None, description="Energy as a torch.export program.")
    decoder_onnx: Artifact | None = Field(None, description="y = Dec(x, z) (ONNX), latent models.")
    decoder_pt2: Artifact | None = Field(None, description="y = Dec(x, z) (torch.export).")

    @model_validator(mode="after")
    def _at_least_one(self) -> Artifacts:
        if self.energy_onnx is None and self.energy_pt2 is None:
            raise ValueError("a model needs energy_onnx or energy_pt2")
        if (self.decoder_onnx is None) != (self.decoder_pt2 is None) and not (
            self.energy_onnx is None or self.energy_pt2 is None
        ):
            raise ValueError("a decoder needs the same formats as the energy: onnx and pt2")
        return self


Method = Literal["gd", "langevin", "dfo", "enumerate"]


class MethodSettings(_Strict):
    """One optimiser's settings for this model; unset fields fall back (see InferenceDefaults)."""

    num_starts: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=0)
    step_size: float | None = Field(None, gt=0)
    noise_scale: float | None = Field(None, ge=0)
    temperature: float | None = Field(
        None, gt=0, description="T of softmax(-E/T) for this method's mode masses."
    )


class InferenceDefaults(_Strict):
    """Defaults of the optimisation endpoints; requests may override each.

    ``num_starts``, ``steps``, ``step_size`` and ``noise_scale`` at the top level belong to
    the default ``method``; ``methods`` holds them for other methods. Whatever the manifest
    leaves unset (None) the service derives from the variables' bounds, one policy for every
    model (``app.inference.params``).
    """

    method: Literal["auto", "gd", "langevin", "dfo", "enumerate"] = "auto"
    k: int = Field(2, ge=1)
    num_starts: int | None = Field(None, ge=1)
    steps: int | None = Field(None, ge=0)
    step_size: float | None = Field(None, gt=0)
    noise_scale: float | None = Field(None, ge=0)
    temperature: float = Field(1.0, gt=0)
    merge_radius: float | None = Field(
        None, gt=0, description="Predictions closer than this are one mode; default from bounds."
    )
    tol: float | None = Field(
        None,
        ge=0,
        description="Stop early once every start's gradient norm is below this (absolute); "
        "unset: stop once every start is estimated within a small share of the bounds of a "
        "stationary point, whatever the energy's scale.",
    )
    beta: float = Field(1.0, gt=0, description="Inverse temperature of the marginal free energy.")
    num_samples: int = Field(
        256, ge=1, description="Prior samples of a continuous z for the marginal free energy."
    )
    methods: dict[Method, MethodSettings] = Field(default_factory=dict)


class Batching(_Strict):
    max_batch_size: int = Field(256, ge=1, description="Max rows coalesced into one call.")
    max_delay_ms: float = Field(
        2.0, ge=0, description="Max wait for more jobs when others are queued."
    )
    max_rows_per_request: int = Field(8192, ge=1, description="Rows one request may carry.")


class Training(_Strict):
    model_config = ConfigDict(extra="allow", frozen=True)

    recipe: str
    seed: int
    method: str
    data: str
    steps: int | None = None
    duration_s: float | None = None
    torch_version: str | None = None


class Card(_Strict):
    task: str
    method: str
    summary: str = ""


class Probe(_Strict):
    """Inputs and the energies/gradients torch gave at export; backends must reproduce them."""

    inputs: dict[str, list[Any]]
    energy: list[float]
    grads: dict[str, list[Any]] = Field(default_factory=dict, description="dE/d<input>.")
    decoded: list[Any] | None = Field(None, description="Dec(x, z) of the probe's x and z.")


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(ge=1)
    description: str = ""
    x: TensorSpec | None = Field(None, description="Observed input; absent if unconditional.")
    y: TensorSpec
    z: TensorSpec | None = Field(None, description="Latent variable, if the energy has one.")
    artifacts: Artifacts
    inference: InferenceDefaults = InferenceDefaults()
    batching: Batching = Batching()
    training: Training
    metrics: dict[str, float | int | str] = Field(default_factory=dict)
    card: Card
    probe: Probe | None = None

    @property
    def has_decoder(self) -> bool:
        """The model ships a decoder y = Dec(x, z) (in at least one format)."""
        return bool(self.artifacts.decoder_onnx or self.artifacts.decoder_pt2)

    @model_validator(mode="after")
    def _latent_rules(self) -> Manifest:
        if self.has_decoder and self.z is None:
            raise ValueError("a decoder needs a latent z spec")
        if self.z is not None and self.z.prior is None:
            raise ValueError("a latent z needs a prior (normal, uniform or categorical)")
        return self

    @property
    def input_names(self) -> list[str]:
        """Inputs of the energy graphs, in order; y is always last-but-latent."""
        names = ["x"] if self.x is not None else []
        names.append("y")
        if self.z is not None:
            names.append("z")
        return names

    @property
    def decoder_input_names(self) -> list[str]:
        """Inputs of the decoder graphs: x (conditional models) and z."""
        return [n for n in ("x", "z") if n in self.input_names]

    @property
    def grad_names(self) -> list[str]:
        """Inputs the energy is differentiated by: the continuous ones among y and z."""
        return [
            n for n in ("y", "z") if n in self.input_names and self.spec(n).kind == "continuous"
        ]

    def spec(self, name: str) -> TensorSpec:
        spec = {"x": self.x, "y": self.y, "z": self.z}[name]
        assert spec is not None, f"model has no input {name}"
        return spec


def read_manifest(path: Path) -> Manifest:
    """Parse and validate ``path``; a ManifestError says which file and field is wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ManifestError(f"{path} is not a valid manifest: {problems}") from exc
