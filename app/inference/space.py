"""The space an optimiser searches: y's components, then a continuous z's, flattened.

Candidates are rows ``v [R, D]`` with ``D = size(y) + size(z)``; a discrete latent is not
searched by gradient but assigned per candidate (labels ``[R]``). Bounds project candidates
back after every move: clipped, or wrapped for periodic components (an angle).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from app.registry.backends.base import Array, EnergyBackend
from app.registry.manifest import Manifest, TensorSpec


def _bounds(spec: TensorSpec) -> tuple[Array, Array]:
    unbounded = np.full(spec.size, np.inf, np.float32)
    low = -unbounded if spec.low is None else np.asarray(spec.low, np.float32)
    high = unbounded if spec.high is None else np.asarray(spec.high, np.float32)
    return low, high


@dataclass(frozen=True)
class Space:
    manifest: Manifest
    y_size: int
    z_size: int  # 0 unless z is continuous
    z_labels: int  # classes of a discrete z, else 0
    low: Array  # [D], -inf where unbounded
    high: Array  # [D], +inf where unbounded
    periodic: np.ndarray  # [D] bool
    normal_prior: np.ndarray  # [D] bool: z components drawn from N(0, 1)

    @classmethod
    def of(cls, manifest: Manifest) -> Space:
        y_low, y_high = _bounds(manifest.y)
        lows, highs = [y_low], [y_high]
        periodic = [np.full(manifest.y.size, manifest.y.periodic)]
        normal = [np.zeros(manifest.y.size, bool)]
        z = manifest.z
        z_size = z_labels = 0
        if z is not None and z.kind == "continuous":
            z_size = z.size
            z_low, z_high = _bounds(z)
            lows.append(z_low)
            highs.append(z_high)
            periodic.append(np.full(z_size, z.periodic))
            normal.append(np.full(z_size, z.prior == "normal"))
        elif z is not None:
            z_labels = int(z.num_classes or 0)
        return cls(
            manifest=manifest,
            y_size=manifest.y.size,
            z_size=z_size,
            z_labels=z_labels,
            low=np.concatenate(lows),
            high=np.concatenate(highs),
            periodic=np.concatenate(periodic),
            normal_prior=np.concatenate(normal),
        )

    @property
    def dim(self) -> int:
        return self.y_size + self.z_size

    @cached_property
    def width(self) -> Array:
        """[D] bound widths; 1 where unbounded (the scale of unbounded starts)."""
        width = self.high - self.low
        return np.where(np.isfinite(width), width, 1.0).astype(np.float32)

    @cached_property
    def typical_width(self) -> float:
        """Mean bound width of all searched components (1 where unbounded)."""
        return float(np.mean(self.width))

    @cached_property
    def wraps(self) -> bool:
        return bool(self.periodic.any())

    def project(self, v: Array) -> Array:
        """Candidates back inside the bounds, in place: periodic components wrap."""
        if self.wraps:
            lo, hi = self.low[self.periodic], self.high[self.periodic]
            v[:, self.periodic] = lo + np.mod(v[:, self.periodic] - lo, hi - lo)
        np.maximum(v, self.low, out=v)  # np.clip's wrapper costs more than the clipping
        np.minimum(v, self.high, out=v)
        return v

    def stationarity(self, v: Array, g: Array) -> Array:
        """Norm of the projected gradient per row ``[R]``: components pushing out of a bound
        the candidate sits on do not count (a minimum on the boundary is converged)."""
        blocked = ((v <= self.low) & (g > 0)) | ((v >= self.high) & (g < 0))
        free = np.where(blocked, 0.0, g)
        norms: Array = np.sqrt(np.einsum("rd,rd->r", free, free))
        return norms

    def sample(self, rng: np.random.Generator, rows: int) -> Array:
        """Starting candidates ``[rows, D]``: uniform within bounds, N(0, 1) for a normal-prior
        latent and for unbounded components (clipped to any bound they have)."""
        uniform = rng.random((rows, self.dim), dtype=np.float32)
        normal = rng.standard_normal((rows, self.dim), dtype=np.float32)
        bounded = np.isfinite(self.low) & np.isfinite(self.high) & ~self.normal_prior
        low = np.where(bounded, self.low, 0.0).astype(np.float32)
        v = np.where(bounded, low + uniform * self.width, normal).astype(np.float32)
        return self.project(v)

    def split(self, v: Array) -> tuple[Array, Array | None]:
        """(y ``[R, *y_shape]``, continuous z ``[R, *z_shape]`` or None) from ``v [R, D]``."""
        rows = v.shape[0]
        y = v[:, : self.y_size].reshape(rows, *self.manifest.y.shape)
        if not self.z_size:
            return y, None
        assert self.manifest.z is not None
        return y, v[:, self.y_size :].reshape(rows, *self.manifest.z.shape)

    def energy_inputs(self, v: Array, x: Array | None, labels: Array | None) -> dict[str, Array]:
        """The backend's inputs for candidates ``v [R, D]``: x (conditional models), y, and z
        (continuous from ``v``, or the discrete ``labels [R, 1]``)."""
        y, z = self.split(v)
        inputs: dict[str, Array] = {} if x is None else {"x": x}
        inputs["y"] = np.ascontiguousarray(y)
        if z is not None:
            inputs["z"] = np.ascontiguousarray(z)
        elif labels is not None:
            inputs["z"] = labels
        return inputs

    def decode(self, backend: EnergyBackend, x: Array | None, z: Array) -> Array:
        """y = Dec(x, z) flattened ``[R, Dy]`` for continuous latents ``z [R, Dz]``."""
        assert self.manifest.z is not None
        z_in = np.ascontiguousarray(z).reshape(len(z), *self.manifest.z.shape)
        inputs = {"z": z_in} if x is None else {"x": x, "z": z_in}
        return backend.decode(inputs).reshape(len(z), -1)

    def join_grads(self, grads: dict[str, Array], rows: int) -> Array:
        """dE/dv ``[R, D]`` from the backend's ``grad_y`` and ``grad_z``."""
        parts = [grads["y"].reshape(rows, self.y_size)]
        if self.z_size:
            parts.append(grads["z"].reshape(rows, self.z_size))
        return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
