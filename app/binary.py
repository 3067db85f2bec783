"""The binary transport: msgpack bodies whose tensors travel as raw bytes.

Every /v1 endpoint takes and returns either JSON (the default) or msgpack, chosen by the
request's ``Content-Type`` and ``Accept`` headers (``application/msgpack``, or the older
``application/x-msgpack``). A msgpack body has the same fields as the JSON one; a tensor
field may be nested arrays, as in JSON, or a *tensor map*::

    {"dtype": "float32", "shape": [N, ...], "data": <bin: the values, C order, little-endian>}

so a bulk request costs one memory copy instead of one Python float per number. Responses
send every array as a tensor map (float32, as computed). The server (``app.api``) and the
SDK (``app.client``) both use this module, which imports only numpy and msgpack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack"})
JSON = "application/json"

#: The dtypes a tensor map may name (little-endian on the wire whatever the host).
DTYPES = (
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
)
TENSOR_KEYS = frozenset({"dtype", "shape", "data"})


class TensorError(ValueError):
    """A tensor map that does not describe an array; the message says what is allowed."""


def media_type(header: str | None) -> str:
    """``Content-Type`` without its parameters, lower case."""
    return (header or "").split(";", 1)[0].strip().lower()


def is_msgpack(content_type: str | None) -> bool:
    return media_type(content_type) in MSGPACK_TYPES


def prefers_msgpack(accept: str | None) -> bool:
    """Whether ``Accept`` ranks a msgpack type above JSON (``*/*`` and an absent header
    mean JSON; equal weights go to the one listed first)."""
    if not accept:
        return False
    best_json = best_msgpack = (-1.0, 0)
    for position, item in enumerate(accept.split(",")):
        kind, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        rank = (weight, -position)
        kind = kind.lower()
        if kind in MSGPACK_TYPES and weight > 0:
            best_msgpack = max(best_msgpack, rank)
        elif kind in (JSON, "application/*", "*/*") and weight > 0:
            best_json = max(best_json, rank)
    return best_msgpack > best_json


# --- arrays <-> tensor maps ------------------------------------------------------------
def tensor_map(array: np.ndarray) -> dict[str, Any]:
    """An array as a tensor map (little-endian, C order)."""
    dtype = array.dtype
    if dtype.name not in DTYPES:
        raise TypeError(f"cannot send an array of dtype {dtype.name}")
    little = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<"))
    return {"dtype": dtype.name, "shape": list(array.shape), "data": little.tobytes()}


def from_tensor_map(value: dict[str, Any]) -> np.ndarray:
    """The array a tensor map describes (read-only, no copy of its bytes)."""
    dtype_name, shape, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise TensorError(
            f"is a tensor map of dtype {str(dtype_name)[:40]!r}; allowed: {', '.join(DTYPES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise TensorError("is a tensor map whose shape is not a list of non-negative integers")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TensorError("is a tensor map whose data is not binary (msgpack bin)")
    dtype = np.dtype(dtype_name).newbyteorder("<")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if count * dtype.itemsize != len(data):
        raise TensorError(
            f"is a tensor map of shape {shape} and dtype {dtype_name}, which needs "
            f"{count * dtype.itemsize} bytes of data; it has {len(data)}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _pack_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return tensor_map(value)
    if isinstance(value, np.generic):  # numpy scalars: plain msgpack numbers and booleans
        return value.item()
    raise TypeError(f"cannot encode a {type(value).__name__} as msgpack")


def pack(content: Any) -> bytes:
    """``content`` as msgpack: arrays as tensor maps, numpy scalars as numbers."""
    packed: bytes = msgpack.packb(content, default=_pack_default, use_bin_type=True)
    return packed


def unpack(raw: bytes, tensor: Callable[[dict[str, Any]], Any] = from_tensor_map) -> Any:
    """A msgpack body; every map with exactly the keys dtype, shape and data goes through
    ``tensor`` (an array by default). Raises ValueError on a body that is not msgpack."""

    def hook(value: dict[str, Any]) -> Any:
        return tensor(value) if value.keys() == TENSOR_KEYS else value

    try:
        return msgpack.unpackb(raw, raw=False, object_hook=hook, strict_map_key=True)
    except TensorError:
        raise
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        detail = str(exc) or type(exc).__name__
        raise ValueError(f"the body is not valid msgpack ({detail})") from exc
