"""Served inference of the seven shipped models, for their cards (models/<name>/README.md).

Every number comes through the service's HTTP routes (/predict, /sample, /energy with and
without free_energy), run in-process on the shipped artifacts with the onnx backend, at each
model's manifest defaults: a request sets only its rows (x, or y for free energies), ``seed``
and, for the three big multi-row searches, a longer ``deadline_ms`` (the search settings stay
the manifest's), unless a line says otherwise. Held-out data come from each recipe's own
simulator or split, imported with app/cli.py's recipe_module.

    PYTHONPATH=. .venv/bin/python tests/bench/cards/measure_cards.py [--only car,ellipse]

One pass over all seven models takes about 70 s of CPU (onnxruntime on one thread).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient
from scipy.optimize import linear_sum_assignment  # type: ignore[import-untyped]

from app.cli import recipe_module
from app.config import BackendChoice, Settings
from app.main import create_app

MODELS = Path(__file__).resolve().parents[3] / "models"
SEED = 0  # every request's seed
LONG_DEADLINE_MS = 300_000  # for the few big multi-row requests (default 30 s)


def load_recipe(name: str) -> ModuleType:
    return recipe_module(MODELS, name)


def post(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def show(label: str, value: Any) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}"
    print(f"  {label}: {value}")


def converged_share(predictions: list[list[dict[str, Any]]]) -> float:
    flags = [p["converged"] for row in predictions for p in row]
    return float(np.mean(flags))


# --- car -------------------------------------------------------------------------------------
def car(client: TestClient) -> None:
    recipe = load_recipe("car")
    x, _, _ = recipe.simulate(np.random.default_rng(1000), 500)  # the recipe's held-out set
    left, right = recipe.continuations(x.astype(np.float64))
    # One request for all 500 (32,000 candidates): on a busy core it runs close to the default
    # 30 s deadline, so it gets a longer one; the search settings are the manifest's.
    body = {"x": x.tolist(), "seed": SEED, "deadline_ms": LONG_DEADLINE_MS}
    out = post(client, "/v1/models/car/predict", body)
    preds = out["predictions"]
    valleys = torch.full((len(x), 2, 2), float("nan"))
    found, hits = [], []
    for i, row in enumerate(preds):
        found.append(len(row))
        for j, p in enumerate(row[:2]):
            valleys[i, j] = torch.tensor(p["y"])
        for p in row:
            y = np.asarray(p["y"])
            hits.append(min(np.linalg.norm(y - left[i]), np.linalg.norm(y - right[i])) < 0.5)
    err = recipe.match(valleys, torch.from_numpy(left).float(), torch.from_numpy(right).float())
    both = (err < 0.5).all(dim=1)
    lowest = torch.tensor([row[0]["y"] for row in preds])
    picks_left = recipe._dist(lowest, torch.from_numpy(left).float()) < recipe._dist(
        lowest, torch.from_numpy(right).float()
    )
    likelier = torch.from_numpy(recipe.p_left(x) > 0.5)
    show("held-out situations (simulate, seed 1000)", len(x))
    show("both continuations within 0.5 m", f"{both.float().mean():.1%} ({int(both.sum())})")
    show("predictions per situation, mean", float(np.mean(found)))
    show("precision: predictions within 0.5 m of a continuation", f"{np.mean(hits):.1%}")
    e = err[both]
    show("error to its continuation m, mean / median / p95", _triple(e.flatten()))
    show("lowest prediction on the likelier side", f"{(picks_left == likelier).float().mean():.1%}")
    show("converged (projected gradient norm <= tol)", f"{converged_share(preds):.1%}")
    show("stats", _stats(out["stats"]))


def _triple(v: torch.Tensor) -> str:
    return f"{v.mean():.3f} / {v.median():.3f} / {v.quantile(0.95):.3f}"


def _stats(stats: dict[str, Any]) -> str:
    keys = ("method", "steps_run", "candidates", "evaluations", "partial", "time_ms")
    return ", ".join(f"{k} {stats[k]}" for k in keys if k in stats)


# --- ellipse ---------------------------------------------------------------------------------
def ellipse(client: TestClient) -> None:
    recipe = load_recipe("ellipse")
    model = client.app.state.dispatcher.engine.registry.get("ellipse")  # type: ignore[attr-defined]
    z_grid = (-math.pi + (np.arange(4096) + 0.5) * 2 * math.pi / 4096).astype(np.float32)
    curve = torch.from_numpy(model.backend.decode({"z": z_grid[:, None]}))  # learned Dec(z)

    # F_inf by free_energy=min on 700 of the card's 7568 band points (the cost limit allows
    # 781 rows x 64 starts x 100 steps per request).
    pts = recipe.mesh(161)
    d2_true = recipe.true_sq_distance(pts)
    band = pts[d2_true <= recipe.BAND**2]
    pick = np.random.default_rng(1).choice(len(band), 700, replace=False)
    pick = torch.from_numpy(pick)
    y = band[pick]
    out = post(
        client,
        "/v1/models/ellipse/energy",
        {"y": y.tolist(), "free_energy": "min", "seed": SEED, "deadline_ms": LONG_DEADLINE_MS},
    )
    f_min = torch.tensor(out["energy"], dtype=torch.float64)
    grid_min = recipe._nearest(y, curve)[0].double()
    vs_true = (f_min - d2_true[d2_true <= recipe.BAND**2][pick].double()).abs()
    vs_grid = f_min - grid_min
    show("band points (of the card's 161x161 grid within 0.5), sampled", f"{len(y)}/{len(band)}")
    show("|F_min - true squared distance|, mean / p95 / max", _abs3(vs_true))
    show(
        "F_min - min over a 4096-point z grid of E, mean / max",
        f"{vs_grid.mean():.2e} / {vs_grid.max():.2e}",
    )
    show("rows where F_min exceeds the grid minimum by > 1e-4", int((vs_grid > 1e-4).sum()))
    show("free_energy=min stats", _stats(out["stats"]))

    # F_beta (free_energy=marginal, 256-point midpoint grid by default) on the held-out points,
    # against the recipe's 2048-point reference computed on the same decoder.
    held = recipe.sample(torch.Generator().manual_seed(1000), recipe.N_HELDOUT)
    ref_curve = torch.from_numpy(
        model.backend.decode({"z": recipe._z_grid(2048).numpy().astype(np.float32)})
    )
    for beta in (1.0, 100.0):
        marg = post(
            client,
            "/v1/models/ellipse/energy",
            {"y": held.tolist(), "free_energy": "marginal", "beta": beta},
        )
        e = torch.cdist(held, ref_curve) ** 2
        ref = -(torch.logsumexp(-beta * e, dim=1) - math.log(2048)) / beta
        served = torch.tensor(marg["energy"])
        show(
            f"held-out mean F_beta at beta {beta:g} (served, {marg['num_samples']} z) / "
            "2048-point reference / max |diff|",
            f"{served.mean():.5f} / {ref.mean():.5f} / {(served - ref).abs().max():.1e}",
        )

    # /predict at defaults: 8 points along the curve.
    out = post(client, "/v1/models/ellipse/predict", {"seed": SEED})
    row = out["predictions"][0]
    ys = torch.tensor([p["y"] for p in row])
    show("predict: predictions", len(row))
    show(
        "predict: distance to the true ellipse, max",
        float(recipe.true_sq_distance(ys).sqrt().max()),
    )
    show("predict: energy, max", max(p["energy"] for p in row))
    show("predict: converged", f"{converged_share(out['predictions']):.0%}")
    show("predict stats", _stats(out["stats"]))

    # Fill in the blanks: y1 = 0.5 known, y2 inferred (the README's example).
    out = post(
        client,
        "/v1/models/ellipse/predict",
        {"y_known": [[0.5, 0.0]], "y_mask": [[True, False]], "k": 2, "seed": SEED},
    )
    row = out["predictions"][0]
    # The true ellipse at y1 = 0.5: where the dense true curve crosses it.
    dense = recipe.true_curve(recipe._z_grid(200_000)[:, 0])
    near = dense[(dense[:, 0] - 0.5).abs() < 1e-4][:, 1]
    truth = sorted({round(float(near[near < 0].mean()), 4), round(float(near[near > 0].mean()), 4)})
    got = sorted(round(p["y"][1], 4) for p in row)
    show("fill in: y2 at y1 = 0.5 (served) / true ellipse", f"{got} / {truth}")
    show("fill in: energies", [f"{p['energy']:.1e}" for p in row])

    # /sample: z from the uniform prior, decoded.
    out = post(client, "/v1/models/ellipse/sample", {"n": 256, "seed": SEED})
    ys = torch.tensor([s["y"] for s in out["samples"][0]])
    show(
        "sample: 256 decoded points, distance to the true ellipse mean / max",
        f"{recipe.true_sq_distance(ys).sqrt().mean():.4f} / "
        f"{recipe.true_sq_distance(ys).sqrt().max():.4f}",
    )
    show("sample stats method", out["stats"]["method"])


def _abs3(v: torch.Tensor) -> str:
    return f"{v.mean():.5f} / {v.quantile(0.95):.5f} / {v.max():.5f}"


# --- mixture ---------------------------------------------------------------------------------
def mixture(client: TestClient) -> None:
    recipe = load_recipe("mixture")
    true = recipe.true_centres()
    seeds = range(10)
    errors, counts, conv = [], [], []
    for seed in seeds:
        out = post(client, "/v1/models/mixture/predict", {"seed": seed})
        row = out["predictions"][0]
        counts.append(len(row))
        conv.append(converged_share(out["predictions"]))
        ys = np.array([p["y"] for p in row])
        cost = np.sqrt(recipe.sq_dist(ys, true))
        r, c = linear_sum_assignment(cost)
        errors.append(cost[r, c].max() if len(row) == 8 else math.inf)
        if seed == 0:
            show("predict seed 0: energies", [round(p["energy"], 4) for p in row])
            show("predict seed 0: masses", [round(p["mass"], 3) for p in row])
            show("predict seed 0 stats", _stats(out["stats"]))
    show("predict: seeds returning 8 predictions", f"{sum(c == 8 for c in counts)}/{len(counts)}")
    show("predict: worst distance to its true centre over the seeds", float(max(errors)))
    show("predict: converged share, mean over seeds", float(np.mean(conv)))

    # free_energy=marginal against the logsumexp over the 8 labels of /energy with z given.
    y, _ = recipe.sample(np.random.default_rng(1000), recipe.N_HELDOUT)
    marg = np.array(
        post(client, "/v1/models/mixture/energy", {"y": y.tolist(), "free_energy": "marginal"})[
            "energy"
        ]
    )
    fmin = np.array(
        post(client, "/v1/models/mixture/energy", {"y": y.tolist(), "free_energy": "min"})["energy"]
    )
    e = np.empty((len(y), 8))
    for start in range(0, len(y), 1000):
        chunk = y[start : start + 1000]
        rows = np.repeat(chunk, 8, axis=0)
        labels = np.tile(np.arange(8, dtype=np.float32), len(chunk))[:, None]
        scored = post(
            client, "/v1/models/mixture/energy", {"y": rows.tolist(), "z": labels.tolist()}
        )
        e[start : start + len(chunk)] = np.array(scored["energy"]).reshape(-1, 8)
    formula = recipe.f_beta(e, 1.0)  # -log((1/8) sum_k exp(-E_k)), float64
    show("held-out points", len(y))
    show(
        "|marginal - logsumexp formula over /energy's 8 labels|, max",
        f"{np.abs(marg - formula).max():.1e}",
    )
    show("|min - min over /energy's 8 labels|, max", f"{np.abs(fmin - e.min(1)).max():.1e}")
    show("held-out mean F_beta(1) / F_inf (served)", f"{marg.mean():.5f} / {fmin.mean():.5f}")

    # /sample: Langevin chains (z drawn per chain), 512 samples.
    out = post(client, "/v1/models/mixture/sample", {"n": 512, "seed": SEED})
    samples = out["samples"][0]
    ys = np.array([s["y"] for s in samples])
    zs = np.array([s["z"] for s in samples])
    model = client.app.state.dispatcher.engine.registry.get("mixture")  # type: ignore[attr-defined]
    mu = model.backend.decode({"z": np.arange(8, dtype=np.float32)[:, None]})  # fitted centres
    sigma = float(model.manifest.metrics["sigma_fitted"])
    resid = ys - mu[zs]
    show(
        "sample: 512 Langevin samples, per-coordinate std around their chain's centre",
        f"{resid.std():.4f} (sigma {sigma})",
    )
    show(
        "sample: labels drawn, min / max count per label",
        f"{np.bincount(zs, minlength=8).min()} / {np.bincount(zs, minlength=8).max()}",
    )
    show("sample stats", _stats(out["stats"]))


# --- spiral ----------------------------------------------------------------------------------
def spiral(client: TestClient) -> None:
    recipe = load_recipe("spiral")
    dists, counts, energies, conv = [], [], [], []
    for seed in range(8):  # 8 runs of the default 128 starts, as the recipe's check
        out = post(client, "/v1/models/spiral/predict", {"seed": seed})
        row = out["predictions"][0]
        counts.append(len(row))
        conv.append(converged_share(out["predictions"]))
        ys = torch.tensor([p["y"] for p in row])
        dists.append(recipe.true_distance(ys))
        energies += [p["energy"] for p in row]
        if seed == 0:
            show("predict seed 0 stats", _stats(out["stats"]))
    d = torch.cat(dists)
    show("predict: 8 seeds, modes per run", float(np.mean(counts)))
    show("predict: modes within 0.05 of the spiral", f"{(d < 0.05).float().mean():.1%}")
    show(
        "predict: mode distance to the spiral, mean / median / max",
        f"{d.mean():.3f} / {d.median():.4f} / {d.max():.3f}",
    )
    show("predict: converged share", float(np.mean(conv)))
    # Every start's end (k = 128 with a tiny merge radius returns them all), 4 seeds; and the
    # same at half the manifest's step size.
    for step in (None, 0.05):
        ends, energy, modes = [], [], []
        for seed in range(4):
            body: dict[str, Any] = {"seed": seed, "k": 128, "merge_radius": 1e-6}
            if step is not None:
                body["step_size"] = step
            row = post(client, "/v1/models/spiral/predict", body)["predictions"][0]
            ends.append(recipe.true_distance(torch.tensor([p["y"] for p in row])))
            energy += [p["energy"] for p in row]
        for seed in range(8):
            body = {"seed": seed} if step is None else {"seed": seed, "step_size": step}
            row = post(client, "/v1/models/spiral/predict", body)["predictions"][0]
            modes.append(recipe.true_distance(torch.tensor([p["y"] for p in row])))
        d, e, m = torch.cat(ends), torch.tensor(energy), torch.cat(modes)
        on = d < 0.05
        label = "default step" if step is None else f"step_size {step}"
        show(
            f"predict ({label}): every end of 4 x 128 starts within 0.05 / modes (8 seeds) "
            "within 0.05",
            f"{on.float().mean():.1%} / {(m < 0.05).float().mean():.1%}",
        )
        show(
            f"predict ({label}): energy of ends on the spiral, median / off it, median / min",
            f"{e[on].median():.1e} / {e[~on].median():.1e} / {e[~on].min():.1e}",
        )
        between = (d >= 0.05) & (d <= 0.55)
        show(
            f"predict ({label}): off-spiral ends 0.05..0.55 away (mid-lines) / beyond",
            f"{between.float().mean():.1%} / {(d > 0.55).float().mean():.1%}",
        )
    for extra in (
        {"temperature": 1.0},
        {"temperature": 0.01},
        {"temperature": 0.01, "step_size": 0.00025},
    ):
        out = post(client, "/v1/models/spiral/sample", {"n": 256, "seed": SEED, **extra})
        dist = recipe.true_distance(torch.tensor([s["y"] for s in out["samples"][0]]))
        show(
            f"sample {extra}: 256 Langevin samples, distance mean / within 0.05",
            f"{dist.mean():.3f} / {(dist < 0.05).float().mean():.1%}",
        )


# --- digits ----------------------------------------------------------------------------------
def digits(client: TestClient) -> None:
    recipe = load_recipe("digits")
    _, x, _, labels = recipe.split_digits()
    out = post(client, "/v1/models/digits/predict", {"x": x.tolist(), "seed": SEED})
    preds = out["predictions"]
    top1 = np.array([row[0]["y"][0] for row in preds])
    top3 = np.array([[p["y"][0] for p in row] for row in preds])
    show("held-out images (split_digits)", len(x))
    show(
        "enumerate top-1 accuracy",
        f"{(top1 == labels).mean():.2%} ({int((top1 != labels).sum())} errors)",
    )
    show("top-3 accuracy (k = 3)", f"{(top3 == labels[:, None]).any(1).mean():.2%}")
    rows = np.repeat(x, 10, axis=0)
    ys = np.tile(np.arange(10, dtype=np.float32), len(x))[:, None]
    e = np.array(
        post(client, "/v1/models/digits/energy", {"x": rows.tolist(), "y": ys.tolist()})["energy"]
    ).reshape(-1, 10)
    p = np.exp(-(e - e.min(1, keepdims=True)))
    p /= p.sum(1, keepdims=True)
    diff = max(abs(q["mass"] - p[i, q["y"][0]]) for i, row in enumerate(preds) for q in row)
    show("|mass - softmax(-E) of /energy over the 10 labels|, max", f"{diff:.1e}")
    show("stats", _stats(out["stats"]))


# --- digits-inpaint --------------------------------------------------------------------------
def digits_inpaint(client: TestClient) -> None:
    recipe = load_recipe("digits-inpaint")
    model = client.app.state.dispatcher.engine.registry.get("digits-inpaint")  # type: ignore[attr-defined]
    images_tr, images, labels_tr, labels = recipe.split_digits()
    x, y = images[:, :4], images[:, 4:]

    def mse(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # per pixel, 0..1 scale
        out: np.ndarray = (((a - b) / 16.0) ** 2).mean(axis=(-2, -1))
        return out

    z0 = model.backend.decode({"x": x, "z": np.zeros((len(x), 3), np.float32)})
    show("held-out digits (split_digits)", len(x))
    show("single z = 0 decode, MSE / pixel", float(mse(z0, y).mean()))

    out = post(client, "/v1/models/digits-inpaint/predict", {"x": x.tolist(), "seed": SEED})
    preds = out["predictions"]
    best = [min(mse(np.array(p["y"]), y[i]) for p in row) for i, row in enumerate(preds)]
    first = [mse(np.array(row[0]["y"]), y[i]) for i, row in enumerate(preds)]
    show(
        "predict: digits with k = 4 distinct completions",
        f"{sum(len(r) == 4 for r in preds)}/{len(preds)}",
    )
    show("predict: best of the returned, MSE / pixel", float(np.mean(best)))
    show("predict: lowest-energy prediction alone, MSE / pixel", float(np.mean(first)))
    z_norm = np.array([[np.linalg.norm(p["z"]) for p in row] for row in preds if len(row) == 4])
    show("predict: |z| of the 4 predictions by rank, mean", np.round(z_norm.mean(0), 3).tolist())
    show("predict: converged", f"{converged_share(preds):.1%}")
    show("predict stats", _stats(out["stats"]))

    out = post(client, "/v1/models/digits-inpaint/sample", {"x": x.tolist(), "n": 32, "seed": SEED})
    samples = np.array([[s["y"] for s in row] for row in out["samples"]])  # [N, 32, 4, 8]
    err = mse(samples, y[:, None])
    flat = torch.from_numpy(samples).flatten(2) / 16.0
    pair = torch.cdist(flat, flat) / math.sqrt(32)
    diversity = float((pair.sum(dim=(1, 2)) / (32 * 31)).mean())
    show(
        "sample: one sample / best of 8 / best of 32, MSE / pixel",
        f"{err[:, 0].mean():.4f} / {err[:, :8].min(1).mean():.4f} / {err.min(1).mean():.4f}",
    )
    show("sample: mean pairwise RMS difference of the 32 (0..1 scale)", diversity)
    from sklearn.linear_model import LogisticRegression  # type: ignore[import-untyped]

    clf = LogisticRegression(max_iter=2000).fit(images_tr.reshape(-1, 64) / 16, labels_tr)
    full = np.concatenate([np.repeat(x[:, None], 32, axis=1), samples], axis=2)
    read = clf.predict(full.reshape(-1, 64) / 16).reshape(len(x), 32)
    show(
        "sample: true digit among the 32 completions",
        f"{(read == labels[:, None]).any(1).mean():.1%}",
    )
    show("sample stats", _stats(out["stats"]))

    out = post(
        client,
        "/v1/models/digits-inpaint/energy",
        {"x": x.tolist(), "y": y.tolist(), "free_energy": "min", "seed": SEED},
    )
    f = np.array(out["energy"])
    z = np.array(out["z"], np.float32)
    at = model.backend.decode({"x": x, "z": z})
    show("free_energy=min of the true bottom halves, mean", float(f.mean()))
    show("decoded at its arg-min z, MSE / pixel", float(mse(at, y).mean()))
    show("free_energy=min stats", _stats(out["stats"]))


# --- shapes ----------------------------------------------------------------------------------
def shapes(client: TestClient) -> None:
    recipe = load_recipe("shapes")
    gen = torch.Generator().manual_seed(1000)  # the recipe's held-out demonstrations
    params = recipe.sample_instances(recipe.N_HELDOUT, gen)
    x = recipe.demo(params, recipe.M, gen)
    body = {"x": x.tolist(), "seed": SEED, "deadline_ms": LONG_DEADLINE_MS}
    out = post(client, "/v1/models/shapes/predict", body)
    y = torch.tensor([row[0]["y"] for row in out["predictions"]])
    dist = recipe.outline_distance(y, params)
    true_cls = params[:, 0].long()
    is_sq = true_cls == recipe.SQUARE
    cls = recipe.classify(y)
    show("held-out demonstrations (seed 1000)", len(x))
    show(
        "generated: mean distance to the true outline (circles / squares)",
        f"{dist.mean():.4f} ({dist[~is_sq].mean():.4f} / {dist[is_sq].mean():.4f})",
    )
    show("generated: points within 0.1", f"{(dist < 0.1).float().mean():.1%}")
    show("generated: coverage distance", float(recipe.coverage(y, params).mean()))
    show(
        "generated: class accuracy (circles / squares)",
        f"{(cls == true_cls).float().mean():.1%} ({(cls[~is_sq] == 0).float().mean():.1%} / "
        f"{(cls[is_sq] == 1).float().mean():.1%})",
    )
    show("generated: energy mean", float(np.mean([r[0]["energy"] for r in out["predictions"]])))
    show("converged", f"{converged_share(out['predictions']):.1%}")
    scored = post(
        client,
        "/v1/models/shapes/energy",
        {"x": x.tolist(), "y": y.tolist(), "grad": True},
    )
    norms = np.linalg.norm(np.array(scored["grad_y"]).reshape(len(x), -1), axis=1)
    show(
        "gradient norm at the generated sets, median / min",
        f"{np.median(norms):.3g} / {norms.min():.3g} (tol 0.001)",
    )
    show("stats", _stats(out["stats"]))


RUNS: dict[str, Callable[[TestClient], None]] = {
    "car": car,
    "ellipse": ellipse,
    "mixture": mixture,
    "spiral": spiral,
    "digits": digits,
    "digits-inpaint": digits_inpaint,
    "shapes": shapes,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated model names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = Settings(models_dir=MODELS, backend=BackendChoice.ONNX, log_level="warning")
    with TestClient(create_app(settings)) as client:
        for name in args.only.split(","):
            started = time.monotonic()
            print(f"{name}:")
            RUNS[name](client)
            print(f"  ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
