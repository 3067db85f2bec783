"""Properties of ``to_batch``: request lists in, float32 batches out, or a 422.

It accepts exactly the regular nested lists ``[N, *shape]`` (N >= 1) of numbers (not
booleans) that are finite in float32, and returns each value rounded to float32 in place;
everything else is refused with ``InvalidInput``, never another exception.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from app.api.tensors import to_batch
from app.errors import InvalidInput
from app.registry.manifest import TensorSpec

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=150)
FLOAT32_MAX = float(np.finfo(np.float32).max)

# What a JSON parser hands over: orjson gives integers within 64 bits, floats within double.
INTEGER = st.integers(-(2**63), 2**64 - 1)
NUMBER = st.one_of(
    st.integers(-1000, 1000),
    INTEGER,
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(-FLOAT32_MAX, FLOAT32_MAX),
)
SHAPE = st.lists(st.integers(1, 3), min_size=1, max_size=3)


def finite_in_float32(value: Any) -> bool:
    try:
        wide = float(value)
    except OverflowError:
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(wide)))


def regular(data: Any, shape: list[int]) -> bool:
    """``data`` is nested lists of exactly ``shape`` with finite float32 numbers as leaves."""
    if not shape:
        return type(data) in (int, float) and finite_in_float32(data)
    return (
        isinstance(data, list)
        and len(data) == shape[0]
        and all(regular(item, shape[1:]) for item in data)
    )


def acceptable(data: Any, spec: TensorSpec) -> bool:
    """The contract, written plainly."""
    return isinstance(data, list) and len(data) >= 1 and all(regular(r, spec.shape) for r in data)


def expected_batch(data: Any) -> Any:
    """Each leaf rounded to float32 on its own."""
    if isinstance(data, list):
        return np.array([expected_batch(item) for item in data], np.float32)
    return np.float32(float(data))


@st.composite
def tensors(draw: st.DrawFn, shape: list[int], leaves: st.SearchStrategy[Any] = NUMBER) -> Any:
    """A regular nested list of ``[N, *shape]``."""

    def build(dims: list[int]) -> Any:
        if not dims:
            return draw(leaves)
        return [build(dims[1:]) for _ in range(dims[0])]

    return build([draw(st.integers(1, 4)), *shape])


def refuse(data: Any, spec: TensorSpec) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        to_batch("y", data, spec, "m")
    assert info.value.status_code == 422
    assert info.value.message
    return info.value


@SETTINGS
@given(data=st.data(), shape=SHAPE)
def test_a_regular_tensor_of_numbers_comes_back_as_float32_in_place(
    data: st.DataObject, shape: list[int]
) -> None:
    rows = data.draw(tensors(shape))
    batch = to_batch("y", rows, TensorSpec(shape=shape), "m")
    expected = expected_batch(rows)
    assert batch.dtype == np.float32
    assert batch.shape == (len(rows), *shape)
    assert batch.tobytes() == expected.tobytes()  # bit for bit: -0.0 stays -0.0


BAD_LEAF = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e39, -1e39, 2.0**128, -(2**200)]),
)


@st.composite
def broken(draw: st.DrawFn, shape: list[int]) -> Any:
    """A regular tensor with one thing wrong: a bad leaf, a row too short or too long, a leaf
    wrapped in a list, a row unwrapped, or nothing at all."""
    rows = draw(tensors(shape))
    how = draw(st.sampled_from(["leaf", "short", "long", "wrap", "unwrap", "empty", "depth"]))
    if how == "empty":
        return []
    if how == "depth":
        return draw(st.sampled_from([rows[0], [rows], draw(NUMBER)]))
    # Walk down to a random list at a random depth.
    depth = draw(st.integers(0, len(shape)))
    parent: list[Any] = rows
    for _ in range(depth):
        parent = parent[draw(st.integers(0, len(parent) - 1))]
    i = draw(st.integers(0, len(parent) - 1))
    at_leaves = depth == len(shape)
    if how == "leaf":
        while not at_leaves:  # go on down to a leaf
            parent, depth = parent[i], depth + 1
            at_leaves = depth == len(shape)
            i = draw(st.integers(0, len(parent) - 1))
        parent[i] = draw(BAD_LEAF)
    elif how == "short":
        if depth == 0:  # the batch axis takes any N >= 1: shorten a row instead
            if len(shape) == 0:
                return []
            parent = parent[i]
            i = draw(st.integers(0, len(parent) - 1))
        del parent[i]
    elif how == "long":
        if depth == 0:
            parent = parent[i]
            i = draw(st.integers(0, len(parent) - 1))
        parent.append(parent[i])
    elif how == "wrap":
        parent[i] = [parent[i]]
    else:  # unwrap: a list where a number belongs, or a number where a list belongs
        parent[i] = parent[i][0] if isinstance(parent[i], list) else [parent[i], parent[i]]
    return rows


@SETTINGS
@given(data=st.data(), shape=SHAPE)
def test_a_tensor_with_one_thing_wrong_is_invalid_input(
    data: st.DataObject, shape: list[int]
) -> None:
    rows = data.draw(broken(shape))
    spec = TensorSpec(shape=shape)
    assert not acceptable(rows, spec)  # the mutation did break it
    refuse(rows, spec)


JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    INTEGER,
    st.floats(),  # NaN and infinities too: a Python caller can send them
    st.text(max_size=4),
)
JSON = st.recursive(
    JSON_SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=12,
)


@SETTINGS
@given(source=st.data(), shape=SHAPE)
def test_anything_is_a_float32_batch_exactly_when_the_contract_says_else_invalid_input(
    source: st.DataObject, shape: list[int]
) -> None:
    data = source.draw(
        st.one_of(
            JSON,  # anything at all
            tensors(shape),  # valid
            tensors(shape, st.one_of(NUMBER, JSON_SCALAR)),  # valid but for some leaves
            tensors(shape, st.one_of(NUMBER, JSON)),  # and some of those lists
            SHAPE.flatmap(tensors),  # regular, maybe of another shape
        )
    )
    spec = TensorSpec(shape=shape)
    event("accepted" if acceptable(data, spec) else "refused")
    if acceptable(data, spec):
        batch = to_batch("y", data, spec, "m")
        assert batch.tobytes() == expected_batch(data).tobytes()
    else:
        refuse(data, spec)


@SETTINGS
@given(data=st.data(), classes=st.integers(2, 6))
def test_a_discrete_label_is_accepted_exactly_when_it_is_an_integer_in_range(
    data: st.DataObject, classes: int
) -> None:
    spec = TensorSpec(shape=[1], kind="discrete", num_classes=classes)
    label = st.one_of(st.integers(-2, classes + 1), st.integers(-2, classes + 1).map(float))
    rows = data.draw(tensors([1], st.one_of(label, st.floats(-1, classes + 1))))
    # Checked as float32, the dtype of every input: 1e-60 is the label 0, 0.5 is no label.
    values = [float(np.float32(v)) for (v,) in rows]
    if all(v == int(v) and 0 <= v < classes for v in values):
        assert to_batch("y", rows, spec, "m").tolist() == [[v] for v in values]
    else:
        refuse(rows, spec)


@settings(SETTINGS, max_examples=30)
@given(
    data=st.data(),
    shape=SHAPE,
    given_shape=st.one_of(st.none(), SHAPE),
    huge=st.sampled_from([2**1024, 10**400, 3**5000]),
)
def test_an_integer_beyond_any_float_is_invalid_input(
    data: st.DataObject, shape: list[int], given_shape: list[int] | None, huge: int
) -> None:
    """A Python caller (or a JSON parser that keeps big integers) can hand over an integer
    that no float holds: a 422 like any other value beyond float32, not an OverflowError,
    whether the rest of the tensor has the model's shape or another one."""
    rows = data.draw(tensors(shape if given_shape is None else given_shape))
    leaf: list[Any] = rows
    while isinstance(leaf[0], list):
        leaf = leaf[0]
    leaf[0] = data.draw(st.sampled_from([huge, -huge]))
    refuse(rows, TensorSpec(shape=shape))
