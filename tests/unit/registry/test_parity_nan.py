"""A NaN anywhere in a parity comparison fails the check (issue 9: a probe whose stored
gradient was NaN passed, because ``max`` over the differences skipped the NaN)."""

from __future__ import annotations

import math

import pytest

from app.errors import BackendError
from app.registry.parity import _raise_if_apart


@pytest.mark.parametrize(
    "diffs",
    [
        {"energy": 0.0, "grad_y": math.nan},
        {"grad_y": math.nan, "energy": 0.0},
        {"energy": math.nan},
        {"energy": 1e-9, "grad_y": 0.5},
    ],
)
def test_a_nan_or_a_large_difference_fails_parity(diffs: dict[str, float]) -> None:
    with pytest.raises(BackendError, match="differs by"):
        _raise_if_apart(diffs, 1e-4, "onnx backend vs export-time probe")


def test_agreement_passes() -> None:
    assert _raise_if_apart({"energy": 1e-7, "grad_y": 0.0}, 1e-4, "x") == {
        "energy": 1e-7,
        "grad_y": 0.0,
    }
