"""Recipe of the `shapes` model: concept learning with an energy-based model (Mordatch 2018).

A demonstration x is a set of points sampled from a shape outline (a circle or a square,
random centre, size and rotation). The energy E(x, y) over a generated set y is low when y
is the same shape; generation is energy minimisation over y from random points, which
replicates the demonstrated concept. This file simulates demonstrations, trains a DeepSets
energy contrastively (InfoNCE against hand-made and Langevin negatives), measures the
generations on held-out demonstrations and publishes version 1.

Run it with `ebm train shapes`, or `PYTHONPATH=. python models/shapes/train.py [--smoke]`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.registry.manifest import Batching, Card, InferenceDefaults, TensorSpec, Training
from app.training.publish import publish
from app.training.recipe import recipe_main

# --- the simulator (plane units; every coordinate within +-BOUND) --------------------------
M = N = 16  # points per demonstration (x) and per generated set (y)
BOUND = 3.0
CENTRE = 1.0  # centres uniform in [-1, 1]^2
RADIUS = (0.6, 1.6)  # circle radius
HALF_SIDE = (0.6, 1.3)  # square half-side (corners reach at most 1 + 1.3 * sqrt(2) = 2.84)
NOISE = 0.02  # std of the demonstrated points around the outline
CIRCLE, SQUARE = 0, 1

# --- the recipe ----------------------------------------------------------------------------
WIDTH, CODE = 64, 64
STEPS, BATCH, LR = 570, 48, 2e-3
PAIR_SCALE = 1.0  # neighbour distance for the axis estimate, in zoomed demo-frame units
ZOOM = 2.0  # points are expressed in the demo's own frame (unit spread), then scaled by this
# Scale of the energy: SHARPNESS * squared distance (in demo-frame units) per point. The
# per-point residuals get an eikonal regulariser (unit gradient, weight EIKONAL, as in neural
# signed distance functions): without it InfoNCE made the energy a plateau a few units high
# everywhere off the outline, with no pull for descent from random starts; with it the energy
# grows quadratically with the distance and is bounded by it.
SHARPNESS, EIKONAL = 10.0, 1.0
# InfoNCE is blind to a constant added to every candidate: the positives' energy is kept near
# zero (the energy is >= 0 by construction) by this small magnitude penalty.
REG = 0.01
# A ladder of blurred positives (noise log-uniform in SIGMA_RANGE, LADDER bands), ranked
# listwise (Plackett-Luce), makes the energy grow with the blur.
LADDER, SIGMA_RANGE = 4, (0.04, 2.5)
N_CHAINS = 2048  # persistent Langevin chains (replay buffer), one shape instance each
CHAIN_STEPS, CHAIN_RESET = 4, 0.03  # Langevin steps per training step, share restarted
LANGEVIN_STEP, LANGEVIN_NOISE = 0.005, 0.01
N_HELDOUT = 200
# The service's defaults: its gd is Adam, step_size the first move per coordinate (decaying).
INFERENCE = InferenceDefaults(
    method="gd", k=1, num_starts=8, steps=100, step_size=0.1, noise_scale=0.0, merge_radius=0.5
)
# The recipe's own generation check: plain gradient descent, y -= 0.01 * dE/dy.
PLAIN_GD = InferenceDefaults(k=1, num_starts=8, steps=100, step_size=0.01, merge_radius=0.5)


def sample_instances(n: int, gen: torch.Generator) -> torch.Tensor:
    """n shape instances [n, 5]: class (0 circle, 1 square), centre x, centre y, size, rotation."""
    cls = (torch.rand(n, generator=gen) < 0.5).float()
    centre = CENTRE * (2 * torch.rand(n, 2, generator=gen) - 1)
    u = torch.rand(n, generator=gen)
    size = torch.where(
        cls == CIRCLE,
        RADIUS[0] + (RADIUS[1] - RADIUS[0]) * u,
        HALF_SIDE[0] + (HALF_SIDE[1] - HALF_SIDE[0]) * u,
    )
    rot = (math.pi / 2) * torch.rand(n, generator=gen)  # a square's full symmetry period
    return torch.cat([cls[:, None], centre, size[:, None], rot[:, None]], dim=1)


def outline(params: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Points [n, k, 2] at arc-length fractions t [n, k] in [0, 1) of each instance's outline."""
    cls, centre, size, rot = params[:, :1], params[:, None, 1:3], params[:, 3:4], params[:, 4:5]
    t = t % 1.0
    ang = 2 * math.pi * t
    circ = torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1)
    side, u = torch.floor(4 * t), (4 * t) % 1.0 * 2 - 1  # which side, position along it
    sq = torch.stack(
        [
            torch.where(
                side == 0, 1.0, torch.where(side == 2, -1.0, torch.where(side == 1, -u, u))
            ),
            torch.where(
                side == 1, 1.0, torch.where(side == 3, -1.0, torch.where(side == 0, u, -u))
            ),
        ],
        dim=-1,
    )
    unit = torch.where(cls[..., None] == CIRCLE, circ, sq)
    c, s = torch.cos(rot), torch.sin(rot)
    rotated = torch.stack(
        [c * unit[..., 0] - s * unit[..., 1], s * unit[..., 0] + c * unit[..., 1]], -1
    )
    return centre + size[..., None] * rotated


def demo(params: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """A fresh demonstration [n, k, 2]: i.i.d. uniform positions along the outline, plus noise."""
    pts = outline(params, torch.rand(params.shape[0], k, generator=gen))
    return pts + NOISE * torch.randn(pts.shape, generator=gen)


def outline_distance(p: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Distance [n, k] of points p [n, k, 2] to each instance's true outline."""
    cls, centre, size, rot = params[:, :1], params[:, None, 1:3], params[:, 3:4], params[:, 4:5]
    d = p - centre
    circle = (torch.linalg.vector_norm(d, dim=-1) - size).abs()
    c, s = torch.cos(rot), torch.sin(rot)  # into the square's frame, rotate by -rot
    q = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)
    excess = q.abs() - size[..., None]
    sdf = torch.linalg.vector_norm(excess.clamp(min=0), dim=-1) + excess.amax(-1).clamp(max=0)
    return torch.where(cls == CIRCLE, circle, sdf.abs())


# --- the network ---------------------------------------------------------------------------
def mlp(n_in: int, n_out: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(n_in if i == 0 else WIDTH, WIDTH), nn.SiLU()]
    return nn.Sequential(*layers, nn.Linear(WIDTH, n_out))


Frame = tuple[torch.Tensor, ...]  # what ShapeEnergy.encode derives from a demonstration


def harmonic4(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Radius r, cos(4 angle) and sin(4 angle) [..., 1] of points p [..., 2]."""
    r = (p.square().sum(-1, keepdim=True) + 1e-6).sqrt()
    a, b = p[..., :1] / r, p[..., 1:] / r
    return r, a**4 - 6 * a**2 * b**2 + b**4, 4 * a * b * (a**2 - b**2)


def aligned_features(
    p: torch.Tensor, r: torch.Tensor, cos4: torch.Tensor, sin4: torch.Tensor, axis: torch.Tensor
) -> torch.Tensor:
    c, s = axis[..., :1], axis[..., 1:]
    return torch.cat([p, r, r * (cos4 * c + sin4 * s), r * (sin4 * c - cos4 * s)], dim=-1)


def point_features(p: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    """[..., 5] per point p [..., 2] (demo frame): p, its radius r, and r times the cosine and
    sine of 4 * (angle - the demo's square axis). A square's outline radius is a function of
    that angle alone, a circle's is constant: both become easy for a small MLP, and r lets
    the energy keep growing far from the shape. axis [..., 1, 2]: (cos, sin) of the axis's
    4-fold angle, scaled by how much the features should depend on it."""
    return aligned_features(p, *harmonic4(p), axis)


class ShapeEnergy(nn.Module):
    """E(x [B, M, 2], y [B, N, 2]) -> [B], invariant to permutations of x's and of y's points.

    Both sets are expressed in the demonstration's own frame: its centroid, its rms spread and
    its 4-fold axis (a square's orientation, noise for a circle). The concept is then
    translation-, scale- and rotation-equivariant by construction, and the networks learn the
    shape class, its size and a correction of the centre (the centroid of 16 random outline
    points is off the true centre by ~0.15 radii). A DeepSets encoder (per-point MLP, mean +
    max pooling) turns x into a concept code; each y point gets a residual given the code
    (squared and summed: every point should lie on the outline) and pooled features of the
    whole y set get a set term (the points should cover the outline, not bunch up).
    """

    def __init__(self) -> None:
        super().__init__()
        self.point_x = mlp(5, WIDTH)
        self.code = nn.Sequential(nn.SiLU(), nn.Linear(2 * WIDTH, CODE))
        self.offset = nn.Linear(CODE, 2)  # centre correction, in demo-frame units
        # The first layer of the y-point MLP on [features(y_i), code], split so that the
        # code's part is computed once per set rather than once per point.
        self.y_in, self.code_in = nn.Linear(3, WIDTH), nn.Linear(CODE, WIDTH, bias=False)
        self.point_y = mlp(WIDTH, WIDTH, depth=2)
        self.point_energy = nn.Linear(WIDTH, 1)
        self.set_energy = nn.Sequential(
            nn.Linear(WIDTH + 9 + CODE, WIDTH), nn.SiLU(), nn.Linear(WIDTH, 1)
        )

    def encode(self, x: torch.Tensor) -> Frame:
        """centroid [B,1,2], spread [B,1,1], axis [B,1,2], offset [B,1,2], code [B, CODE]."""
        centre = x.mean(dim=-2, keepdim=True)
        spread = (x - centre).square().sum(-1, keepdim=True).mean(-2, keepdim=True).sqrt() + 1e-3
        xn = ZOOM * (x - centre) / spread
        # The 4-fold axis from the directions between neighbouring demo points: on a square
        # they run along the sides, so their 4th harmonic is the square's orientation; on a
        # circle they are tangents in every direction and cancel. (The 4th harmonic of the
        # points' own angles was ~as noisy as the signal with 16 random points.)
        d = xn[:, None, :, :] - xn[:, :, None, :]  # [B, M, M, 2], all pairs
        r, cos4, sin4 = harmonic4(d)
        w = r.square() * torch.exp(-r.square() / PAIR_SCALE**2)  # 0 for i = j and far pairs
        m4 = (w * torch.cat([cos4, sin4], -1)).sum((1, 2)) / w.sum((1, 2))
        axis = (m4 / (m4.square().sum(-1, keepdim=True).sqrt() + 0.05))[:, None, :]
        h = self.point_x(point_features(xn, axis))
        code = self.code(torch.cat([h.mean(-2), h.amax(-2)], dim=-1))
        # For y the axis keeps its magnitude (~0.6 on squares, ~0.2 on circles, where it is
        # noise): with the unit axis, circles' valleys came out as rounded squares (flat sides).
        return centre, spread, m4[:, None, :] / 0.6, self.offset(code)[:, None, :], code

    def to_frame(self, frame: Frame, y: torch.Tensor) -> torch.Tensor:
        """Points y [B, N, 2] in the demo's (zoomed, centre-corrected) frame."""
        centre, spread, _, offset, _ = frame
        return ZOOM * (y - centre) / spread - offset

    def residuals(self, frame: Frame, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-point residuals f [B, N] (trained to be a signed distance to the outline in the
        frame's units: zero on it, unit slope) and the per-point features h [B, N, WIDTH],
        from point_features [B, N, 5] of y in the frame."""
        # Rotation-invariant inputs only (radius, aligned 4-fold harmonic): with the raw
        # coordinates too, generated circles came out slightly non-round.
        h = self.point_y(F.silu(self.y_in(feats[..., 2:]) + self.code_in(frame[4])[:, None]))
        return self.point_energy(h).squeeze(-1), h

    def score(self, frame: Frame, y: torch.Tensor) -> torch.Tensor:
        yn = self.to_frame(frame, y)
        r, cos4, sin4 = harmonic4(yn)
        feats = aligned_features(yn, r, cos4, sin4, frame[2])
        f, h = self.residuals(frame, feats)
        # The set term sees the mean point features h, the mean of the raw point features (the
        # set's centroid, mean radius, 4-fold moment in the frame) and the magnitudes of the
        # set's angular harmonics 1..4 (about 1/N for points spread along the outline, up to 1
        # for points bunched in 1..4 places).
        a, b = yn[..., :1] / r, yn[..., 1:] / r
        a2, b2 = a * a - b * b, 2 * a * b  # 2 * angle
        harmonics = [(a, b), (a2, b2), (a2 * a - b2 * b, a2 * b + b2 * a), (cos4, sin4)]
        moments = torch.cat([c.mean(-2).square() + s.mean(-2).square() for c, s in harmonics], -1)
        pooled = torch.cat([h.mean(-2), feats.mean(-2), moments, frame[4]], -1)
        set_term = self.set_energy(pooled).squeeze(-1)
        # E = SHARPNESS * sum of squared residuals + the squared set term: >= 0, zero on a
        # perfect set, a quadratic bowl around the outline that plain descent handles at any
        # range (the curvature is bounded, so one step size fits every start).
        energy: torch.Tensor = SHARPNESS * f.square().sum(-1) + set_term.square()
        return energy

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.score(self.encode(x), y)


# --- training ------------------------------------------------------------------------------
def same_spread_size(params: torch.Tensor) -> torch.Tensor:
    """The other class's size with the same rms spread (circle r <-> square r * sqrt(3) / 2):
    the demo frame cannot tell them apart, only the shape can."""
    return torch.where(
        params[:, 0] == CIRCLE, params[:, 3] * math.sqrt(3) / 2, params[:, 3] * 2 / math.sqrt(3)
    )


def negatives(params: torch.Tensor, pos: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Hand-made counter-examples [B, LADDER + 11, N, 2] of instances params and positives."""
    b = params.shape[0]

    def u(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, generator=gen)

    def with_(col: int, value: torch.Tensor) -> torch.Tensor:
        p = params.clone()
        p[:, col] = value
        return p

    # The jitter ladder: the positive blurred at LADDER noise levels, one per log-spaced band
    # (sorted ascending), which the loss also ranks among themselves.
    band = (torch.arange(LADDER) + torch.rand(b, LADDER, generator=gen)) / LADDER
    lo, hi = math.log(SIGMA_RANGE[0]), math.log(SIGMA_RANGE[1])
    sigma = torch.exp(lo + (hi - lo) * band)[..., None, None]
    jitter = pos[:, None] + sigma * torch.randn(b, LADDER, N, 2, generator=gen)
    other_class = with_(0, 1 - params[:, 0])
    other_class[:, 3] = same_spread_size(params)
    factor = torch.where(torch.rand(b, generator=gen) < 0.5, u(0.6, 0.85), u(1.15, 1.5))
    angle = u(0, 2 * math.pi)
    shift = params[:, 3] * u(0.15, 0.6)
    shifted = params.clone()
    shifted[:, 1:3] += shift[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    # Squares turned off their orientation by 15..45 degrees; circles (rotation is a no-op)
    # get a second deformed set instead.
    turned = demo(with_(4, params[:, 4] + u(math.pi / 12, math.pi / 4)), N, gen)
    deformed = [stretch(demo(params, N, gen), params, gen) for _ in range(2)]
    turned = torch.where((params[:, 0] == SQUARE)[:, None, None], turned, deformed[1])
    t0 = torch.rand(b, 1, generator=gen)  # all points on one stretch of the outline
    arc = outline(params, (t0 + 0.35 * torch.rand(b, N, generator=gen)) % 1.0)
    clump = outline(params, t0) + 0.1 * torch.randn(b, N, 2, generator=gen)
    # Points bunched in 2..5 evenly spaced places along the outline (descent on a circle
    # otherwise tended to gather the points at 4 places, which look like a square's corners).
    n_clusters = torch.randint(2, 6, (b, 1), generator=gen)
    spots = t0 + (torch.arange(N) % n_clusters) / n_clusters
    clusters = outline(params, spots + 0.02 * torch.randn(b, N, generator=gen))
    uniform = BOUND * (2 * torch.rand(b, N, 2, generator=gen) - 1)  # for the outliers
    # Part-way to the other class (radius blended between the circle and the square of the
    # same spread, 10..50% of the way): without it generated circles had slightly flat sides.
    theta = 2 * math.pi * torch.rand(b, N, generator=gen)
    is_circle = (params[:, :1] == CIRCLE).float()
    r_circle = torch.where(is_circle == 1, params[:, 3:4], other_class[:, 3:4])
    cos_rot = (theta - params[:, 4:5]).cos().abs()
    r_square = torch.where(is_circle == 1, other_class[:, 3:4], params[:, 3:4]) / torch.maximum(
        cos_rot, (theta - params[:, 4:5]).sin().abs()
    )
    alpha = 0.1 + 0.4 * torch.rand(b, 1, generator=gen)
    squareness = is_circle * alpha + (1 - is_circle) * (1 - alpha)
    radius = (1 - squareness) * r_circle + squareness * r_square
    morph = params[:, None, 1:3] + radius[..., None] * torch.stack([theta.cos(), theta.sin()], -1)
    morph = morph + NOISE * torch.randn(b, N, 2, generator=gen)
    # 1..6 points of the positive replaced by uniform ones: credit assignment per point, so
    # that every point far from the outline is pulled back to it (descent from random starts).
    n_out = torch.randint(1, 7, (b, 1), generator=gen)
    replaced = torch.rand(b, N, generator=gen).argsort(-1).argsort(-1) < n_out
    outliers = torch.where(replaced[..., None], uniform.flip(0), pos)
    sets = [
        outliers,
        demo(sample_instances(b, gen), N, gen),
        demo(other_class, N, gen),
        morph,
        demo(with_(3, params[:, 3] * factor), N, gen),
        demo(shifted, N, gen),
        turned,
        deformed[0],
        arc,
        clump,
        clusters,
    ]
    return torch.cat([jitter, torch.stack(sets, dim=1)], dim=1)


def stretch(pts: torch.Tensor, params: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Points stretched by 1.25..1.6 along a random direction through the centre (an ellipse,
    a rectangle or a rhombus instead of the shape)."""
    b = pts.shape[0]
    a = 2 * math.pi * torch.rand(b, 1, generator=gen)
    direction = torch.stack([torch.cos(a), torch.sin(a)], dim=-1)  # [b, 1, 2]
    k = 0.25 + 0.35 * torch.rand(b, 1, 1, generator=gen)
    d = pts - params[:, None, 1:3]
    along = (d * direction).sum(-1, keepdim=True)
    return params[:, None, 1:3] + d + k * along * direction


def descend(
    model: ShapeEnergy,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    step_size: float,
    noise: float,
    gen: torch.Generator,
) -> torch.Tensor:
    """`steps` of y <- clip(y - step_size * dE/dy + noise * N(0, 1), -BOUND, BOUND): the
    service's gradient descent (noise 0) or Langevin dynamics. Detached; x is [B, M, 2]."""
    frame = tuple(t.detach() for t in model.encode(x))
    for _ in range(steps):
        y = y.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(model.score(frame, y).sum(), [y])
        y = y.detach() - step_size * grad
        if noise > 0:
            y = y + noise * torch.randn(y.shape, generator=gen)
        y = y.clamp(-BOUND, BOUND)
    return y.detach()


def eikonal(
    model: ShapeEnergy, x: torch.Tensor, pos: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """Mean (|grad f| - 1)^2 of the per-point residuals at blurred positives (noise
    log-uniform in SIGMA_RANGE) and at uniform points: near the outline and all over the
    bounds, so the residual is a signed distance and the energy a bowl everywhere."""
    sigma = torch.exp(
        torch.empty(len(pos), 1, 1).uniform_(*map(math.log, SIGMA_RANGE), generator=gen)
    )
    y = torch.cat(
        [
            pos + sigma * torch.randn(pos.shape, generator=gen),
            BOUND * (2 * torch.rand(pos.shape, generator=gen) - 1),
        ]
    )
    frame = tuple(t.repeat(2, *[1] * (t.dim() - 1)) for t in model.encode(x))
    yn = model.to_frame(frame, y).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(
        model.residuals(frame, point_features(yn, frame[2]))[0].sum(), [yn], create_graph=True
    )
    return (torch.linalg.vector_norm(grad, dim=-1) - 1).square().mean()


def cosine_lr(step: int, steps: int) -> float:
    warmup = max(steps // 20, 1)
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_energy(steps: int, seed: int) -> ShapeEnergy:
    """InfoNCE over [positive, LADDER + 11 hand-made negatives, 1 Langevin negative] per
    demonstration, plus the ladder's ranking, the eikonal term and the magnitude penalty.

    The Langevin negatives come from persistent chains (a replay buffer, as in Du & Mordatch
    2019): each row of a batch is one buffered shape instance whose chain is advanced
    CHAIN_STEPS steps on the current energy (CHAIN_RESET of them restart from uniform noise
    with a fresh instance), so the model sees, and raises, where its own descent goes.
    """
    gen = torch.Generator().manual_seed(seed)
    model = ShapeEnergy()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    buf_params = sample_instances(N_CHAINS, gen)
    buf_y = BOUND * (2 * torch.rand(N_CHAINS, N, 2, generator=gen) - 1)
    target = torch.zeros(BATCH, dtype=torch.long)
    for step in range(steps):
        idx = torch.randperm(N_CHAINS, generator=gen)[:BATCH]
        reset = torch.rand(BATCH, generator=gen) < CHAIN_RESET
        n_reset = int(reset.sum())
        buf_params[idx[reset]] = sample_instances(n_reset, gen)
        buf_y[idx[reset]] = BOUND * (2 * torch.rand(n_reset, N, 2, generator=gen) - 1)
        params = buf_params[idx]
        x, pos = demo(params, M, gen), demo(params, N, gen)
        buf_y[idx] = descend(model, x, buf_y[idx], CHAIN_STEPS, LANGEVIN_STEP, LANGEVIN_NOISE, gen)
        cands = torch.cat([pos[:, None], negatives(params, pos, gen), buf_y[idx][:, None]], 1)
        k = cands.shape[1]
        frame = tuple(t.repeat_interleave(k, dim=0) for t in model.encode(x))
        energy = model.score(frame, cands.reshape(-1, N, 2)).reshape(BATCH, k)
        loss = F.cross_entropy(-energy, target) + REG * energy[:, 0].square().mean()
        for j in range(1, LADDER):  # level j below every blurrier level
            loss = loss + F.cross_entropy(-energy[:, j : LADDER + 1], target) / LADDER
        loss = loss + EIKONAL * eikonal(model, x, pos, gen)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps)
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            e = energy.detach()
            print(
                f"step {step:5d}  loss {loss.item():.4f}  E+ {e[:, 0].mean():7.2f}  "
                f"E- hand {e[:, 1:-1].mean():7.2f}  E- langevin {e[:, -1].mean():7.2f}"
            )
    return model.eval()


# --- evaluation ----------------------------------------------------------------------------
def generate(model: ShapeEnergy, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain gradient descent with PLAIN_GD's settings: num_starts uniform random sets in the
    bounds, plain gradient descent clipped to the bounds, the lowest-energy set kept (k=1).
    Returns (all final sets [n, S, N, 2], index of the lowest-energy start [n])."""
    gen = torch.Generator().manual_seed(seed)
    n, s = x.shape[0], PLAIN_GD.num_starts
    y = BOUND * (2 * torch.rand(n * s, N, 2, generator=gen) - 1)
    xs = x.repeat_interleave(s, dim=0)
    y = descend(model, xs, y, PLAIN_GD.steps, PLAIN_GD.step_size, 0.0, gen)
    with torch.no_grad():
        energy = model(xs, y).reshape(n, s)
    return y.reshape(n, s, N, 2), energy.argmin(dim=1)


def classify(p: torch.Tensor) -> torch.Tensor:
    """Circle (0) or square (1) for point sets p [n, k, 2], independent of the model: centre by
    an algebraic circle fit (Kasa), then the relative spread of the Euclidean radius (0 on a
    circle) against the smallest relative spread of the L-infinity radius over 90 rotations
    (0 on a square with that orientation); the smaller one wins."""
    a = torch.cat([p, torch.ones_like(p[..., :1])], dim=-1).double()
    b = -p.square().sum(-1, keepdim=True).double()
    sol = torch.linalg.lstsq(a, b).solution.float()  # x^2 + y^2 + D x + E y + F = 0
    d = p + sol[:, None, :2, 0] / 2  # relative to the centre (-D/2, -E/2)

    def rel_spread(r: torch.Tensor) -> torch.Tensor:
        return r.std(-1) / r.mean(-1).clamp(min=1e-6)

    circle = rel_spread(torch.linalg.vector_norm(d, dim=-1))
    square = torch.full_like(circle, float("inf"))
    for theta in torch.arange(90) * (math.pi / 2 / 90):
        c, s = math.cos(theta), math.sin(theta)
        q = torch.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)
        square = torch.minimum(square, rel_spread(q.abs().amax(-1)))
    return (square < circle).long()


def coverage(p: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Mean distance [n] from 64 evenly spaced points of the true outline to the nearest of p:
    low only if p covers the whole outline (a set collapsed on one side scores badly)."""
    ref = outline(params, torch.arange(64).float().expand(params.shape[0], -1) / 64)
    return torch.cdist(ref, p).amin(-1).mean(-1)


NEGATIVE_NAMES = [
    *[f"jitter_{j + 1}" for j in range(LADDER)],
    "outliers",
    "other_instance",
    "other_class_same_spread",
    "morph_10_50pct",
    "rescaled",
    "shifted",
    "turned_or_deformed",
    "deformed",
    "arc",
    "clump",
    "clusters",
]


def evaluate(
    model: ShapeEnergy, n: int, seed: int
) -> tuple[dict[str, float | int | str], dict[str, torch.Tensor]]:
    """Held-out metrics on n fresh shape instances (their own seed); also returns the data
    (instances, demonstrations, generations) for the picture."""
    gen = torch.Generator().manual_seed(seed + 1000)
    params = sample_instances(n, gen)
    x, pos = demo(params, M, gen), demo(params, N, gen)
    ys, best = generate(model, x, seed + 2000)
    y = ys[torch.arange(n), best]
    rand = BOUND * (2 * torch.rand(n, N, 2, generator=gen) - 1)
    true_cls = params[:, 0].long()
    is_sq = true_cls == SQUARE

    negs = negatives(params, pos, gen)
    with torch.no_grad():
        e_pos = model(x, pos)
        e_neg = model(x.repeat_interleave(len(NEGATIVE_NAMES), 0), negs.reshape(-1, N, 2))
        e_neg = e_neg.reshape(n, -1)
        e_gen = model(x, y)
        e_rand = model(x, rand)
    wins = e_pos[:, None] < e_neg
    gen_dist, all_dist = outline_distance(y, params), outline_distance(ys.flatten(1, 2), params)

    metrics: dict[str, float] = {
        "gen_outline_distance_mean": gen_dist.mean(),
        "gen_outline_distance_median": gen_dist.median(),
        "gen_outline_distance_mean_circles": gen_dist[~is_sq].mean(),
        "gen_outline_distance_mean_squares": gen_dist[is_sq].mean(),
        "gen_points_within_0.1_share": (gen_dist < 0.1).float().mean(),
        "gen_all_starts_outline_distance_mean": all_dist.mean(),
        "baseline_random_outline_distance_mean": outline_distance(rand, params).mean(),
        "floor_demo_outline_distance_mean": outline_distance(x, params).mean(),
        "gen_coverage_distance_mean": coverage(y, params).mean(),
        "baseline_random_coverage_distance_mean": coverage(rand, params).mean(),
        "floor_demo_coverage_distance_mean": coverage(x, params).mean(),
        "gen_class_accuracy": (classify(y) == true_cls).float().mean(),
        "gen_class_accuracy_circles": (classify(y[~is_sq]) == CIRCLE).float().mean(),
        "gen_class_accuracy_squares": (classify(y[is_sq]) == SQUARE).float().mean(),
        "classifier_on_demos_accuracy": (classify(x) == true_cls).float().mean(),
        "classifier_on_random_sets_square_share": classify(rand).float().mean(),
        "rank_positive_below_all_negatives_share": wins.all(dim=1).float().mean(),
        "rank_positive_below_negative_share": wins.float().mean(),
        "energy_positive_mean": e_pos.mean(),
        "energy_negative_mean": e_neg.mean(),
        "energy_generated_mean": e_gen.mean(),
        "generated_below_positive_share": (e_gen < e_pos).float().mean(),
    }
    for i, name in enumerate(NEGATIVE_NAMES):
        metrics[f"rank_vs_{name}"] = wins[:, i].float().mean()
    metrics["rank_vs_uniform_random_set"] = (e_pos < e_rand).float().mean()
    out: dict[str, float | int | str] = {"heldout_demonstrations": n}
    out.update({k: round(float(v), 4) for k, v in metrics.items()})
    return out, {"params": params, "x": x, "y": y}


def picture(data: dict[str, torch.Tensor], path: Path) -> None:
    """Demonstrations next to generations: 6 held-out circles and 6 held-out squares."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cls = data["params"][:, 0]
    rows = torch.cat([torch.nonzero(cls == CIRCLE)[:6, 0], torch.nonzero(cls == SQUARE)[:6, 0]])
    fig, axes = plt.subplots(4, 6, figsize=(10.5, 7.2))
    ref = outline(data["params"][rows], torch.linspace(0, 1, 201).expand(len(rows), -1))
    for j, i in enumerate(rows.tolist()):
        for col, (key, colour, title) in enumerate(
            [("x", "tab:blue", "demonstration"), ("y", "tab:red", "generated")]
        ):
            ax = axes[j // 3, 2 * (j % 3) + col]
            ax.plot(ref[j, :, 0], ref[j, :, 1], color="0.8", lw=1)
            ax.scatter(data[key][i, :, 0], data[key][i, :, 1], s=12, color=colour)
            ax.set(xlim=(-BOUND, BOUND), ylim=(-BOUND, BOUND), xticks=[], yticks=[], aspect="equal")
            ax.set_title(title, fontsize=8)
    fig.suptitle(
        "shapes: held-out demonstrations (blue) and the sets generated from them by gradient "
        "descent on E(x, .) (red);\ngrey: the true outline",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


# --- the recipe's entry point ------------------------------------------------------------
def train(models_dir: Path, *, smoke: bool = False, seed: int = 0) -> dict[str, float | int | str]:
    """Train, evaluate and publish models_dir/shapes/1; returns the held-out metrics."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(2)
    steps, n_eval = (10, 16) if smoke else (STEPS, N_HELDOUT)
    # One thread for training and evaluation: every matmul is small, and on this shared
    # 2-core machine a second thread cost up to 20x in synchronisation (measured).
    torch.set_num_threads(1)
    t0, cpu0 = time.perf_counter(), time.process_time()
    model = train_energy(steps, seed)
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
    t0 = time.perf_counter()
    metrics, data = evaluate(model, n_eval, seed)
    eval_s = time.perf_counter() - t0
    torch.set_num_threads(2)
    print(f"trained in {train_s:.1f} s ({train_cpu_s:.1f} s cpu), evaluated in {eval_s:.1f} s")
    for key, value in metrics.items():
        print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    if not smoke:
        (models_dir / "shapes").mkdir(parents=True, exist_ok=True)
        picture(data, models_dir / "shapes" / "generations.png")

    gen = torch.Generator().manual_seed(seed + 3000)
    probe_params = sample_instances(8, gen)
    probe_y = torch.cat(
        [demo(probe_params[:4], N, gen), BOUND * (2 * torch.rand(4, N, 2, generator=gen) - 1)]
    )
    limits = {"low": [-BOUND] * (2 * M), "high": [BOUND] * (2 * M)}
    names = {
        "x": [f"x{i}_{c}" for i in range(M) for c in "xy"],
        "y": [f"y{i}_{c}" for i in range(N) for c in "xy"],
    }
    publish(
        model,
        models_dir=models_dir,
        name="shapes",
        version=1,
        description="Concept learning (Mordatch 2018): generate a point set of the same shape as "
        "a demonstration (circle or square outline, any centre, size, rotation).",
        x=TensorSpec(
            shape=[M, 2],
            names=names["x"],
            **limits,
            description=f"Demonstration: {M} points (x, y) on a shape's outline, any order.",
        ),
        y=TensorSpec(
            shape=[N, 2],
            names=names["y"],
            **limits,
            description=f"Generated set: {N} points (x, y), any order; low energy when they "
            "trace the demonstrated shape.",
        ),
        probe_inputs={"x": demo(probe_params, M, gen), "y": probe_y},
        card=Card(
            task="Concept learning: from a demonstration point set (circle or square outline), "
            "generate a set of points that forms the same shape at the same place and size.",
            method="Conditional DeepSets energy E(x, y) trained with InfoNCE against hand-made "
            "and persistent-Langevin negatives; generation = gradient descent on y.",
            summary="Energy minimisation from random points replicates the demonstrated shape; "
            "the energy is permutation-invariant in both sets.",
        ),
        training=Training(
            recipe="models/shapes/train.py",
            seed=seed,
            method=f"InfoNCE over [positive, {LADDER + 11} hand-made negatives, 1 persistent "
            f"Langevin negative] per demonstration + Plackett-Luce ranking of a {LADDER}-level "
            f"blur ladder + eikonal regulariser (weight {EIKONAL}) on the per-point residuals "
            f"+ magnitude penalty {REG} on the positives' energy",
            data="shape instances simulated on the fly (torch, seed "
            f"{seed}): demos of {M} points, noise {NOISE}",
            steps=steps,
            duration_s=round(train_s, 1),
            cpu_s=round(train_cpu_s, 1),
            torch_version=torch.__version__,
            batch_size=BATCH,
            network=f"DeepSets in the demo's frame (centroid, rms spread, 4-fold axis): per-point "
            f"MLPs width {WIDTH} SiLU, mean+max pooling, code {CODE}; E = {SHARPNESS} * sum of "
            "squared per-point residuals + squared set term",
            optimizer=f"AdamW lr {LR} cosine, weight decay 1e-4",
            langevin=f"{N_CHAINS} persistent chains, {CHAIN_STEPS} steps of size "
            f"{LANGEVIN_STEP} and noise {LANGEVIN_NOISE} per training step, "
            f"{CHAIN_RESET:.0%} restarted",
            threads=1,
            evaluation_duration_s=round(eval_s, 1),
            smoke=smoke,
        ),
        metrics=metrics,
        inference=INFERENCE,
        batching=Batching(max_batch_size=256, max_delay_ms=2.0, max_rows_per_request=4096),
    )
    return metrics


if __name__ == "__main__":
    recipe_main(train, __file__, __doc__)
