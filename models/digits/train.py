"""Recipe of the `digits` model: a handwritten-digit classifier written as an energy E(x, y).

The "discrete y" case of LeCun's ICLR 2020 talk: y is one of 10 labels, E(x, y) = -logit_y of
a small MLP, and inference is enumeration, argmin over the 10 labels. Cross-entropy on the
logits is exactly the contrastive loss softmax(-E) with all 9 wrong labels as the
counter-examples, so a classifier trained the usual way is already a well-shaped energy.
Data: scikit-learn's bundled 8x8 digits (1,797 images, pixels 0..16), a fixed stratified
80/20 split (the same one as `digits-inpaint`).

Run it with `ebm train digits`, or `PYTHONPATH=. python models/digits/train.py [--smoke]`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from app.registry.manifest import Card, InferenceDefaults, TensorSpec, Training
from app.training.publish import publish
from app.training.recipe import recipe_main

PIXEL_MAX = 16.0  # load_digits() pixels are counts 0..16 (4x4 blocks of a 32x32 bitmap)
N_CLASSES = 10
HIDDEN, DROPOUT = 128, 0.2
EPOCHS, BATCH = 60, 64
LR, WEIGHT_DECAY = 3e-3, 1e-3
# Labels are integers, so any merge radius below 1 keeps them distinct; k=3 because the
# usual ambiguities (1/7, 3/8/9, 4/9, 5/9) involve two or three labels.
INFERENCE = InferenceDefaults(
    method="enumerate", k=3, num_starts=1, steps=0, step_size=1.0, merge_radius=0.5
)


def split_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed split shared with digits-inpaint: x_train, x_test [N, 8, 8] in 0..16, and
    labels. Stratified 80/20 with random_state 0 whatever the training seed, so every run
    and both recipes hold out the same 360 images."""
    digits = load_digits()
    images, labels = digits.images.astype(np.float32), digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    return x_tr, x_te, y_tr, y_te


class DigitEnergy(nn.Module):
    """E(x, y) = -logit_y(x): x [B, 8, 8] raw pixels 0..16, y [B, 1] a label as a float."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        # A buffer, not a Python constant, so the exported graphs visibly take raw 0..16.
        self.register_buffer("scale", torch.tensor(1.0 / PIXEL_MAX))
        self.net = nn.Sequential(
            nn.Linear(64, HIDDEN),
            nn.SiLU(),
            nn.Dropout(DROPOUT),
            nn.Linear(HIDDEN, N_CLASSES),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x.reshape(-1, 64) * self.scale)  # reshape keeps B dynamic
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.gather(self.logits(x), 1, y.long()).squeeze(1)


@contextmanager
def one_thread() -> Iterator[None]:
    """Train and evaluate on one thread: the matmuls are tiny (batch 64 x 128), and on this
    shared 2-core machine a second thread only waits: 500 steps took 1.0 s of CPU on one
    thread and 15 s on two (13x the wall time)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cosine_lr(step: int, steps: int) -> float:
    warmup = max(steps // 20, 1)
    if step < warmup:
        return LR * (step + 1) / warmup
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))


def train_energy(x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int) -> DigitEnergy:
    """Cross-entropy of softmax(-E) over the 10 labels: the true label's energy is pushed
    down and all 9 others are pushed up, weighted by how low they currently are."""
    gen = torch.Generator().manual_seed(seed)
    model = DigitEnergy()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(x) / BATCH)
    steps, step = epochs * steps_per_epoch, 0
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i : i + BATCH]
            loss = F.cross_entropy(model.logits(x[idx]), y[idx])  # = softmax over -E
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, steps)
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            opt.step()
            step += 1
        if epoch % 20 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:3d}  cross-entropy {loss.item():.4f}")
    return model.eval()


@torch.no_grad()
def all_energies(model: DigitEnergy, x: torch.Tensor) -> torch.Tensor:
    """[N, 10]: E(x, y) for every label, through forward() itself (what the service runs)."""
    n = len(x)
    labels = torch.arange(N_CLASSES, dtype=torch.float32).repeat(n)[:, None]  # [N * 10, 1]
    energy: torch.Tensor = model(x.repeat_interleave(N_CLASSES, dim=0), labels)
    return energy.reshape(n, N_CLASSES)


def evaluate(
    model: DigitEnergy, x: torch.Tensor, y: torch.Tensor, x_tr: torch.Tensor, y_tr: torch.Tensor
) -> dict[str, float | int | str]:
    """Held-out metrics of inference by enumeration: argmin_y E(x, y) over the 10 labels."""
    energy = all_energies(model, x)
    pred = energy.argmin(dim=1)
    correct = pred == y
    e_true = energy.gather(1, y[:, None]).squeeze(1)
    e_wrong = energy.scatter(1, y[:, None], float("inf")).min(dim=1).values
    gap = e_wrong - e_true  # > 0 exactly when the true label has the lowest energy
    top3 = (energy.argsort(dim=1)[:, :3] == y[:, None]).any(dim=1)
    confusion = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.long)
    confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    off = [(int(confusion[t, p]), t, p) for t in range(10) for p in range(10) if t != p]
    errors = sorted((c for c in off if c[0] > 0), reverse=True)
    print("confusion (rows: true label, columns: argmin_y E):")
    for t in range(N_CLASSES):
        print(f"  {t}: " + " ".join(f"{int(c):3d}" for c in confusion[t]))
    metrics: dict[str, float | int | str] = {
        "heldout_images": len(x),
        "heldout_accuracy": float(correct.float().mean()),
        "heldout_errors": int((~correct).sum()),
        "heldout_top3_accuracy": float(top3.float().mean()),
        "heldout_cross_entropy": float(F.cross_entropy(-energy, y)),
        "train_accuracy": float((all_energies(model, x_tr).argmin(dim=1) == y_tr).float().mean()),
    }
    per_class = [float(correct[y == c].float().mean()) for c in range(N_CLASSES)]
    metrics["heldout_accuracy_class_min"] = min(per_class)
    metrics.update({f"heldout_accuracy_class_{c}": a for c, a in enumerate(per_class)})
    metrics["heldout_confusions_true_to_pred"] = (
        ", ".join(f"{t}->{p}: {c}" for c, t, p in errors) or "none"
    )
    metrics.update(
        {
            "heldout_energy_gap_mean": float(gap.mean()),
            "heldout_energy_gap_median": float(gap.median()),
            "heldout_energy_gap_mean_on_errors": float(gap[~correct].mean()) if errors else 0.0,
            "heldout_energy_true_label_mean": float(e_true.mean()),
            "heldout_energy_best_wrong_label_mean": float(e_wrong.mean()),
        }
    )
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}


# --- the recipe's entry point ------------------------------------------------------------
def train(models_dir: Path, *, smoke: bool = False, seed: int = 0) -> dict[str, float | int | str]:
    """Train, evaluate and publish models_dir/digits/1; returns the held-out metrics."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    x_tr_np, x_te_np, y_tr_np, y_te_np = split_digits()
    x_tr, x_te = torch.from_numpy(x_tr_np), torch.from_numpy(x_te_np)
    y_tr, y_te = torch.from_numpy(y_tr_np), torch.from_numpy(y_te_np)
    epochs = 2 if smoke else EPOCHS

    t0, cpu0 = time.perf_counter(), time.process_time()
    with one_thread():
        model = train_energy(x_tr, y_tr, epochs, seed)
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - cpu0
        metrics = evaluate(model, x_te, y_te, x_tr, y_tr)
    print(f"trained in {train_s:.1f} s ({train_cpu_s:.1f} s cpu)")
    for key, value in metrics.items():
        print(f"  {key}: {value}")

    # Probe: 6 held-out images (classes 0..5) against a mix of right and wrong labels. Not 8
    # rows: the tracer merges equal sizes, and a batch of 8 would be tied to the image width.
    rows = [int(np.flatnonzero(y_te_np == c)[0]) for c in range(6)]
    probe_y = torch.tensor([[c if c % 2 == 0 else (c + 3) % 10] for c in range(6)]).float()
    publish(
        model,
        models_dir=models_dir,
        name="digits",
        version=1,
        description="Handwritten digit (8x8, pixels 0..16) -> label 0..9, as an energy "
        "E(x, y) = -logit_y; inference enumerates the 10 labels.",
        x=TensorSpec(
            shape=[8, 8],
            low=[0.0] * 64,
            high=[PIXEL_MAX] * 64,
            description="An 8x8 grayscale digit, row-major, pixel values 0 (white) .. 16 "
            "(black), as in sklearn.datasets.load_digits().images.",
        ),
        y=TensorSpec(
            shape=[1],
            kind="discrete",
            num_classes=N_CLASSES,
            description="The digit 0..9, as a float.",
        ),
        probe_inputs={"x": x_te[rows], "y": probe_y},
        card=Card(
            task="Recognise a handwritten digit from an 8x8 image (sklearn digits).",
            method="Discrete-y energy E(x, y) = -logit_y of an MLP 64-128-10, trained with "
            "cross-entropy (contrastive over all 10 labels); predict by enumerating y.",
            summary=f"Held-out accuracy {metrics['heldout_accuracy']:.1%} "
            f"({metrics['heldout_errors']} errors in {metrics['heldout_images']}), top-3 "
            f"{metrics['heldout_top3_accuracy']:.1%}; the true label is on average "
            f"{metrics['heldout_energy_gap_mean']:.1f} below the best wrong one.",
        ),
        training=Training(
            recipe="models/digits/train.py",
            seed=seed,
            method="cross-entropy over the 10 labels (softmax of -E: contrastive, every "
            "wrong label a counter-example)",
            data="sklearn.datasets.load_digits(): 1797 images; stratified 80/20 split "
            f"(random_state 0): {len(x_tr)} train, {len(x_te)} held out",
            steps=epochs * math.ceil(len(x_tr) / BATCH),
            duration_s=round(train_s, 1),
            cpu_s=round(train_cpu_s, 1),
            torch_version=torch.__version__,
            epochs=epochs,
            batch_size=BATCH,
            network=f"MLP 64-{HIDDEN}-{N_CLASSES}, SiLU, dropout {DROPOUT}, input x/16",
            optimizer=f"AdamW lr {LR} (5% warm-up, cosine), weight decay {WEIGHT_DECAY}",
            threads=1,
            smoke=smoke,
        ),
        metrics=metrics,
        inference=INFERENCE,
    )
    return metrics


if __name__ == "__main__":
    recipe_main(train, __file__, __doc__)
