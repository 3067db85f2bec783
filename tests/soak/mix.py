"""The soak's request mix: weighted, pre-encoded POST bodies over several shipped models.

Every body is built once from a fixed seed (inputs inside each model's manifest bounds,
seeded searches and samples), so a soak run sends the same requests in the same order
for a given client seed. Each kind of request has a few variants (different rows and
seeds) so that not every request is byte-identical.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

#: The three operations the soak reports latencies for.
OPERATIONS = ("energy", "predict", "sample")
VARIANTS = 4


@dataclass(frozen=True)
class Kind:
    """One kind of request: ``weight`` draws in the mix, ``bodies`` its encoded variants."""

    name: str
    operation: str
    model: str
    weight: int
    bodies: tuple[bytes, ...]

    @property
    def path(self) -> str:
        return f"/v1/models/{self.model}/{self.operation}"


def _rows(rng: np.random.Generator, low: list[float], high: list[float], n: int) -> Any:
    return rng.uniform(low, high, size=(n, len(low))).round(4).tolist()


def _car_x(rng: np.random.Generator, n: int) -> Any:
    return _rows(rng, [-1.0, 8.0, 6.0], [1.0, 30.0, 12.0], n)


def _car_y(rng: np.random.Generator, n: int) -> Any:
    return _rows(rng, [9.0, -4.5], [27.0, 4.5], n)


def _plane(rng: np.random.Generator, n: int, bound: float) -> Any:
    return _rows(rng, [-bound, -bound], [bound, bound], n)


def _shape_set(rng: np.random.Generator, n: int) -> Any:
    """``n`` sets of 16 points on circles (a shapes demonstration)."""
    angles = np.sort(rng.uniform(0.0, 2 * np.pi, size=(n, 16)), axis=1)
    radius = rng.uniform(0.8, 2.0, size=(n, 1))
    points = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=-1)
    return points.round(4).tolist()


def _images(rng: np.random.Generator, n: int, rows: int) -> Any:
    return rng.integers(0, 17, size=(n, rows, 8)).astype(float).tolist()


def _variants(build: Any, seed: int) -> tuple[bytes, ...]:
    rng = np.random.default_rng(seed)
    return tuple(orjson.dumps(build(rng, i)) for i in range(VARIANTS))


def build_mix(seed: int = 0) -> list[Kind]:
    """The weighted catalogue: about 60% energy, 25% predict, 15% sample by draw count.

    Sizes are moderate: a small /energy is one to four pairs, a medium one 256 (car) or 64
    with gradients; /predict and /sample use few starts/chains and tens of steps, so each
    computes in milliseconds to tens of milliseconds on one core.
    """
    s = seed * 1000
    kinds = [
        # --- /energy: small and medium batches, plain, with gradients, free energies.
        Kind(
            "energy car 1-4",
            "energy",
            "car",
            30,
            _variants(lambda r, i: {"x": _car_x(r, 1 + i % 4), "y": _car_y(r, 1 + i % 4)}, s + 1),
        ),
        Kind(
            "energy car 256",
            "energy",
            "car",
            8,
            _variants(lambda r, i: {"x": _car_x(r, 256), "y": _car_y(r, 256)}, s + 2),
        ),
        Kind(
            "energy spiral 64 grad",
            "energy",
            "spiral",
            8,
            _variants(lambda r, i: {"y": _plane(r, 64, 2.5), "grad": True}, s + 3),
        ),
        Kind(
            "energy mixture 16 marginal",
            "energy",
            "mixture",
            5,
            _variants(lambda r, i: {"y": _plane(r, 16, 3.5), "free_energy": "marginal"}, s + 4),
        ),
        Kind(
            "energy digits 8",
            "energy",
            "digits",
            5,
            _variants(
                lambda r, i: {"x": _images(r, 8, 8), "y": r.integers(0, 10, (8, 1)).tolist()},
                s + 5,
            ),
        ),
        Kind(
            "energy shapes 4",
            "energy",
            "shapes",
            4,
            _variants(lambda r, i: {"x": _shape_set(r, 4), "y": _shape_set(r, 4)}, s + 6),
        ),
        # --- /predict: small k, modest starts and steps, seeded.
        Kind(
            "predict car",
            "predict",
            "car",
            14,
            _variants(
                lambda r, i: {
                    "x": _car_x(r, 1 + i % 2),
                    "k": 2,
                    "num_starts": 32,
                    "steps": 100,
                    "seed": seed + i,
                },
                s + 7,
            ),
        ),
        Kind(
            "predict ellipse fill-in",
            "predict",
            "ellipse",
            6,
            _variants(
                lambda r, i: {
                    "y_known": [[round(float(r.uniform(-1.2, 1.2)), 3), 0.0]],
                    "y_mask": [[True, False]],
                    "k": 2,
                    "num_starts": 32,
                    "steps": 100,
                    "seed": seed + i,
                },
                s + 8,
            ),
        ),
        Kind(
            "predict digits",
            "predict",
            "digits",
            5,
            _variants(lambda r, i: {"x": _images(r, 4, 8), "k": 3}, s + 9),
        ),
        # --- /sample: Langevin chains and prior-and-decode, seeded.
        Kind(
            "sample mixture langevin",
            "sample",
            "mixture",
            6,
            _variants(lambda r, i: {"n": 16, "steps": 100, "seed": seed + i}, s + 10),
        ),
        Kind(
            "sample spiral langevin",
            "sample",
            "spiral",
            4,
            _variants(lambda r, i: {"n": 8, "steps": 50, "seed": seed + i}, s + 11),
        ),
        Kind(
            "sample ellipse prior",
            "sample",
            "ellipse",
            3,
            _variants(lambda r, i: {"n": 16, "seed": seed + i}, s + 12),
        ),
        Kind(
            "sample digits-inpaint prior",
            "sample",
            "digits-inpaint",
            2,
            _variants(lambda r, i: {"x": _images(r, 2, 4), "n": 4, "seed": seed + i}, s + 13),
        ),
    ]
    return kinds


class Picker:
    """A client's seeded sequence of (kind, variant index) draws from the mix."""

    def __init__(self, kinds: list[Kind], seed: int) -> None:
        self._kinds = kinds
        self._weights = [k.weight for k in kinds]
        self._rng = random.Random(seed)

    def next(self) -> tuple[Kind, int]:
        kind = self._rng.choices(self._kinds, self._weights)[0]
        return kind, self._rng.randrange(len(kind.bodies))
