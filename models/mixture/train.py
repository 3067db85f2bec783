"""Recipe of the `mixture` model: k-means and the Gaussian mixture as one energy.

LeCun's discrete-latent example (ICLR 2020): E(y, z=k) = ||y - mu_k||^2 / (2 sigma^2) with a
latent cluster index z. Minimising over z gives F_inf(y) = min_k E(y, k), the k-means energy;
Lloyd's algorithm is exactly "train by minimising F_inf over the data": alternate z* =
argmin_z E (assignment) and the mu update that minimises the same energy given z* (the
mean). Marginalising instead gives F_beta(y) = -1/beta log mean_k exp(-beta E(y, k)), which
at beta = 1 is the negative log-likelihood of an equal-weight isotropic Gaussian mixture (up
to the constant log(2 pi sigma^2)). The data are 8 Gaussians on a ring; this file fits the
centres, compares them with the true ones and publishes version 1 with the decoder
Dec(z) = mu_z.

Run it with `ebm train mixture`, or `PYTHONPATH=. python models/mixture/train.py [--smoke]`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]  # via sklearn
from torch import nn

from app.registry.manifest import (
    Card,
    InferenceDefaults,
    MethodSettings,
    TensorSpec,
    Training,
)
from app.training.publish import publish
from app.training.recipe import recipe_main

# --- the data ------------------------------------------------------------------------------
K = 8
RING_RADIUS, STD = 2.0, 0.15  # centres at angles 2 pi k / K; isotropic std per component
Y_LOW, Y_HIGH = [-3.5, -3.5], [3.5, 3.5]  # data reach ~2.6 from the origin
N_TRAIN, N_HELDOUT = 4000, 2000

# --- the recipe ----------------------------------------------------------------------------
# Lloyd's algorithm only reaches a local minimum of the k-means energy; with well separated
# clusters k-means++ almost always starts in the right basin, and keeping the best of a few
# restarts (same seed, so the same ones every run) makes a bad start harmless.
N_INIT, MAX_ITER = 4, 100
BETA = 1.0  # the F_beta reported on the card (beta = 1: the mixture's likelihood)
# gd is Adam (step_size = first move, decaying); Langevin steps stay well inside the
# stability limit 2 sigma^2 of the 1 / (2 sigma^2) curvature.
INFERENCE = InferenceDefaults(
    method="gd",
    k=K,
    num_starts=64,
    steps=100,
    step_size=0.2,  # a start assigned to a far cluster travels up to ~5: 0.1 fell short
    merge_radius=0.5,
    tol=0.5,
    methods={"langevin": MethodSettings(step_size=0.002, noise_scale=1.0)},
)


def true_centres() -> np.ndarray:
    angles = 2 * np.pi * np.arange(K) / K
    return RING_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [K, 2]


def sample(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n points y [n, 2] (float32) and their component [n]: equal weights, isotropic STD."""
    comp = rng.integers(0, K, size=n)
    y = true_centres()[comp] + STD * rng.normal(size=(n, 2))
    return y.astype(np.float32), comp


# --- k-means: training by minimising F_inf --------------------------------------------------
def sq_dist(y: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """||y_i - mu_k||^2 [N, K] for y [N, 2] and mu [K, 2], in float64."""
    diff = y[:, None, :].astype(np.float64) - mu[None, :, :]
    out: np.ndarray = (diff**2).sum(-1)
    return out


def kmeans_pp(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k-means++ (Arthur and Vassilvitskii 2007): each next centre is a data point drawn with
    probability proportional to its squared distance to the nearest centre so far."""
    mu = [y[rng.integers(len(y))]]
    for _ in range(K - 1):
        d2 = sq_dist(y, np.stack(mu)).min(1)
        mu.append(y[rng.choice(len(y), p=d2 / d2.sum())])
    return np.stack(mu).astype(np.float64)


def lloyd(y: np.ndarray, mu: np.ndarray, max_iter: int) -> tuple[np.ndarray, float, int]:
    """Alternate z* = argmin_k ||y - mu_k||^2 and mu_k = mean of its points (each step lowers
    the mean F_inf) until no assignment changes. Returns (centres, mean min_k ||y - mu_k||^2,
    assignment passes, the last one confirming convergence)."""
    z = np.full(len(y), -1)
    passes = 0
    while passes < max_iter:
        passes += 1
        z_new = sq_dist(y, mu).argmin(1)
        if np.array_equal(z_new, z):
            break
        z = z_new
        # An emptied cluster keeps its centre (never happened here: clusters are ~500 points).
        mu = np.stack([y[z == k].mean(0) if (z == k).any() else mu[k] for k in range(K)])
    return mu, float(sq_dist(y, mu).min(1).mean()), passes


def fit(y: np.ndarray, seed: int, max_iter: int) -> tuple[np.ndarray, float, int]:
    """The best (lowest mean F_inf) of N_INIT k-means++ + Lloyd runs: centres [K, 2],
    sigma (ML isotropic std given the hard assignments), iterations of the kept run."""
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, float, int] | None = None
    for i in range(N_INIT):
        mu, inertia, iters = lloyd(y, kmeans_pp(y, rng), max_iter)
        print(f"init {i}: mean min_k ||y - mu_k||^2 = {inertia:.5f} after {iters} iterations")
        if best is None or inertia < best[1]:
            best = (mu, inertia, iters)
    assert best is not None
    mu, inertia, iters = best
    return mu, math.sqrt(inertia / 2), iters  # E||y - mu||^2 = 2 sigma^2 in two dimensions


# --- the energy module -----------------------------------------------------------------------
class MixtureEnergy(nn.Module):
    """E(y, z) = ||y - mu_z||^2 / (2 sigma^2) -> [B] for y [B, 2], z [B, 1] (the cluster index
    as a float). mu_z is picked by a one-hot product: exports everywhere, batch stays dynamic."""

    classes: torch.Tensor
    inv_two_var: torch.Tensor

    def __init__(self, centres: np.ndarray, sigma: float) -> None:
        super().__init__()
        self.centres = nn.Parameter(torch.tensor(centres, dtype=torch.float32))
        self.register_buffer("classes", torch.arange(K))
        self.register_buffer("inv_two_var", torch.tensor(1 / (2 * sigma**2)))

    def centre(self, z: torch.Tensor) -> torch.Tensor:
        one_hot = (z.long() == self.classes).to(self.centres.dtype)  # [B, K]
        mu: torch.Tensor = one_hot @ self.centres
        return mu

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        energy: torch.Tensor = ((y - self.centre(z)) ** 2).sum(-1) * self.inv_two_var
        return energy


class MixtureDecoder(nn.Module):
    """Dec(z) = mu_z [B, 2]: the centre is the cluster's most likely point."""

    def __init__(self, energy: MixtureEnergy) -> None:
        super().__init__()
        self.energy = energy

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.energy.centre(z)


# --- free energies (numpy, float64) ---------------------------------------------------------
def energies(y: np.ndarray, mu: np.ndarray, sigma: float) -> np.ndarray:
    """E(y, k) for every k: [N, K]."""
    return sq_dist(y, mu) / (2 * sigma**2)


def f_inf(e: np.ndarray) -> np.ndarray:
    out: np.ndarray = e.min(1)
    return out


def f_beta(e: np.ndarray, beta: float) -> np.ndarray:
    """-1/beta log mean_k exp(-beta E_k), stably (uniform categorical prior on z)."""
    m = (-beta * e).max(1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(-beta * e - m).sum(1))
    out: np.ndarray = -(lse - math.log(K)) / beta
    return out


# --- evaluation ----------------------------------------------------------------------------
def evaluate(mu: np.ndarray, sigma: float, iters: int, seed: int) -> dict[str, float | int | str]:
    """Centres against the true ones (optimal matching), and held-out free energies and
    assignments against the closed forms of the true mixture."""
    true = true_centres()
    cost = np.sqrt(sq_dist(mu, true))  # [learned, true]
    rows, cols = linear_sum_assignment(cost)
    err = cost[rows, cols]
    to_true = np.empty(K, dtype=int)
    to_true[rows] = cols
    y, comp = sample(np.random.default_rng(seed + 1000), N_HELDOUT)
    e, e_true = energies(y, mu, sigma), energies(y, true, STD)
    metrics: dict[str, float] = {
        "centre_error_max": err.max(),
        "centre_error_mean": err.mean(),
        "centres_within_0.1": float((err <= 0.1).sum()),
        "sigma_fitted": sigma,
        "sigma_true": STD,
        "heldout_f_inf_mean": f_inf(e).mean(),
        "heldout_f_inf_mean_true_mixture": f_inf(e_true).mean(),
        "heldout_f_beta1_mean": f_beta(e, BETA).mean(),
        "heldout_f_beta1_mean_true_mixture": f_beta(e_true, BETA).mean(),
        # F_beta at beta = 1 plus log(2 pi sigma^2) is the mixture's negative log-density.
        "heldout_nll_mean": (f_beta(e, 1.0) + math.log(2 * math.pi * sigma**2)).mean(),
        "heldout_nll_mean_true_mixture": (
            f_beta(e_true, 1.0) + math.log(2 * math.pi * STD**2)
        ).mean(),
        "heldout_assignment_accuracy": (to_true[e.argmin(1)] == comp).mean(),
        "heldout_assignment_accuracy_true_centres": (e_true.argmin(1) == comp).mean(),
        "lloyd_iterations": iters,
    }
    out: dict[str, float | int | str] = {"heldout_points": N_HELDOUT}
    out.update({k: round(float(v), 5) for k, v in metrics.items()})
    for key in ("centres_within_0.1", "lloyd_iterations"):
        out[key] = int(out[key])
    return out


def picture(mu: np.ndarray, sigma: float, data: np.ndarray, path: Path) -> None:
    """Three panels: F_beta at beta = 1 (the mixture) and F_inf (k-means: Voronoi cells,
    kinks on their borders) over the plane, then both along the ring through the centres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 161
    g1, g2 = np.meshgrid(np.linspace(Y_LOW[0], Y_HIGH[0], n), np.linspace(Y_LOW[1], Y_HIGH[1], n))
    e = energies(np.stack([g1.ravel(), g2.ravel()], axis=1), mu, sigma)
    panels = [
        ("F_beta(y), beta = 1  (mixture)", f_beta(e, BETA)),
        ("F_inf(y) = min_k E(y, k)  (k-means)", f_inf(e)),
    ]
    true = true_centres()
    fig, axes = plt.subplots(1, 3, figsize=(12.0, 4.0), dpi=70)
    for ax, (title, f) in zip(axes, panels, strict=False):
        cs = ax.contour(
            g1, g2, f.reshape(n, n), levels=[2.5, 5, 10, 20, 50, 100], cmap="viridis",
            linewidths=0.8,
        )  # fmt: skip
        ax.clabel(cs, fontsize=6, fmt="%g")
        ax.scatter(data[:1000, 0], data[:1000, 1], s=1, c="0.6", label="data", rasterized=True)
        ax.scatter(true[:, 0], true[:, 1], s=40, marker="+", c="k", label="true centres")
        ax.scatter(mu[:, 0], mu[:, 1], s=14, marker="o", facecolors="none", edgecolors="r",
                   label="fitted centres mu_k")  # fmt: skip
        ax.set_aspect("equal")
        ax.set_xlim(Y_LOW[0], Y_HIGH[0])
        ax.set_ylim(Y_LOW[1], Y_HIGH[1])
        ax.set_title(title, fontsize=8)
    axes[0].legend(fontsize=6, loc="upper left")
    # Along the ring from one centre to the next: F_beta = F_inf + log(K)/beta in the wells
    # (that constant removed here), and a softmin instead of F_inf's kink where two wells
    # meet, lower there by up to log(2)/beta.
    theta = np.linspace(-np.pi / 8, 3 * np.pi / 8, 400)
    ring = RING_RADIUS * np.stack([np.cos(theta), np.sin(theta)], axis=1)
    e_ring = energies(ring, mu, sigma)
    ax = axes[2]
    ax.plot(np.degrees(theta), f_inf(e_ring), "k", lw=1.4, label="F_inf")
    for beta, style in ((1.0, "r--"), (0.3, "b"), (0.1, "g")):
        shifted = f_beta(e_ring, beta) - math.log(K) / beta
        ax.plot(np.degrees(theta), shifted, style, lw=0.9, label=f"F_beta - log(8)/beta, {beta:g}")
    ax.set_ylim(-0.5, 15)
    ax.set_xlabel("angle on the ring of radius 2 (degrees); centres at 0 and 45", fontsize=7)
    ax.set_title("free energies along the ring", fontsize=8)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


# --- the recipe's entry point ------------------------------------------------------------
def train(models_dir: Path, *, smoke: bool = False, seed: int = 0) -> dict[str, float | int | str]:
    """Fit, evaluate and publish models_dir/mixture/1; returns the held-out metrics."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(2)
    data, _ = sample(np.random.default_rng(seed), N_TRAIN)

    t0, cpu0 = time.perf_counter(), time.process_time()
    mu, sigma, iters = fit(data, seed, 3 if smoke else MAX_ITER)
    fit_s, fit_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    metrics = evaluate(mu, sigma, iters, seed)
    print(f"fitted in {fit_s:.2f} s ({fit_cpu_s:.2f} s cpu)")
    for key, value in metrics.items():
        print(f"  {key}: {value}")
    if not smoke:
        picture(mu, sigma, data, models_dir / "mixture" / "mixture.png")

    energy = MixtureEnergy(mu, sigma)
    probe_y, _ = sample(np.random.default_rng(seed + 3000), 6)
    probe_z = np.array([0, 3, 5, 7, 1, 6], dtype=np.float32)[:, None]  # own and other clusters
    publish(
        energy,
        models_dir=models_dir,
        name="mixture",
        version=1,
        description="8 Gaussians on a ring: E(y, z=k) = ||y - mu_k||^2 / (2 sigma^2).",
        y=TensorSpec(
            shape=[2],
            names=["y1", "y2"],
            low=Y_LOW,
            high=Y_HIGH,
            description="A point of the plane (data: 8 clusters on a ring of radius 2).",
        ),
        z=TensorSpec(
            shape=[1],
            kind="discrete",
            num_classes=K,
            prior="categorical",
            names=["cluster"],
            description="Cluster index 0..7 (a float holding an integer); uniform prior.",
        ),
        probe_inputs={"y": torch.from_numpy(probe_y), "z": torch.from_numpy(probe_z)},
        decoder=MixtureDecoder(energy),
        card=Card(
            task="Cluster 2-D points and score them under a Gaussian mixture.",
            method="Discrete latent energy E(y, k) = ||y - mu_k||^2 / (2 sigma^2); centres "
            "by k-means (Lloyd = minimising F_inf = min_k E over the data). F_inf is the "
            "k-means energy, F_beta (beta = 1) the mixture's negative log-density + const.",
            summary="Eight recovered cluster centres; the argmin over z clusters a point, "
            "decoding z gives its centre, F_beta scores it under the mixture.",
        ),
        training=Training(
            recipe="models/mixture/train.py",
            seed=seed,
            method=f"k-means: Lloyd's algorithm, k-means++ init, best of {N_INIT} "
            "(numpy); sigma = ML isotropic std given the assignments",
            data=f"{N_TRAIN} points from {K} equal-weight Gaussians (std {STD}) at radius "
            f"{RING_RADIUS} (numpy, seed {seed})",
            steps=iters,
            duration_s=round(fit_s, 2),
            cpu_s=round(fit_cpu_s, 2),
            torch_version=torch.__version__,
            network=f"{K} centres ({K}x2 parameters) and one sigma",
            smoke=smoke,
        ),
        metrics=metrics,
        inference=INFERENCE,
    )
    return metrics


if __name__ == "__main__":
    recipe_main(train, __file__, __doc__)
