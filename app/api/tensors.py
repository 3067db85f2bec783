"""Turn request lists into float32 batches, checked against the model's manifest.

Every refusal says what was wrong and what is allowed, e.g.
``y has shape [3, 5]; model 'car' expects [N, 2]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from app.api.body import ParsedTensor
from app.errors import InvalidInput, PayloadTooLarge
from app.registry.backends.base import Array
from app.registry.manifest import Manifest, TensorSpec


def _expected(spec: TensorSpec) -> str:
    return "[" + ", ".join(["N", *map(str, spec.shape)]) + "]"


_TYPE_NAMES = {bool: "booleans", str: "strings", type(None): "nulls", dict: "objects"}


def _leaf_types(data: Any, depth: int) -> set[type]:
    """Types of the values ``depth`` levels down, in C-speed passes (no per-element Python).

    numpy would silently read ``true`` as 1 and the string "1.5" as a number, so leaves are
    checked before conversion. Raises TypeError when a level is not a list.
    """
    if not isinstance(data, list):
        raise TypeError(_names({type(data)}))
    level: list[Any] = data
    for _ in range(depth - 1):
        kinds = set(map(type, level))
        if kinds - {list}:  # e.g. an object where a row belongs: iterating it would read keys
            raise TypeError(_names(kinds - {list}))
        level = list(chain.from_iterable(level))
    return set(map(type, level))


def _names(kinds: set[type]) -> str:
    return ", ".join(
        sorted(_TYPE_NAMES.get(k, "numbers" if k in (int, float) else k.__name__) for k in kinds)
    )


def to_batch(name: str, data: Any, spec: TensorSpec, model: str) -> Array:
    """``data`` as a float32 array ``[N, *spec.shape]`` of finite numbers, N >= 1."""
    if isinstance(data, ParsedTensor):
        batch = _from_parsed(name, data, spec, model)
    else:
        batch = _from_lists(name, data, spec, model)
    if tuple(batch.shape[1:]) != tuple(spec.shape):
        shape = "[" + ", ".join(map(str, batch.shape)) + "]"
        raise InvalidInput(f"{name} has shape {shape}; model '{model}' expects {_expected(spec)}")
    if not np.isfinite(batch).all():
        bad_row = int(np.argwhere(~np.isfinite(batch.reshape(len(batch), -1)))[0][0])
        raise InvalidInput(
            f"{name} row {bad_row} holds NaN, Infinity or a value beyond float32 range; "
            "only finite numbers are allowed"
        )
    if spec.kind == "discrete":
        _check_labels(name, batch, spec)
    return batch


def _from_parsed(name: str, data: ParsedTensor, spec: TensorSpec, model: str) -> Array:
    """The array the body parser process made (large bodies); its problem, if any, is
    reported against the model's expected shape."""
    expected = _expected(spec)
    if data.array is None:
        raise InvalidInput(f"{name} {data.problem}; model '{model}' expects {expected}")
    if data.array.dtype != np.float32:
        raise InvalidInput(f"{name} must contain only numbers, got booleans")
    if data.array.ndim != 1 + len(spec.shape):
        shape = "[" + ", ".join(map(str, data.array.shape)) + "]"
        raise InvalidInput(f"{name} has shape {shape}; model '{model}' expects {expected}")
    return data.array


def _from_lists(name: str, data: Any, spec: TensorSpec, model: str) -> Array:
    # (the messages are built only when refusing: this runs for every input of every request)
    try:
        leaves = _leaf_types(data, 1 + len(spec.shape))
    except TypeError as found:
        found_where = f"found {found} where lists belong"
        raise InvalidInput(f"{_not_nested(name, spec, model)}; {found_where}") from None
    if not leaves:
        expected = _expected(spec)
        raise InvalidInput(f"{name} is empty; model '{model}' expects {expected} with N >= 1")
    if list in leaves:
        array_shape = np.shape(data) if _is_regular(data) else None
        if array_shape is not None:
            shape = "[" + ", ".join(map(str, array_shape)) + "]"
            expected = _expected(spec)
            raise InvalidInput(f"{name} has shape {shape}; model '{model}' expects {expected}")
        raise InvalidInput(_not_nested(name, spec, model))
    wrong = leaves - _NUMBERS
    if wrong:
        kinds = ", ".join(sorted(_TYPE_NAMES.get(t, t.__name__) for t in wrong))
        raise InvalidInput(f"{name} must contain only numbers, got {kinds}")
    try:
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused by the caller
            return np.array(data, dtype=np.float32)
    except OverflowError:  # an integer beyond any float (JSON parsers make it a float)
        raise InvalidInput(
            f"{name} holds a value beyond float32 range; only finite numbers are allowed"
        ) from None
    except ValueError:
        raise InvalidInput(
            f"{name} is ragged: rows must all have the same length; "
            f"model '{model}' expects {_expected(spec)}"
        ) from None


_NUMBERS = frozenset({float, int})


def _not_nested(name: str, spec: TensorSpec, model: str) -> str:
    return f"{name} must be nested lists of shape {_expected(spec)} for model '{model}'"


def _is_regular(data: Any) -> bool:
    try:
        np.array(data, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        return False
    return True


def _check_labels(name: str, batch: Array, spec: TensorSpec) -> None:
    assert spec.num_classes is not None
    if not ((batch == np.round(batch)) & (batch >= 0) & (batch < spec.num_classes)).all():
        raise InvalidInput(
            f"{name} is a discrete label: values must be integers 0..{spec.num_classes - 1}"
        )


def check_row_limit(model: str, rows: int, max_rows: int) -> None:
    """Refuse (413) a request of more rows than the model accepts."""
    if rows > max_rows:
        raise PayloadTooLarge(
            f"request has {rows} rows; model '{model}' accepts at most {max_rows} per request"
        )


def pair_inputs(
    manifest: Manifest,
    given: dict[str, Any],
    max_rows: int,
    names: Sequence[str] | None = None,
) -> dict[str, Array]:
    """Check presence, shapes, row counts and limits of the inputs ``names`` (default all
    of the energy's: x?, y, z?); returns the float32 batches."""
    model = manifest.name
    required = list(names) if names is not None else manifest.input_names
    for name in ("x", "z"):
        if given.get(name) is not None and name not in required:
            what = "unconditional: omit x" if name == "x" else "has no latent variable: omit z"
            raise InvalidInput(f"model '{model}' is {what}")
    missing = [n for n in required if given.get(n) is None]
    if missing:
        raise InvalidInput(f"model '{model}' needs {', '.join(missing)}; it takes {required}")
    check_row_limit(model, max(row_count(given[n]) for n in required), max_rows)
    batches = {n: to_batch(n, given[n], manifest.spec(n), model) for n in required}
    counts = {n: len(b) for n, b in batches.items()}
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{n} has {c}" for n, c in counts.items())
        raise InvalidInput(f"inputs must pair row by row, but {detail} rows")
    return batches


def row_count(data: Any) -> int:
    """Rows of a request tensor (0 when it is not a list), before any conversion."""
    if isinstance(data, ParsedTensor):
        return data.rows
    return len(data) if isinstance(data, list) else 0


def to_mask(name: str, data: Any, spec: TensorSpec, model: str) -> np.ndarray:
    """``data`` as a boolean array ``[N, *spec.shape]`` (true/false only, no numbers)."""
    expected = _expected(spec)
    refusal = InvalidInput(
        f"{name} must be nested lists of true/false of shape {expected} for model '{model}'"
    )
    if isinstance(data, ParsedTensor):
        if data.array is None or data.array.dtype != np.bool_:
            raise refusal
        mask = data.array
    else:
        try:
            leaves = _leaf_types(data, 1 + len(spec.shape))
        except TypeError:
            leaves = {list}
        if leaves != {bool}:
            raise refusal
        mask = np.array(data, dtype=bool)
    if tuple(mask.shape[1:]) != tuple(spec.shape):
        shape = "[" + ", ".join(map(str, mask.shape)) + "]"
        raise InvalidInput(f"{name} has shape {shape}; model '{model}' expects {expected}")
    return mask


def known_components(
    manifest: Manifest, y_known: Any, y_mask: Any, rows: int | None
) -> tuple[Array | None, np.ndarray | None]:
    """Fill-in-the-blanks inputs, flattened ``[N, Dy]``: values and the observed mask."""
    model, spec = manifest.name, manifest.y
    if y_known is None and y_mask is None:
        return None, None
    if y_known is None or y_mask is None:
        raise InvalidInput("y_known and y_mask go together: give both or neither")
    if spec.kind == "discrete":
        raise InvalidInput(
            f"model '{model}' has a discrete y (one label per row): there is nothing to fill in"
        )
    known = to_batch("y_known", y_known, spec, model)
    mask = to_mask("y_mask", y_mask, spec, model)
    if len(mask) != len(known) or (rows is not None and len(known) != rows):
        raise InvalidInput(
            f"y_known has {len(known)} rows and y_mask {len(mask)}; "
            f"both need one row per x ({rows if rows is not None else len(known)})"
        )
    known, mask = known.reshape(len(known), -1), mask.reshape(len(mask), -1)
    require_within("y_known", known, spec, model, mask)
    return known, mask


def require_within(
    name: str, values: Array, spec: TensorSpec, model: str, selected: np.ndarray | None = None
) -> None:
    """Refuse (422) the first component of ``values [R, ...]`` (where ``selected``) outside
    the spec's bounds, naming its row, component and the bounds."""
    flat = values.reshape(len(values), -1)
    low = np.asarray(spec.low if spec.low is not None else -np.inf, np.float32)
    high = np.asarray(spec.high if spec.high is not None else np.inf, np.float32)
    outside = (flat < low) | (flat > high)
    if selected is not None:
        outside &= selected
    if not outside.any():
        return
    row, col = (int(i) for i in np.argwhere(outside)[0])
    label = f" ({spec.names[col]})" if spec.names and col < len(spec.names) else ""
    raise InvalidInput(
        f"{name} row {row} component {col}{label} is {float(flat[row, col]):g}, outside the "
        f"bounds [{float(np.broadcast_to(low, flat.shape[1:])[col]):g}, "
        f"{float(np.broadcast_to(high, flat.shape[1:])[col]):g}] of model '{model}'"
    )


def require_finite(manifest: Manifest, what: str, values: Array | Sequence[float]) -> None:
    """Refuse (422) a result that is not finite in float32: an energy or gradient that
    overflowed because the inputs lie far outside the range the model was trained on. JSON
    has no number for it (it would leave as null) and no caller can use it."""
    if np.isfinite(values).all():  # the usual case, in one pass
        return
    flat = np.asarray(values, np.float64).reshape(len(values), -1)
    bad = np.flatnonzero(~np.isfinite(flat).all(axis=1))
    if not len(bad):
        return
    rows = ", ".join(str(i) for i in bad[:5]) + (
        f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    )
    spec = manifest.y
    bounds = (
        f"; y is meant to lie within [{min(spec.low)}, {max(spec.high)}]"
        if spec.low is not None and spec.high is not None
        else ""
    )
    raise InvalidInput(
        f"the {what} is not finite in float32 for row {rows}: the inputs are too far outside "
        f"the range model '{manifest.name}' was trained on{bounds}"
    )
