"""Recipe of the `car` model: where does a car ahead go around an obstacle, left or right?

LeCun's example (ICLR 2020): a regressor trained with MSE predicts the average of the two
real continuations, i.e. straight into the obstacle; an energy-based model E(x, y) keeps a
low-energy valley on each of them. This file simulates the situations, trains the energy
with InfoNCE (as in Implicit Behavioral Cloning, Florence et al. 2021) and an MSE regressor
on the same data, measures both on held-out situations and publishes version 1.

Run it with `ebm train car`, or `PYTHONPATH=. python models/car/train.py [--smoke]`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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
STEPS, BATCH = 600, 128
# Counter-examples per positive. Uniform ones rarely match the forward displacement (it is
# nearly fixed by the speed), so they mostly teach forward; the lateral ones keep the
# positive's forward and draw the lateral anywhere, contrasting left, right and the middle
# directly. Without them both valleys are still found, but the deeper one sits on the
# likelier side in 79% of held-out situations instead of 96% (at 1000 steps).
N_UNIFORM, N_LATERAL, N_NEAR = 32, 64, 32
NEAR_SIGMA_M = (0.1, 2.0)  # log-uniform scale of the near-positive perturbations
LR = 1e-3
# Inputs are centred on the spec bounds and scaled to -zoom..zoom: the valleys are a few
# tenths of a metre wide, and on -1..1 inputs the MLP learned forward but still had one
# broad lateral minimum in the middle after 1000 steps (spectral bias).
X_ZOOM, Y_ZOOM = 2.0, 4.0
MSE_STEPS = 3000
N_HELDOUT, GRID = 500, 161
# The service's defaults (its gd is Adam: step_size is the first move in metres, decaying).
# dfo resamples at T = 5: car's energies span tens of units, and at T = 1 the population
# collapsed onto the deeper valley in 3-5% of situations.
INFERENCE = InferenceDefaults(
    method="gd",
    k=2,
    num_starts=64,
    steps=100,
    step_size=0.3,
    merge_radius=0.5,
    tol=0.5,
    methods={"dfo": MethodSettings(temperature=5.0)},
)
# The recipe's own check of the landscape: plain gradient descent, y -= 0.01 * dE/dy.
PLAIN_GD = InferenceDefaults(k=2, num_starts=64, steps=100, step_size=0.01, merge_radius=0.5)


def swerve_fraction(x: np.ndarray) -> np.ndarray:
    """How far the swerve gets in HORIZON_S, [N] (0.64..1 within the x bounds): full once
    the obstacle is reached, partial while it is still far (the car has begun to move over),
    so the two continuations are always at least 3.2 m apart laterally."""
    reach: np.ndarray = x[:, 2] * HORIZON_S / x[:, 1]
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


class Normalised(nn.Module):
    """Fixed input normalisation, stored as buffers so exported graphs take physical units:
    centred on the spec bounds and scaled to -zoom..zoom."""

    x_centre: torch.Tensor
    x_scale: torch.Tensor
    y_centre: torch.Tensor
    y_scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        for name, low, high, zoom in (("x", X_LOW, X_HIGH, X_ZOOM), ("y", Y_LOW, Y_HIGH, Y_ZOOM)):
            lo, hi = torch.tensor(low), torch.tensor(high)
            self.register_buffer(f"{name}_centre", (lo + hi) / 2)
            self.register_buffer(f"{name}_scale", (hi - lo) / (2 * zoom))

    def norm_x(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.x_centre) / self.x_scale

    def norm_y(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.y_centre) / self.y_scale


class CarEnergy(Normalised):
    """E(x, y) -> [...]: x [..., 3] and y [..., 2] in physical units, any leading dims."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(3 + 2, 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.norm_x(x), self.norm_y(y)], dim=-1)
        energy: torch.Tensor = self.net(h).squeeze(-1)
        return energy


class Regressor(Normalised):
    """The MSE baseline f(x) -> y [..., 2]: the same MLP and normalisation."""

    def __init__(self) -> None:
        super().__init__()
        self.net = mlp(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.net(self.norm_x(x)) * self.y_scale + self.y_centre
        return y


# --- training ------------------------------------------------------------------------------
def counter_examples(y_pos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[B, N_UNIFORM + N_LATERAL + N_NEAR, 2]: uniform over the y bounds (raise spurious
    valleys anywhere), uniform lateral at the positive's forward (raise the middle and the
    far sides), multi-scale perturbations of the positive (sharpen the real valleys)."""
    b = y_pos.shape[0]
    lo, hi = torch.tensor(Y_LOW), torch.tensor(Y_HIGH)
    uniform = lo + (hi - lo) * torch.rand(b, N_UNIFORM, 2, generator=gen)
    lateral = lo[1] + (hi[1] - lo[1]) * torch.rand(b, N_LATERAL, 1, generator=gen)
    forward = y_pos[:, None, :1] + NEAR_SIGMA_M[0] * torch.randn(b, N_LATERAL, 1, generator=gen)
    log_lo, log_hi = np.log(NEAR_SIGMA_M[0]), np.log(NEAR_SIGMA_M[1])
    sigma = torch.exp(log_lo + (log_hi - log_lo) * torch.rand(b, N_NEAR, 1, generator=gen))
    near = y_pos[:, None, :] + sigma * torch.randn(b, N_NEAR, 2, generator=gen)
    return torch.cat([uniform, torch.cat([forward, lateral], dim=2), near], dim=1)


def cosine_lr(step: int, steps: int) -> float:
    warmup = max(steps // 20, 1)
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


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
        torch.autograd.backward(loss)
        opt.step()
        if step % 250 == 0 or step == steps - 1:
            print(f"ebm step {step:5d}  infonce {loss.item():.4f}")
    return model.eval()


def train_regressor(x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> Regressor:
    """The MSE baseline on the same data. One thread: its matmuls are tiny, a second thread
    only adds synchronisation, and on a busy machine waiting for it cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed + 1)
    model = Regressor()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    for step in range(steps):
        idx = torch.randint(0, x.shape[0], (256,), generator=gen)
        loss = F.mse_loss(model(x[idx]), y[idx])
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
    torch.set_num_threads(threads)
    print(f"mse regressor: final batch mse {loss.item():.4f}")
    return model.eval()


# --- evaluation ----------------------------------------------------------------------------
def _mesh(low: list[float], high: list[float], n: int) -> torch.Tensor:
    """An n x n grid over [low, high], flattened to [n * n, 2] (row-major, forward first)."""
    axes = [torch.linspace(lo, hi, n) for lo, hi in zip(low, high, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 2)


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    distance: torch.Tensor = torch.linalg.vector_norm(a - b, dim=-1)
    return distance


@torch.no_grad()
def grid_valleys(model: CarEnergy, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two lowest local minima of E(x, .) on a GRID x GRID grid over the y bounds, each
    refined on a 21 x 21 sub-grid one cell around it: valleys [N, 2, 2], energies [N, 2]
    (inf where E has fewer than two local minima)."""
    grid = _mesh(Y_LOW, Y_HIGH, GRID)
    cell = (torch.tensor(Y_HIGH) - torch.tensor(Y_LOW)) / (GRID - 1)
    fine = _mesh([-1.0, -1.0], [1.0, 1.0], 21) * cell
    valleys, energies = torch.zeros(len(x), 2, 2), torch.full((len(x), 2), float("inf"))
    for i in range(len(x)):
        e = model(x[i].expand(len(grid), -1), grid).reshape(1, 1, GRID, GRID)
        # A local minimum is no higher than its 8 neighbours (max-pool pads with -inf).
        is_min = (-e == F.max_pool2d(-e, 3, stride=1, padding=1)).flatten()
        cand = torch.nonzero(is_min).flatten()
        for j, g in enumerate(cand[torch.argsort(e.flatten()[cand])][:2]):
            ys = grid[g] + fine
            ef = model(x[i].expand(len(ys), -1), ys)
            valleys[i, j], energies[i, j] = ys[ef.argmin()], ef.min()
    return valleys, energies


def gd_valleys(model: CarEnergy, x: torch.Tensor, seed: int) -> torch.Tensor:
    """What plain gradient descent with PLAIN_GD's settings finds: num_starts uniform starts,
    y -= step_size * dE/dy clamped to the bounds, merged greedily (lowest first) within
    merge_radius, the k lowest kept. [N, k, 2], NaN where fewer than k were distinct."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = torch.tensor(Y_LOW), torch.tensor(Y_HIGH)
    n, s = len(x), PLAIN_GD.num_starts
    y = lo + (hi - lo) * torch.rand(n, s, 2, generator=gen)
    xs = x[:, None, :].expand(-1, s, -1)
    for _ in range(PLAIN_GD.steps):
        y.requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xs, y).sum(), [y])
        y = torch.clamp(y.detach() - PLAIN_GD.step_size * grad, lo, hi)
    with torch.no_grad():
        energy = model(xs, y)
    out = torch.full((n, PLAIN_GD.k, 2), float("nan"))
    for i in range(n):
        kept: list[torch.Tensor] = []
        for j in torch.argsort(energy[i]).tolist():
            if len(kept) < PLAIN_GD.k and all(
                _dist(y[i, j], k) > PLAIN_GD.merge_radius for k in kept
            ):
                kept.append(y[i, j])
        out[i, : len(kept)] = torch.stack(kept)
    return out


def match(valleys: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Distances [N, 2] of two valleys [N, 2, 2] to (left, right) under the better of the two
    assignments (one valley per continuation); inf for a missing valley."""
    straight = torch.stack([_dist(valleys[:, 0], left), _dist(valleys[:, 1], right)], dim=1)
    swapped = torch.stack([_dist(valleys[:, 1], left), _dist(valleys[:, 0], right)], dim=1)
    use_swap = (swapped.sum(1) < straight.sum(1))[:, None]
    return torch.where(use_swap, swapped, straight).nan_to_num(float("inf"))


def evaluate(model: CarEnergy, reg: Regressor, n: int, seed: int) -> dict[str, float | int | str]:
    """Held-out metrics on n fresh situations (their own seed), against the true continuations."""
    x_np, _, _ = simulate(np.random.default_rng(seed + 1000), n)
    left, right = (torch.from_numpy(c).float() for c in continuations(x_np.astype(np.float64)))
    x = torch.from_numpy(x_np)
    valleys, v_energy = grid_valleys(model, x)
    err = match(valleys, left, right)
    gd_err = match(gd_valleys(model, x, seed + 2000), left, right)
    with torch.no_grad():
        pred = reg(x)
        e_pred = model(x, pred)
    mse_nearest = torch.minimum(_dist(pred, left), _dist(pred, right))
    midpoint = (left[:, 1] + right[:, 1]) / 2
    # Distance from the obstacle's centre line 2 s later: the regressor ends closer to the
    # obstacle than either way around it.
    ends = (torch.stack([pred[:, 1], left[:, 1], right[:, 1]], dim=1) + x[:, :1]).abs()
    into_obstacle = ends[:, 0] < ends[:, 1:].min(dim=1).values
    # Does the lowest valley lie on the side this offset makes likelier (p_left != 0.5)?
    lowest = valleys[torch.arange(n), v_energy.argmin(dim=1)]
    picks_left = _dist(lowest, left) < _dist(lowest, right)
    agrees = picks_left == torch.from_numpy(p_left(x_np) > 0.5)
    clear = torch.from_numpy(np.abs(x_np[:, 0]) > 0.5)  # p_left outside 0.375..0.625
    finite = err[torch.isfinite(err)]
    metrics = {
        "heldout_both_valleys_within_0.5m": (err < 0.5).all(dim=1).float().mean(),
        "heldout_valley_error_m_mean": finite.mean(),
        "heldout_valley_error_m_median": finite.median(),
        "heldout_valley_error_m_p95": finite.quantile(0.95),
        "heldout_gd64_both_valleys_within_0.5m": (gd_err < 0.5).all(dim=1).float().mean(),
        "continuation_separation_m_mean": _dist(left, right).mean(),
        "mse_distance_to_nearest_continuation_m_mean": mse_nearest.mean(),
        "mse_lateral_abs_from_midpoint_m_mean": (pred[:, 1] - midpoint).abs().mean(),
        "mse_closer_to_obstacle_than_both_continuations_share": into_obstacle.float().mean(),
        "ebm_energy_at_valleys_mean": v_energy[torch.isfinite(v_energy)].mean(),
        "ebm_energy_at_mse_prediction_mean": e_pred.mean(),
        "ebm_mse_prediction_above_both_valleys_share": (e_pred[:, None] > v_energy)
        .all(dim=1)
        .float()
        .mean(),
        "lowest_valley_on_likelier_side_share": agrees.float().mean(),
        "lowest_valley_on_likelier_side_share_abs_offset_gt_0.5": agrees[clear].float().mean(),
    }
    out: dict[str, float | int | str] = {"heldout_situations": n}
    out.update({k: round(float(v), 4) for k, v in metrics.items()})
    return out


# --- the recipe's entry point ------------------------------------------------------------
def train(models_dir: Path, *, smoke: bool = False, seed: int = 0) -> dict[str, float | int | str]:
    """Train, evaluate and publish models_dir/car/1; returns the held-out metrics."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x_np, y_np, _ = simulate(np.random.default_rng(seed), N_TRAIN)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    steps, mse_steps, n_eval = (10, 20, 20) if smoke else (STEPS, MSE_STEPS, N_HELDOUT)

    # Wall time depends on whatever else runs on the machine; CPU time much less so.
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = train_energy(x, y, steps, seed)
    ebm_s, ebm_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    t0 = time.perf_counter()
    reg = train_regressor(x, y, mse_steps, seed)
    mse_s = time.perf_counter() - t0
    print(f"trained: ebm {ebm_s:.1f} s ({ebm_cpu_s:.1f} s cpu), mse regressor {mse_s:.1f} s")

    t0 = time.perf_counter()
    metrics = evaluate(model, reg, n_eval, seed)
    eval_s = time.perf_counter() - t0
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
            method=f"InfoNCE (IBC-style), {N_UNIFORM} uniform + {N_LATERAL} lateral + "
            f"{N_NEAR} near-positive counter-examples per positive",
            data=f"{N_TRAIN} simulated situations (numpy, seed {seed}), noise {NOISE_M} m",
            steps=steps,
            duration_s=round(ebm_s, 1),
            cpu_s=round(ebm_cpu_s, 1),
            torch_version=torch.__version__,
            batch_size=BATCH,
            network=f"MLP {DEPTH}x{WIDTH} SiLU on normalised [x, y]",
            optimizer=f"AdamW lr {LR} cosine, weight decay 1e-4",
            threads=torch.get_num_threads(),
            mse_baseline_duration_s=round(mse_s, 1),
            evaluation_duration_s=round(eval_s, 1),
            smoke=smoke,
        ),
        metrics=metrics,
        inference=INFERENCE,
    )
    return metrics


if __name__ == "__main__":
    recipe_main(train, __file__, __doc__)
