"""The one step-size schedule of every optimiser: a cosine decay to a small final share."""

from __future__ import annotations

import numpy as np

from app.registry.backends.base import Array

FINAL_STEP_SHARE = 0.01  # every schedule ends at 1% of its first step


def cosine_decay(t: Array, steps: Array) -> Array:
    """Per row: 1 at step 0, FINAL_STEP_SHARE at step ``steps`` and after (float32).

    Computed in float64 from each row's own (t, steps) and cast once, so a job's step sizes
    do not depend on the rows batched with it."""
    frac = np.minimum(np.divide(t, np.maximum(steps, 1.0), dtype=np.float64), 1.0)
    decay = FINAL_STEP_SHARE + (1 - FINAL_STEP_SHARE) * 0.5 * (1 + np.cos(np.pi * frac))
    return decay.astype(np.float32)
