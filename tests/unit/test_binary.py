"""The msgpack transport's encoding: tensor maps round-trip every allowed dtype bit for bit,
and a map that is no tensor says what is wrong and what is allowed."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from app.binary import (
    DTYPES,
    TensorError,
    from_tensor_map,
    pack,
    prefers_msgpack,
    tensor_map,
    unpack,
)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_allowed_dtype_round_trips_bit_for_bit(dtype: str) -> None:
    values = np.arange(-6, 6).reshape(3, 2, 2) % 2 == 0 if dtype == "bool" else None
    array = values if values is not None else (np.arange(12).reshape(3, 2, 2) - 4).astype(dtype)
    back = unpack(pack({"t": array}))["t"]
    assert back.dtype == np.dtype(dtype)
    assert back.shape == (3, 2, 2)
    assert back.tobytes() == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()


def test_data_is_little_endian_and_c_ordered_whatever_the_input() -> None:
    big = np.array([[1.5, -2.0], [3.25, 4.0]], dtype=">f4").T  # big-endian, not C-ordered
    wire = tensor_map(big)
    assert wire["dtype"] == "float32"
    assert wire["shape"] == [2, 2]
    assert wire["data"] == np.ascontiguousarray(big, dtype="<f4").tobytes()
    np.testing.assert_array_equal(from_tensor_map(wire), big)


def test_numpy_scalars_become_plain_numbers() -> None:
    raw = pack({"n": np.int64(3), "e": np.float32(0.5), "ok": np.bool_(True)})
    assert msgpack.unpackb(raw) == {"n": 3, "e": 0.5, "ok": True}


@pytest.mark.parametrize(
    ("tensor", "says"),
    [
        ({"dtype": "complex64", "shape": [1], "data": b"12345678"}, "allowed: float16"),
        ({"dtype": "float32", "shape": [2, 2], "data": b"1234"}, "needs 16 bytes of data"),
        ({"dtype": "float32", "shape": [-1], "data": b""}, "non-negative integers"),
        ({"dtype": "float32", "shape": [True], "data": b"1234"}, "non-negative integers"),
        ({"dtype": "float32", "shape": [1], "data": "1234"}, "not binary"),
    ],
)
def test_a_map_that_is_no_tensor_says_why(tensor: dict[str, object], says: str) -> None:
    with pytest.raises(TensorError, match=says):
        unpack(msgpack.packb({"y": tensor}, use_bin_type=True))


def test_a_body_that_is_not_msgpack_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not valid msgpack"):
        unpack(b"\xc1")
    with pytest.raises(ValueError, match="not valid msgpack"):
        unpack(pack({"a": 1}) + b"\x00")  # trailing bytes


def test_maps_with_other_keys_stay_maps() -> None:
    body = {"stats": {"dtype": "float32", "shape": [1]}, "nested": [{"a": 1}]}
    assert unpack(pack(body)) == body


@pytest.mark.parametrize(
    ("accept", "msgpack_wins"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        ("application/msgpack", True),
        ("application/x-msgpack", True),
        ("application/msgpack, application/json", True),
        ("application/json, application/msgpack", False),
        ("application/json;q=0.5, application/msgpack", True),
        ("application/msgpack;q=0", False),
        ("application/msgpack;q=0.9, */*;q=0.1", True),
    ],
)
def test_accept_picks_the_higher_ranked_encoding(accept: str | None, msgpack_wins: bool) -> None:
    assert prefers_msgpack(accept) is msgpack_wins
