"""Recipe of the `spiral` model: a denoising auto-encoder whose reconstruction error is an energy.

The "denoising" family of contrastive training in LeCun's taxonomy: corrupt a data point,
learn to map it back. Trained on points of a 2-D spiral, the auto-encoder D learns to move
any point towards the curve, so E(y) = ||y - D(y)||^2 is near zero on the spiral and grows
with the distance to it, and descending E projects a point onto the data manifold. This file
draws the data, trains D, measures E against the true distance to the spiral on held-out
points, draws the vector field and publishes version 1.

Run it with `ebm train spiral`, or `PYTHONPATH=. python models/spiral/train.py [--smoke]`.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.registry.manifest import Card, InferenceDefaults, TensorSpec, Training
from app.training.publish import publish
from app.training.recipe import recipe_main

# --- the data: an Archimedean spiral r = a * theta --------------------------------------------
THETA_START, THETA_END = 0.5 * math.pi, 4.0 * math.pi  # 1.75 turns
SPIRAL_A = 1.0 / (2.0 * math.pi)  # r = theta / 2 pi: 0.25 .. 2, arms exactly 1.0 apart
DATA_NOISE = 0.02  # isotropic std of the observed points, small against the arm spacing
Y_LOW, Y_HIGH = [-2.5, -2.5], [2.5, 2.5]  # the outer arm reaches r = 2: 0.5 margin at least
CURVE_POINTS = 20_000  # dense samples of the noise-free curve for true distances (6e-4 apart)

# --- the recipe --------------------------------------------------------------------------------
N_TRAIN = 20_000
WIDTH, DEPTH = 128, 3
STEPS, BATCH = 2500, 512
LR = 2e-3
# Corruption scale per point, log-uniform in SIGMA_NEAR, or in SIGMA_FAR with chance P_FAR.
# The best denoiser is the posterior mean of the clean point; for a small scale that is the
# projection onto the curve, with a sharp switch half-way between arms. Large scales blur it:
# between arms the mean mixes both, D moves points only part of the way and E is too low
# there (Spearman within 0.25 of the spiral, 1000 steps: 0.96 without far points, 0.83 with
# 10%, 0.80 with one range 0.02..0.8 for all). But without them no input ever lands far out
# (the corners are up to 2.4 from the spiral) and E is an untrained extrapolation there
# (Spearman -0.46 beyond 0.5). 2% far points are enough. Near scales up to 0.1, 0.15, 0.25
# and 0.3 of the arm spacing (1.0) gave Spearman 0.78, 0.95, 0.97, 0.97 within 0.25.
SIGMA_NEAR, SIGMA_FAR, P_FAR = (0.02, 0.25), (0.25, 2.0), 0.02
# Random Fourier features of y (fixed, stored as a buffer) besides y itself: a plain SiLU MLP
# learned the switch between arms too smoothly (Spearman 0.61 within 0.25 of the spiral after
# 1000 steps, against 0.96 with these features; near scales only).
FOURIER, FOURIER_SCALE = 32, 3.0  # frequencies ~ N(0, 3^2) rad per unit of y
Y_ZOOM = 3.0  # y itself is fed scaled to -3..3
N_HELDOUT, GRID = 2000, 121
GD_STARTS = 1024  # 8 groups of the default 128 starts
INFERENCE = InferenceDefaults(
    method="gd", k=8, num_starts=128, steps=200, step_size=0.1, merge_radius=0.2
)
# The recipe's own descent check (plain gradient steps; the service's gd is Adam).
PLAIN_GD = INFERENCE


def spiral_at(theta: np.ndarray) -> np.ndarray:
    """Noise-free points [N, 2] at angles theta [N]."""
    r = SPIRAL_A * theta
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def spiral_normal(theta: np.ndarray) -> np.ndarray:
    """Unit normals [N, 2] (pointing away from the centre) at angles theta [N]."""
    # Tangent of (a t cos t, a t sin t): a (cos t - t sin t, sin t + t cos t); rotated by -90.
    tx = np.cos(theta) - theta * np.sin(theta)
    ty = np.sin(theta) + theta * np.cos(theta)
    n = np.stack([ty, -tx], axis=1)
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def uniform_thetas(rng: np.random.Generator, n: int) -> np.ndarray:
    """n angles distributed uniformly along the arc length (uniform theta would crowd the
    inner turn, whose arc length per radian is 8x shorter than the outer one's)."""
    fine = np.linspace(THETA_START, THETA_END, 100_001)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(spiral_at(fine), axis=0).T))])
    return np.interp(rng.uniform(0.0, arc[-1], size=n), arc, fine)


def sample(rng: np.random.Generator, n: int) -> np.ndarray:
    """n observed points [n, 2]: on the spiral, plus DATA_NOISE."""
    return (spiral_at(uniform_thetas(rng, n)) + rng.normal(0.0, DATA_NOISE, (n, 2))).astype(
        np.float32
    )


CURVE = torch.from_numpy(
    spiral_at(np.linspace(THETA_START, THETA_END, CURVE_POINTS)).astype(np.float32)
)


def true_distance(y: torch.Tensor) -> torch.Tensor:
    """Euclidean distance [N] from y [N, 2] to the noise-free spiral (dense samples)."""
    return torch.cat([torch.cdist(c, CURVE).min(dim=1).values for c in y.split(2048)])


# --- the network ---------------------------------------------------------------------------
class SpiralDAE(nn.Module):
    """The denoiser D(y) = y + f(y), and E(y) = ||y - D(y)||^2 = ||f(y)||^2 -> [B].

    Residual form: f is the displacement towards the data, the picture's arrows. The input
    scaling and the Fourier frequencies are buffers, so the exported graphs take y in data
    units and hold everything they need.
    """

    y_scale: torch.Tensor
    freqs: torch.Tensor

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 7)
        self.register_buffer("y_scale", torch.tensor(Y_HIGH[0] / Y_ZOOM))
        self.register_buffer("freqs", FOURIER_SCALE * torch.randn(2, FOURIER, generator=gen))
        layers: list[nn.Module] = []
        for i in range(DEPTH):
            layers += [nn.Linear(2 + 2 * FOURIER if i == 0 else WIDTH, WIDTH), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(WIDTH, 2))

    def displacement(self, y: torch.Tensor) -> torch.Tensor:
        phase = y @ self.freqs
        h = torch.cat([y / self.y_scale, torch.sin(phase), torch.cos(phase)], dim=-1)
        f: torch.Tensor = self.net(h) * self.y_scale
        return f

    def denoise(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.displacement(y)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.displacement(y).pow(2).sum(dim=-1)


# --- training ----------------------------------------------------------------------------------
def _log_uniform(lo: float, hi: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.exp(math.log(lo) + math.log(hi / lo) * torch.rand(n, 1, generator=gen))


def corrupt(y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """y plus isotropic Gaussian noise of a per-point scale: near, or far with chance P_FAR."""
    n = y.shape[0]
    far = torch.rand(n, 1, generator=gen) < P_FAR
    sigma = torch.where(far, _log_uniform(*SIGMA_FAR, n, gen), _log_uniform(*SIGMA_NEAR, n, gen))
    return y + sigma * torch.randn(y.shape, generator=gen)


def cosine_lr(step: int, steps: int) -> float:
    warmup = max(steps // 20, 1)
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_dae(y: torch.Tensor, steps: int, seed: int) -> SpiralDAE:
    """Denoising: MSE between D(corrupt(y)) and the clean y."""
    gen = torch.Generator().manual_seed(seed)
    model = SpiralDAE(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    for step in range(steps):
        clean = y[torch.randint(0, y.shape[0], (BATCH,), generator=gen)]
        loss = F.mse_loss(model.denoise(corrupt(clean, gen)), clean)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
        if step % 500 == 0 or step == steps - 1:
            print(f"dae step {step:5d}  mse {loss.item():.5f}")
    return model.eval()


# --- inference as the service will run it ------------------------------------------------------
def descend(model: SpiralDAE, y: torch.Tensor, steps: int, step_size: float) -> torch.Tensor:
    """Plain gradient descent y -= step_size * dE/dy, clamped to the y bounds."""
    lo, hi = torch.tensor(Y_LOW), torch.tensor(Y_HIGH)
    y = y.clone()
    for _ in range(steps):
        y.requires_grad_(True)
        (grad,) = torch.autograd.grad(model(y).sum(), [y])
        y = torch.clamp(y.detach() - step_size * grad, lo, hi)
    return y.detach()


def merge(y: torch.Tensor, energy: torch.Tensor, radius: float, k: int) -> torch.Tensor:
    """Greedy de-duplication by energy: keep a point unless a lower one is within radius."""
    kept: list[torch.Tensor] = []
    for i in energy.argsort().tolist():
        if all(torch.dist(y[i], p) > radius for p in kept):
            kept.append(y[i])
            if len(kept) == k:
                break
    return torch.stack(kept)


# --- evaluation ------------------------------------------------------------------------------
def _mesh(n: int) -> torch.Tensor:
    """An n x n grid over the y bounds, flattened to [n * n, 2]."""
    axes = [torch.linspace(lo, hi, n) for lo, hi in zip(Y_LOW, Y_HIGH, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="xy"), dim=-1).reshape(-1, 2)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    return v.argsort().argsort().double()  # ties have measure zero for these values


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return _pearson(_ranks(a), _ranks(b))


def offset_points(rng: np.random.Generator, n: int, dist: float) -> torch.Tensor:
    """Points at true distance `dist` from the spiral: curve points moved along the normal
    (both sides), keeping those whose true distance is within 2% of `dist` (the move can come
    closer to the next arm or the inner end)."""
    theta = uniform_thetas(rng, n)
    side = rng.choice([-1.0, 1.0], size=(n, 1))
    y = torch.from_numpy((spiral_at(theta) + side * dist * spiral_normal(theta)).astype(np.float32))
    return y[(true_distance(y) - dist).abs() < 0.02 * dist]


@torch.no_grad()
def evaluate(model: SpiralDAE, n_eval: int, grid: int, gd_starts: int, seed: int) -> dict:
    """Held-out metrics; the data, offsets, noise and starts come from seeds never trained on."""
    rng = np.random.default_rng(seed + 1000)
    out: dict[str, float | int | str] = {"heldout_points": n_eval, "grid_points": grid * grid}

    # Energy against the true distance on a grid over the bounds, then in bands around it.
    y = _mesh(grid)
    dist, energy = true_distance(y), model(y)
    recon_dist = energy.sqrt()  # ||y - D(y)||: what D thinks the distance is
    for tag, mask in (
        ("grid", torch.ones_like(dist, dtype=torch.bool)),
        ("band0.5", dist < 0.5),
        ("band0.25", dist < 0.25),
    ):
        out[f"{tag}_share"] = float(mask.float().mean())
        out[f"{tag}_spearman_energy_vs_distance"] = _spearman(energy[mask], dist[mask])
        out[f"{tag}_pearson_energy_vs_distance"] = _pearson(energy[mask], dist[mask])
        out[f"{tag}_pearson_sqrt_energy_vs_distance"] = _pearson(recon_dist[mask], dist[mask])
    # Where does the ranking break down? Spearman within distance shells.
    for lo, hi in ((0.0, 0.1), (0.1, 0.3), (0.3, 0.5), (0.5, 2.0)):
        mask = (dist >= lo) & (dist < hi)
        out[f"shell{lo}-{hi}_spearman"] = _spearman(energy[mask], dist[mask])
        out[f"shell{lo}-{hi}_recon_dist_over_true_median"] = float(
            (recon_dist[mask] / dist[mask].clamp_min(1e-3)).median()
        )

    # Mean energy on held-out data points against points at a known distance from the curve.
    data = torch.from_numpy(sample(rng, n_eval))
    out["energy_heldout_data_mean"] = float(model(data).mean())
    for d in (0.1, 0.2, 0.5):
        pts = offset_points(rng, n_eval, d)
        out[f"energy_at_distance_{d}_mean"] = float(model(pts).mean())
        out[f"energy_at_distance_{d}_above_data_median_share"] = float(
            (model(pts) > model(data).median()).float().mean()
        )

    # Curvature of E at the data: plain descent is stable for step sizes below 2 / max eig.
    with torch.enable_grad():
        pts = data[:500].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(pts).sum(), [pts], create_graph=True)
        hess = torch.stack(
            [torch.autograd.grad(grad[:, i].sum(), [pts], retain_graph=True)[0] for i in (0, 1)],
            dim=1,
        )
    top = torch.linalg.eigvalsh(hess.detach()).amax(dim=1)
    out["hessian_top_eig_at_data_median"] = float(top.median())
    out["hessian_top_eig_at_data_p95"] = float(top.quantile(0.95))

    # Reconstruction of held-out noisy points: error of D against the corruption's own.
    for sigma in (0.05, 0.1, 0.3):
        noisy = data + sigma * torch.from_numpy(rng.normal(size=data.shape).astype(np.float32))
        rec = model.denoise(noisy)
        out[f"recon_sigma{sigma}_mse"] = float((rec - data).pow(2).sum(-1).mean())
        out[f"recon_sigma{sigma}_noisy_mse"] = float((noisy - data).pow(2).sum(-1).mean())
        out[f"recon_sigma{sigma}_output_distance_to_spiral_mean"] = float(true_distance(rec).mean())

    # Plain gradient descent from uniform starts (PLAIN_GD's settings).
    starts = torch.from_numpy(rng.uniform(Y_LOW, Y_HIGH, (gd_starts, 2)).astype(np.float32))
    with torch.enable_grad():
        ends = descend(model, starts, PLAIN_GD.steps, PLAIN_GD.step_size)
    end_dist = true_distance(ends)
    out["gd_start_distance_mean"] = float(true_distance(starts).mean())
    out["gd_end_distance_mean"] = float(end_dist.mean())
    out["gd_end_distance_median"] = float(end_dist.median())
    out["gd_end_distance_p95"] = float(end_dist.quantile(0.95))
    for tol in (0.05, 0.1):
        out[f"gd_end_within_{tol}_share"] = float((end_dist < tol).float().mean())
    # The defaults end to end, once per group of num_starts: merge, keep the k lowest modes.
    mode_dist = torch.cat(
        [
            true_distance(merge(e, model(e), PLAIN_GD.merge_radius, PLAIN_GD.k))
            for e in ends.split(PLAIN_GD.num_starts)
        ]
    )
    out["predict_runs"] = len(ends.split(PLAIN_GD.num_starts))
    out["predict_modes_mean"] = len(mode_dist) / out["predict_runs"]
    out["predict_mode_within_0.05_share"] = float((mode_dist < 0.05).float().mean())
    out["predict_mode_distance_mean"] = float(mode_dist.mean())
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}


# --- the picture -------------------------------------------------------------------------------
@torch.no_grad()
def draw(model: SpiralDAE, path: Path, seed: int) -> None:
    """The displacement D(y) - y as arrows over log10 E, the spiral, and where descent ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fine = _mesh(160)
    energy = model(fine).reshape(160, 160)
    n_arrows = 23
    cell = (Y_HIGH[0] - Y_LOW[0]) / (n_arrows - 1)
    coarse = _mesh(n_arrows)
    arrows = model.displacement(coarse)
    # True length up to 0.9 of a cell: near the spiral they show how far D moves a point,
    # far out (lengths up to 1.5) they would cover the picture.
    length = arrows.norm(dim=1, keepdim=True)
    arrows = arrows * (length.clamp_max(0.9 * cell) / length.clamp_min(1e-9))
    rng = np.random.default_rng(seed + 2000)
    starts = torch.from_numpy(rng.uniform(Y_LOW, Y_HIGH, (128, 2)).astype(np.float32))
    with torch.enable_grad():
        ends = descend(model, starts, PLAIN_GD.steps, PLAIN_GD.step_size)

    fig, ax = plt.subplots(figsize=(6.0, 5.2), dpi=90)
    extent = (Y_LOW[0], Y_HIGH[0], Y_LOW[1], Y_HIGH[1])
    im = ax.imshow(energy.clamp_min(1e-4).log10(), origin="lower", extent=extent, cmap="viridis")
    fig.colorbar(im, ax=ax, label="log10 E(y),  E = ||y - D(y)||²")
    ax.plot(CURVE[:, 0], CURVE[:, 1], color="white", lw=1.0, label="spiral (noise-free)")
    ax.quiver(
        coarse[:, 0], coarse[:, 1], arrows[:, 0], arrows[:, 1],
        angles="xy", scale_units="xy", scale=1.0, width=0.0035, color="black",
    )  # fmt: skip
    ax.scatter(
        ends[:, 0], ends[:, 1], s=10, color="red", label="GD ends: 128 uniform starts, 200 steps"
    )
    ax.set(xlim=extent[:2], ylim=extent[2:], xlabel="y1", ylabel="y2", aspect="equal")
    ax.set_title(f"D(y) - y (arrows, true length capped at {0.9 * cell:.2f})", fontsize=10)
    ax.legend(loc="lower left", fontsize=7, framealpha=0.8)
    fig.tight_layout()
    # A 256-colour palette keeps the card's picture small (RGB: 200 KB, this: about 60 KB).
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)


# --- the recipe's entry point ------------------------------------------------------------
def train(models_dir: Path, *, smoke: bool = False, seed: int = 0) -> dict[str, float | int | str]:
    """Train, evaluate and publish models_dir/spiral/1; returns the held-out metrics."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(2)
    y = torch.from_numpy(sample(np.random.default_rng(seed), N_TRAIN))
    steps, n_eval, grid, gd_starts = (
        (20, 200, 21, 64) if smoke else (STEPS, N_HELDOUT, GRID, GD_STARTS)
    )

    # One thread for training and evaluation: the matmuls are tiny (batch 512, width 128),
    # and on this shared 2-core machine a second thread cost 7x the CPU time in waiting.
    torch.set_num_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = train_dae(y, steps, seed)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    t0 = time.perf_counter()
    metrics = evaluate(model, n_eval, grid, gd_starts, seed)
    eval_s = time.perf_counter() - t0
    torch.set_num_threads(2)
    print(f"trained {train_s:.1f} s ({train_cpu_s:.1f} s cpu), evaluated {eval_s:.1f} s")
    for key, value in metrics.items():
        print(f"  {key}: {value}")
    if not smoke:
        (models_dir / "spiral").mkdir(parents=True, exist_ok=True)
        draw(model, models_dir / "spiral" / "field.png", seed)

    probe_rng = np.random.default_rng(seed + 3000)
    probe = np.concatenate([sample(probe_rng, 4), probe_rng.uniform(Y_LOW, Y_HIGH, (4, 2))])
    publish(
        model,
        models_dir=models_dir,
        name="spiral",
        version=1,
        description="Denoising auto-encoder on a 2-D spiral: E(y) = ||y - D(y)||^2.",
        y=TensorSpec(
            shape=[2],
            names=["y1", "y2"],
            low=Y_LOW,
            high=Y_HIGH,
            description="A point in the plane; the spiral r = theta / 2 pi, theta in "
            "[pi/2, 4 pi], lies within radius 2.",
        ),
        probe_inputs={"y": torch.from_numpy(probe.astype(np.float32))},
        card=Card(
            task="Score how far a 2-D point is from a spiral and pull points onto it.",
            method="Unconditional energy E(y) = ||y - D(y)||^2, D a denoising auto-encoder "
            "(MLP) trained to map multi-scale Gaussian corruptions back to clean points.",
            summary="Low energy on the spiral, growing with the distance to it; gradient "
            "descent on E projects points onto the curve.",
        ),
        training=Training(
            recipe="models/spiral/train.py",
            seed=seed,
            method="denoising auto-encoder (MSE to the clean point), Gaussian corruption "
            f"with sigma log-uniform in {SIGMA_NEAR[0]}..{SIGMA_NEAR[1]}, or with chance "
            f"{P_FAR} in {SIGMA_FAR[0]}..{SIGMA_FAR[1]}",
            data=f"{N_TRAIN} points on the spiral (numpy, seed {seed}), noise {DATA_NOISE}",
            steps=steps,
            duration_s=round(train_s, 1),
            cpu_s=round(train_cpu_s, 1),
            torch_version=torch.__version__,
            batch_size=BATCH,
            network=f"residual MLP {DEPTH}x{WIDTH} SiLU, D(y) = y + f(y), on [y scaled to "
            f"-{Y_ZOOM}..{Y_ZOOM}, {FOURIER} random Fourier features (scale {FOURIER_SCALE})]",
            optimizer=f"AdamW lr {LR} cosine, weight decay 1e-4",
            evaluation_duration_s=round(eval_s, 1),
            train_threads=1,
            smoke=smoke,
        ),
        metrics=metrics,
        inference=INFERENCE,
    )
    return metrics


if __name__ == "__main__":
    recipe_main(train, __file__, __doc__)
