"""Free energies of latent models: reduce E(x, y, z) over z.

F_inf(x, y) = min_z E(x, y, z); F_beta(x, y) = -1/beta log mean_z exp(-beta E(x, y, z)),
the mean over every label of a discrete z (uniform prior) or over samples of a continuous z's
prior. A one-dimensional uniform prior is integrated on a midpoint grid rather than by random
samples: the same cost, an error that falls as 1/M^2 instead of 1/sqrt(M).
"""

from __future__ import annotations

import numpy as np

from app.inference.sampling import draw_prior
from app.inference.space import Space
from app.registry.backends.base import Array
from app.registry.manifest import Manifest


def latent_values(manifest: Manifest, count: int, seed: int) -> Array:
    """The z values a marginal averages over, ``[M, *z_shape]``."""
    z = manifest.z
    assert z is not None
    if z.kind == "discrete":
        return np.arange(int(z.num_classes or 0), dtype=np.float32)[:, None]
    if z.size == 1 and z.prior == "uniform" and z.low is not None and z.high is not None:
        low, high = z.low[0], z.high[0]
        grid = low + (np.arange(count) + 0.5) * (high - low) / count
        return grid.astype(np.float32).reshape(count, *z.shape)
    space = Space.of(manifest)
    draws = draw_prior(space, np.random.default_rng(seed), count, temperature=1.0)
    return draws.reshape(count, *z.shape)


def pair_with_latents(inputs: dict[str, Array], latents: Array) -> dict[str, Array]:
    """Every row of ``inputs`` (x?, y) with every latent: ``[N * M, ...]``, row-major."""
    n, m = len(inputs["y"]), len(latents)
    paired = {name: np.repeat(value, m, axis=0) for name, value in inputs.items()}
    paired["z"] = np.ascontiguousarray(np.tile(latents, (n,) + (1,) * (latents.ndim - 1)))
    return paired


def marginal(energy: Array, beta: float) -> Array:
    """F_beta per row of ``energy [N, M]``, in float64.

    Shifted by the row minimum, so a large beta cannot overflow, and written with expm1 and
    log1p, so a small beta keeps its precision: F = low - log1p(mean(expm1(-beta (E - low))))
    / beta tends to the mean as beta -> 0, where exp() and log() would round every term to
    1 and lose the answer (beta 1e-16 gave the minimum instead of the mean).
    """
    e = np.asarray(energy, np.float64)
    low = e.min(axis=1, keepdims=True)
    mean = np.expm1(-beta * (e - low)).mean(axis=1)
    result: Array = (low[:, 0] - np.log1p(mean) / beta).astype(np.float32)
    return result


def minimum(energy: Array) -> tuple[Array, np.ndarray]:
    """F_inf per row of ``energy [N, M]`` and the arg-min column."""
    index = np.argmin(energy, axis=1)
    return energy[np.arange(len(energy)), index], index
