"""Search settings of one request, resolved: the request's, else the manifest's, else built in.

Every step size and noise scale is in the units of the variable it moves (y, or a continuous
z), so a model's manifest states them for its own scale. Whatever the manifest leaves unset
comes from one policy for every model, scaled from y's bounds (never tuned per energy):
enough starts to put one in a basin of ~1% of the box, steps that cross the box, a merge
radius and a convergence distance that are small shares of it.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.errors import InvalidInput
from app.registry.manifest import Manifest, MethodSettings

METHODS = ("gd", "langevin", "dfo", "enumerate")
OPTIMISER_FIELDS = ("num_starts", "steps", "step_size", "noise_scale")


@dataclass(frozen=True)
class SearchParams:
    method: str
    k: int
    num_starts: int  # candidates per x (enumerate: the number of labels)
    steps: int
    step_size: float
    noise_scale: float | None  # langevin: None = T from the landscape (see steppers.stepper)
    temperature: float
    merge_radius: float
    tol: float | None  # None: converged by distance (see converged_distance)
    seed: int
    seeded: bool  # the caller chose the seed: the answer must replay bit for bit
    return_trajectory: bool = False
    refine_step_size: float = 0.0  # langevin: the first step of its noise-free Adam finish


#: ``auto`` picks dfo up to this many searched dimensions (y and a continuous z), gd above.
AUTO_DFO_MAX_DIM = 8


def default_method(manifest: Manifest) -> str:
    """What ``auto`` means for this model: enumeration for a discrete y, else the method its
    manifest names; a manifest that names none gets dfo for a low-dimensional search (the
    most robust at the built-in settings on the mode-recovery benchmark, and the cheapest:
    its candidates are mostly scored without gradients), gd in more dimensions, where
    uniform candidates cannot cover the box and descent is what scales."""
    if manifest.y.kind == "discrete":
        return "enumerate"
    chosen = manifest.inference.method
    if chosen not in ("auto", "enumerate"):
        return chosen
    z = manifest.z
    dim = manifest.y.size + (z.size if z is not None and z.kind == "continuous" else 0)
    return "dfo" if dim <= AUTO_DFO_MAX_DIM else "gd"


def usable_methods(manifest: Manifest) -> list[str]:
    """The methods this model's y admits: enumeration for a discrete y, else the optimisers."""
    if manifest.y.kind == "discrete":
        return ["enumerate"]
    return ["gd", "langevin", "dfo"]


def typical_range(manifest: Manifest) -> float:
    """Mean width of the bounded components of y (1 when y is unbounded): the scale of the
    built-in step sizes."""
    spec = manifest.y
    if spec.low is None or spec.high is None:
        return 1.0
    widths = np.asarray(spec.high) - np.asarray(spec.low)
    return float(np.mean(widths))


@dataclass(frozen=True)
class OptimiserSettings:
    num_starts: int
    steps: int
    step_size: float
    noise_scale: float | None
    temperature: float


#: Built-in starts. A basin holding 1% of the box catches one of 512 uniform starts with
#: probability 1 - 0.99^512 > 0.99; dfo's candidates are cheaper (mostly energy-only calls).
GD_STARTS = 1024
DFO_STARTS = 2048
MERGE_SHARE = 0.02  # default merge radius: 2% of y's typical bound width
CONVERGED_SHARE = 1e-3  # converged: estimated within 0.1% of the width of a stationary point


def builtin_settings(method: str, manifest: Manifest) -> MethodSettings:
    scale = typical_range(manifest)
    if method == "gd":  # Adam moves ~step_size per component: 100 steps cross the box
        return MethodSettings(
            num_starts=GD_STARTS, steps=100, step_size=0.02 * scale, noise_scale=0.0
        )
    if method == "langevin":  # the chains' first step; it adapts per chain (MALA)
        return MethodSettings(
            num_starts=GD_STARTS, steps=100, step_size=1e-5 * scale**2, noise_scale=None
        )
    if method == "dfo":  # Implicit BC's first jitter (0.33 on a [-1, 1] range), 8 rounds
        return MethodSettings(
            num_starts=DFO_STARTS, steps=8, step_size=1.0, noise_scale=0.165 * scale
        )
    return MethodSettings(num_starts=1, steps=0, step_size=1.0, noise_scale=0.0)


def default_merge_radius(manifest: Manifest) -> float:
    return MERGE_SHARE * typical_range(manifest)


def converged_distance(manifest: Manifest) -> float:
    """A candidate is converged when its estimated distance to a stationary point (from
    the secant curvature of its last step: scale-free in the energy) is at most this."""
    return CONVERGED_SHARE * typical_range(manifest)


def method_settings(method: str, manifest: Manifest) -> OptimiserSettings:
    """The optimiser settings of ``method`` before any request override."""
    defaults = manifest.inference
    merged = builtin_settings(method, manifest).model_dump()
    merged["temperature"] = defaults.temperature
    if method == default_method(manifest):
        for name in OPTIMISER_FIELDS:
            if getattr(defaults, name) is not None:
                merged[name] = getattr(defaults, name)
    override = defaults.methods.get(method)  # type: ignore[call-overload]
    if override is not None:
        merged.update(override.model_dump(exclude_none=True))
    return OptimiserSettings(**merged)


def resolve(manifest: Manifest, request: Mapping[str, Any]) -> SearchParams:
    """Settings for one request; ``request`` holds the fields the caller set (None = unset)."""
    given = {k: v for k, v in request.items() if v is not None}
    method = given.get("method", "auto")
    if method == "auto":
        method = default_method(manifest)
    if method not in METHODS:
        raise InvalidInput(f"method {method!r} is unknown; use auto or one of {list(METHODS)}")
    if method == "enumerate" and manifest.y.kind != "discrete":
        raise InvalidInput(
            f"method 'enumerate' needs a discrete y; model {manifest.name!r} has a continuous "
            "y: use gd, langevin or dfo"
        )
    if method != "enumerate" and manifest.y.kind == "discrete":
        raise InvalidInput(
            f"model {manifest.name!r} has a discrete y ({manifest.y.num_classes} labels): "
            "use method 'enumerate' (or auto)"
        )
    settings = method_settings(method, manifest)
    defaults = manifest.inference
    if method == "enumerate":
        num_starts = int(manifest.y.num_classes or 1)
    else:
        num_starts = int(given.get("num_starts", settings.num_starts))
    seed = given.get("seed")
    return SearchParams(
        method=method,
        k=int(given.get("k", defaults.k)),
        num_starts=num_starts,
        steps=int(given.get("steps", settings.steps)),
        step_size=float(given.get("step_size", settings.step_size)),
        noise_scale=_optional(given.get("noise_scale", settings.noise_scale)),
        temperature=float(given.get("temperature", settings.temperature)),
        merge_radius=float(
            given.get("merge_radius", defaults.merge_radius or default_merge_radius(manifest))
        ),
        tol=_optional(given.get("tol", defaults.tol)),
        seed=int(seed) if seed is not None else secrets.randbits(63),
        seeded=seed is not None,
        return_trajectory=bool(given.get("return_trajectory", False)),
        refine_step_size=method_settings("gd", manifest).step_size,
    )


def _optional(value: float | None) -> float | None:
    return None if value is None else float(value)
