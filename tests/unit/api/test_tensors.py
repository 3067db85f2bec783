"""Request tensors are checked against the manifest; each refusal says what is allowed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.api.tensors import pair_inputs, to_batch
from app.errors import InvalidInput, PayloadTooLarge
from app.registry.manifest import TensorSpec

SPEC = TensorSpec(shape=[2])


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ([[1, 2], [3]], "ragged"),
        ([[1, 2], 3], "must be nested lists of shape [N, 2]"),
        ([[[1], [2]]], "has shape [1, 2, 1]; model 'm' expects [N, 2]"),
        ([[1, True]], "only numbers, got booleans"),
        ([[0.5, {"a": 1}]], "got objects"),
        ([[1, 2, 3]], "has shape [1, 3]; model 'm' expects [N, 2]"),
        ([1, 2], "must be nested lists of shape [N, 2]"),
        ("abc", "must be nested lists of shape [N, 2]"),
        ([], "is empty"),
        ([["1", 2]], "only numbers, got strings"),
        ([[True, False]], "only numbers, got booleans"),
        ([[None, 1]], "only numbers, got nulls"),
        ([[1.0, float("nan")]], "row 0 holds NaN"),
        ([[0, 0], [1.0, float("inf")]], "row 1 holds NaN, Infinity"),
        ([[1e39, 0]], "beyond float32 range"),
    ],
)
def test_bad_tensor_is_refused_with_a_reason(data: Any, fragment: str) -> None:
    with pytest.raises(InvalidInput) as info:
        to_batch("y", data, SPEC, "m")
    assert fragment in info.value.message
    assert info.value.status_code == 422


def test_integers_and_floats_become_float32() -> None:
    batch = to_batch("y", [[1, 2.5], [-3, 4]], SPEC, "m")
    assert batch.dtype == np.float32
    assert batch.tolist() == [[1.0, 2.5], [-3.0, 4.0]]


def test_discrete_labels_must_be_integers_in_range() -> None:
    spec = TensorSpec(shape=[1], kind="discrete", num_classes=3)
    assert to_batch("y", [[0], [2]], spec, "m").tolist() == [[0.0], [2.0]]
    for bad in ([[3]], [[0.5]], [[-1]]):
        with pytest.raises(InvalidInput, match=r"integers 0\.\.2"):
            to_batch("y", bad, spec, "m")


class _Manifest:
    """Just enough of a Manifest for pair_inputs."""

    def __init__(self, names: list[str]) -> None:
        self.name = "m"
        self.input_names = names

    def spec(self, name: str) -> TensorSpec:
        return SPEC


def _pair(names: list[str], given: dict[str, Any], max_rows: int = 10) -> dict[str, Any]:
    return pair_inputs(_Manifest(names), given, max_rows)  # type: ignore[arg-type]


def test_pairs_are_checked_for_presence_and_row_counts() -> None:
    out = _pair(["x", "y"], {"x": [[0, 0]], "y": [[1, 1]]})
    assert set(out) == {"x", "y"}
    with pytest.raises(InvalidInput, match="needs x; it takes"):
        _pair(["x", "y"], {"y": [[1, 1]]})
    with pytest.raises(InvalidInput, match="x has 2, y has 1 rows"):
        _pair(["x", "y"], {"x": [[0, 0], [0, 0]], "y": [[1, 1]]})
    with pytest.raises(InvalidInput, match="unconditional: omit x"):
        _pair(["y"], {"x": [[0, 0]], "y": [[1, 1]]})
    with pytest.raises(InvalidInput, match="no latent variable: omit z"):
        _pair(["x", "y"], {"x": [[0, 0]], "y": [[1, 1]], "z": [[0, 0]]})


def test_too_many_rows_is_413_before_any_conversion() -> None:
    with pytest.raises(PayloadTooLarge, match="11 rows; model 'm' accepts at most 10"):
        _pair(["x", "y"], {"x": [["not a number"]] * 11, "y": [[1, 1]] * 11})
