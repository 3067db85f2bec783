"""Recipe of the `car` model: where does a car ahead go around an obstacle, left or right?

LeCun's example (ICLR 2020): a regressor trained with MSE predicts the average of the two
real continuations, i.e. straight into the obstacle; an energy-based model E(x, y) keeps a
low-energy valley on each of them. This file simulates the situations, trains the energy
with InfoNCE (as in Implicit Behavioral Cloning, Florence et al. 2021) and an MSE regressor
on the same data, measures both on held-out situations and publishes version 1.

Run it with `ebm train car`, or `PYTHONPATH=. python models/car/train.py [--smoke]`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.registry.manifest import Batching, Card, InferenceDefaults, TensorSpec, Training
from app.training.publish import publish

# --- the simulator (physical units: metres, seconds) -------------------------------------
HORIZON_S = 2.0  # y is where the car is this long after x
CLEARANCE_M = 2.5  # lateral distance from the obstacle's centre line once swerved
NOISE_M = 0.12  # std of the observed end position, both components
X_NAMES = ["offset_m", "distance_m", "speed_mps"]
X_LOW, X_HIGH = [-1.0, 8.0, 6.0], [1.0, 30.0, 12.0]
Y_NAMES = ["forward_m", "lateral_m"]
# Continuations span forward 11.4..24 m and lateral -3.5..3.5 m; the bounds add a margin.
Y_LOW, Y_HIGH = [9.0, -4.5], [27.0, 4.5]

# --- the recipe --------------------------------------------------------------------------
N_TRAIN = 50_000  # situations in the training set (shared by the EBM and the regressor)
WIDTH, DEPTH = 128, 3
STEPS, BATCH = 1500, 128
N_UNIFORM, N_NEAR = 128, 128  # counter-examples per positive
NEAR_SIGMA_M = (0.1, 2.0)  # log-uniform scale of the near-positive perturbations
LR = 1e-3
MSE_STEPS = 3000
N_HELDOUT, GRID = 500, 161
INFERENCE = InferenceDefaults(
    method="auto", k=2, num_starts=64, steps=100, step_size=0.01, merge_radius=0.5
)


def swerve_fraction(x: np.ndarray) -> np.ndarray:
    """How far the swerve gets in HORIZON_S, [N] in 0.4..1: full once the obstacle is
    reached, partial while it is still far (the car has only begun to move over)."""
    reach = x[:, 2] * HORIZON_S / x[:, 1]
    return np.clip(0.4 + 0.6 * reach, 0.0, 1.0)


def continuations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two noise-free continuations (y_left, y_right), each [N, 2], for situations x [N, 3].

    Lateral is positive to the left; offset is the car's lateral position relative to the
    obstacle's centre line. The car moves from its offset towards +-CLEARANCE_M by the swerve
    fraction; it keeps its speed, so the path length is speed * HORIZON_S.
    """
    offset, s, travel = x[:, 0], swerve_fraction(x), x[:, 2] * HORIZON_S
    ends = []
    for side in (1.0, -1.0):
        lateral = s * (side * CLEARANCE_M - offset)
        forward = np.sqrt(travel**2 - lateral**2)
        ends.append(np.stack([forward, lateral], axis=1))
    return ends[0], ends[1]


def p_left(x: np.ndarray) -> np.ndarray:
    """Chance of going left, [N]: a car already left of centre tends to stay left (0.25..0.75)."""
    return 0.5 + 0.25 * x[:, 0]


def simulate(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n situations: x [n, 3], observed continuation y [n, 2], went_left [n] (bool)."""
    x = rng.uniform(X_LOW, X_HIGH, size=(n, 3))
    left, right = continuations(x)
    went_left = rng.random(n) < p_left(x)
    y = np.where(went_left[:, None], left, right) + rng.normal(0.0, NOISE_M, size=(n, 2))
    return x.astype(np.float32), y.astype(np.float32), went_left


# --- the networks --------------------------------------------------------------------------
def mlp(n_in: int, n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(DEPTH):
        layers += [nn.Linear(n_in if i == 0 else WIDTH, WIDTH), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, n_out))


def _centre_scale(low: list[float], high: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    lo, hi = torch.tensor(low), torch.tensor(high)
    return (lo + hi) / 2, (hi - lo) / 2


class CarEnergy(nn.Module):
    """E(x, y) -> [...]: x [..., 3] and y [..., 2] in physical units, any leading dims.

    The normalisation is fixed (the spec bounds mapped to -1..1) and stored as buffers, so
    the exported graph takes metres and m/s as the manifest describes them.
    """

    def __init__(self) -> None:
        super().__init__()
        for name, (centre, scale) in {
            "x": _centre_scale(X_LOW, X_HIGH),
            "y": _centre_scale(Y_LOW, Y_HIGH),
        }.items():
            self.register_buffer(f"{name}_centre", centre)
            self.register_buffer(f"{name}_scale", scale)
        self.net = mlp(3 + 2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xn = (x - self.x_centre) / self.x_scale
        yn = (y - self.y_centre) / self.y_scale
        return self.net(torch.cat([xn, yn], dim=-1)).squeeze(-1)


class Regressor(nn.Module):
    """The MSE baseline f(x) -> y [..., 2], the same MLP and normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.energy_like = CarEnergy()  # reuse the buffers; only its normalisation is used
        self.net = mlp(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.energy_like
        return self.net((x - e.x_centre) / e.x_scale) * e.y_scale + e.y_centre


# --- training ------------------------------------------------------------------------------
def counter_examples(y_pos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[B, N_UNIFORM + N_NEAR, 2]: uniform over the y bounds (find and raise spurious valleys
    anywhere) plus multi-scale perturbations of the positive (sharpen the real valleys)."""
    b = y_pos.shape[0]
    lo, hi = torch.tensor(Y_LOW), torch.tensor(Y_HIGH)
    uniform = lo + (hi - lo) * torch.rand(b, N_UNIFORM, 2, generator=gen)
    log_lo, log_hi = np.log(NEAR_SIGMA_M[0]), np.log(NEAR_SIGMA_M[1])
    sigma = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, N_NEAR, 1, generator=gen))
    near = y_pos[:, None, :] + sigma * torch.randn(b, N_NEAR, 2, generator=gen)
    return torch.cat([uniform, near], dim=1)


def cosine_lr(step: int, steps: int) -> float:
    warmup = max(steps // 20, 1)
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(steps - warmup, 1)))


def train_energy(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> CarEnergy:
    """InfoNCE: softmax(-E) over [y+, counter-examples] should put its mass on index 0."""
    gen = torch.Generator().manual_seed(seed)
    model = CarEnergy()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    target = torch.zeros(BATCH, dtype=torch.long)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=gen)
        xb, yb = x[idx], y[idx]
        cands = torch.cat([yb[:, None, :], counter_examples(yb, gen)], dim=1)  # [B, K, 2]
        energy = model(xb[:, None, :].expand(-1, cands.shape[1], -1), cands)  # [B, K]
        loss = F.cross_entropy(-energy, target)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"ebm step {step:5d}  infonce {loss.item():.4f}")
    return model.eval()


def train_regressor(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> Regressor:
    gen = torch.Generator().manual_seed(seed + 1)
    model = Regressor()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=gen)
        loss = F.mse_loss(model(x[idx]), y[idx])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    print(f"mse regressor: final batch mse {loss.item():.4f}")
    return model.eval()


# --- evaluation ----------------------------------------------------------------------------
@torch.no_grad()
def grid_valleys(model: CarEnergy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two lowest local minima of E(x, .) on a GRID x GRID grid over the y bounds, each
    refined on a 21 x 21 sub-grid one cell around it: valleys [N, 2, 2], energies [N, 2]
    (inf where fewer than two local minima exist)."""
    axes = [torch.linspace(lo, hi, GRID) for lo, hi in zip(Y_LOW, Y_HIGH, strict=True)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2)
    cell = torch.tensor([(hi - lo) / (GRID - 1) for lo, hi in zip(Y_LOW, Y_HIGH, strict=True)])
    fine = torch.stack(
        torch.meshgrid(*[torch.linspace(-1, 1, 21)] * 2, indexing="ij"), dim=-1
    ).reshape(-1, 2) * cell
    valleys, energies = torch.zeros(len(x), 2, 2), torch.full((len(x), 2), float("inf"))
    for i in range(len(x)):
        e = model(x[i].expand(len(grid), -1), grid).reshape(1, 1, GRID, GRID)
        # A local minimum is no higher than its 8 neighbours (max-pool pads with -inf).
        is_min = (-e == F.max_pool2d(-e, 3, stride=1, padding=1)).flatten()
        cand = torch.nonzero(is_min).flatten()
        order = cand[torch.argsort(e.flatten()[cand])][:2]
        for j, g in enumerate(order):
            ys = grid[g] + fine
            ef = model(x[i].expand(len(ys), -1), ys)
            valleys[i, j], energies[i, j] = ys[ef.argmin()], ef.min()
    return valleys, energies


def gd_valleys(model: CarEnergy, x: torch.Tensor, seed: int) -> torch.Tensor:
    """What the service's gradient descent would return with INFERENCE's defaults: plain
    steps from uniform starts, clamped to the bounds, merged within merge_radius, the k
    lowest kept. [N, k, 2] (NaN where fewer than k distinct minima were found)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(Y_LOW), torch.tensor(Y_HIGH)
    n, s = len(x), INFERENCE.num_starts
    y = lo + (hi - lo) * torch.rand(n, s, 2, generator=gen)
    xs = x[:, None, :].expand(-1, s, -1)
    for _ in range(INFERENCE.steps):
        y.requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xs, y).sum(), [y])
        y = torch.clamp(y.detach() - INFERENCE.step_size * grad, lo, hi)
    with torch.no_grad():
        energy = model(xs, y)
    out = torch.full((n, INFERENCE.k, 2), float("nan"))
    for i in range(n):
        kept: list[torch.Tensor] = []
        for j in torch.argsort(energy[i]):
            if all(torch.dist(y[i, j], k) > INFERENCE.merge_radius for k in kept):
                kept.append(y[i, j])
            if len(kept) == INFERENCE.k:
                break
        if kept:
            out[i, : len(kept)] = torch.stack(kept)
    return out


def both_found(valleys: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """[N] bool: one of the two valleys within 0.5 m of each true continuation, and the
    per-situation errors [N, 2] under the better of the two assignments."""
    d = lambda a, b: torch.linalg.vector_norm(a - b, dim=-1)  # noqa: E731
    straight = torch.stack([d(valleys[:, 0], left), d(valleys[:, 1], right)], dim=1)
    swapped = torch.stack([d(valleys[:, 1], left), d(valleys[:, 0], right)], dim=1)
    use_swap = (swapped.sum(1) < straight.sum(1))[:, None]
    errors = torch.where(use_swap, swapped, straight).nan_to_num(float("inf"))
    return (errors < 0.5).all(dim=1), errors


def evaluate(model: CarEnergy, reg: Regressor, n: int, seed: int) -> dict[str, float | int | str]:
    x_np, _, went_left = simulate(np.random.default_rng(seed + 1000), n)  # fresh situations
    left_np, right_np = continuations(x_np.astype(np.float64))
    x, left, right = torch.from_numpy(x_np), torch.tensor(left_np), torch.tensor(right_np)
    left, right = left.float(), right.float()
    valleys, v_energy = grid_valleys(model, x)
    ok, err = both_found(valleys, left, right)
    gd_ok, _ = both_found(gd_valleys(model, x, seed + 2000), left, right)
    with torch.no_grad():
        pred = reg(x)
        e_pred = model(x, pred)
    to_left = torch.linalg.vector_norm(pred - left, dim=-1)
    to_right = torch.linalg.vector_norm(pred - right, dim=-1)
    midpoint = (left[:, 1] + right[:, 1]) / 2
    # Which side the lowest valley is on, against the likelier side for this offset.
    lowest = valleys[torch.arange(n), v_energy.argmin(dim=1)]
    picks_left = (lowest - left).norm(dim=-1) < (lowest - right).norm(dim=-1)
    likely_left = torch.from_numpy(p_left(x_np) > 0.5)
    clear = torch.from_numpy(np.abs(x_np[:, 0]) > 0.5)  # p_left outside 0.375..0.625
    finite = err[torch.isfinite(err)]
    return {
        "heldout_situations": n,
        "heldout_both_valleys_within_0.5m": ok.float().mean().item(),
        "heldout_valley_error_m_mean": finite.mean().item(),
        "heldout_valley_error_m_median": finite.median().item(),
        "heldout_valley_error_m_p95": finite.quantile(0.95).item(),
        "heldout_gd64_both_valleys_within_0.5m": gd_ok.float().mean().item(),
        "mse_distance_to_nearest_continuation_m_mean": torch.minimum(to_left, to_right)
        .mean()
        .item(),
        "mse_lateral_abs_from_midpoint_m_mean": (pred[:, 1] - midpoint).abs().mean().item(),
        "continuation_separation_m_mean": (left - right).norm(dim=-1).mean().item(),
        "ebm_energy_at_valleys_mean": v_energy[torch.isfinite(v_energy)].mean().item(),
        "ebm_energy_at_mse_prediction_mean": e_pred.mean().item(),
        "ebm_mse_prediction_above_both_valleys_share": (e_pred[:, None] > v_energy)
        .all(dim=1)
        .float()
        .mean()
        .item(),
        "lowest_valley_on_likelier_side_share": (picks_left == likely_left).float().mean().item(),
        "lowest_valley_on_likelier_side_share_abs_offset_gt_0.5": (
            (picks_left == likely_left)[clear].float().mean().item()
        ),
        "heldout_went_left_share": float(went_left.mean()),
    }


# --- the recipe's entry point ------------------------------------------------------------
def train(models_dir: Path, *, smoke: bool = False, seed: int = 0) -> dict[str, float | int | str]:
    """Train, evaluate and publish models_dir/car/1; returns the held-out metrics."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x_np, y_np, _ = simulate(np.random.default_rng(seed), N_TRAIN)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    steps, mse_steps, n_eval = (20, 50, 20) if smoke else (STEPS, MSE_STEPS, N_HELDOUT)

    t0 = time.perf_counter()
    model = train_energy(x, y, steps, seed)
    ebm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    reg = train_regressor(x, y, mse_steps, seed)
    mse_s = time.perf_counter() - t0
    print(f"trained: ebm {ebm_s:.1f} s, mse regressor {mse_s:.1f} s")

    metrics = evaluate(model, reg, n_eval, seed)
    for key, value in metrics.items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")

    probe_x, probe_y, _ = simulate(np.random.default_rng(seed + 3000), 8)
    publish(
        model,
        models_dir=models_dir,
        name="car",
        version=1,
        description="Car passing an obstacle: where it is 2 s later (two valleys: left, right).",
        x=TensorSpec(
            shape=[3],
            names=X_NAMES,
            low=X_LOW,
            high=X_HIGH,
            description="Car relative to the obstacle: lateral offset from its centre line (m, "
            "left positive), distance ahead to it (m), speed (m/s).",
        ),
        y=TensorSpec(
            shape=[2],
            names=Y_NAMES,
            low=Y_LOW,
            high=Y_HIGH,
            description="Displacement 2 s later relative to the current position: forward (m), "
            "lateral (m, left positive).",
        ),
        probe_inputs={"x": torch.from_numpy(probe_x), "y": torch.from_numpy(probe_y)},
        card=Card(
            task="Predict where a car ahead will be 2 s later as it passes an obstacle.",
            method="Conditional energy E(x, y) (MLP) trained with InfoNCE; predictions are "
            "the low-energy valleys of E(x, .), one per way around the obstacle.",
            summary="Every situation continues left or right; an MSE regressor averages them "
            "into the obstacle, the energy keeps a valley on each real continuation.",
        ),
        training=Training(
            recipe="models/car/train.py",
            seed=seed,
            method=f"InfoNCE, {N_UNIFORM} uniform + {N_NEAR} near-positive counter-examples",
            data=f"{N_TRAIN} simulated situations (numpy, seed {seed}), noise {NOISE_M} m",
            steps=steps,
            duration_s=round(ebm_s, 1),
            torch_version=torch.__version__,
            batch_size=BATCH,
            network=f"MLP {DEPTH}x{WIDTH} SiLU on normalised [x, y]",
            optimizer=f"AdamW lr {LR} cosine, weight decay 1e-4",
            threads=torch.get_num_threads(),
            mse_baseline_duration_s=round(mse_s, 1),
            smoke=smoke,
        ),
        metrics=metrics,
        inference=INFERENCE,
        batching=Batching(max_batch_size=256, max_delay_ms=2.0, max_rows_per_request=8192),
    )
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--smoke", action="store_true", help="a few steps, to test the export")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.models_dir, smoke=args.smoke, seed=args.seed)
