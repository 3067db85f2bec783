"""Properties of the msgpack codec: whatever a job or an outcome holds comes back.

Tensors travel as raw little-endian bytes, so every float, integer and boolean array comes
back with the same dtype, shape and bits (NaN payloads, -0.0 and subnormals included),
whatever its byte order, memory layout or size; an envelope's fields come back equal; and
bytes that are not an envelope are a ValueError, never another exception.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.dispatch.wire import (
    Envelope,
    decode_envelope,
    decode_outcome,
    encode_envelope,
    encode_outcome,
    pack_tensor,
    unpack_tensor,
)
from app.errors import EBMError
from app.inference.params import SearchParams
from app.inference.predict import PredictOutcome
from app.inference.sampling import SampleJob, SampleOutcome, SampleParams
from app.inference.scoring import ScoreJob
from app.inference.search import SearchJob
from app.registry.backends.base import EnergyOutput

SETTINGS = settings(derandomize=True, database=None, deadline=None, max_examples=60)

WIRE_DTYPES = [
    np.dtype(f"{order}{code}")
    for code in ("f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
    for order in "<>"
] + [np.dtype("?")]
SHAPES = st.lists(st.integers(0, 4), min_size=0, max_size=4)  # 0-d and 0-size included
ANY_WIRE_DTYPE = st.sampled_from(WIRE_DTYPES)


@st.composite
def tensors(
    draw: st.DrawFn,
    dtypes: st.SearchStrategy[np.dtype[Any]] = ANY_WIRE_DTYPE,
    shapes: st.SearchStrategy[list[int]] = SHAPES,
) -> np.ndarray:
    """Arbitrary bits of a wire dtype, in C order, Fortran order or a strided view."""
    dtype, shape = draw(dtypes), draw(shapes)
    size = math.prod(shape)
    if dtype.kind == "b":
        flat = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), bool)
    else:
        raw = draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
        flat = np.frombuffer(raw, dtype).copy()
    array = flat.reshape(shape)
    layout = draw(st.sampled_from(["c", "fortran", "strided", "transposed"]))
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "transposed":
        array = array.T
    elif layout == "strided" and array.ndim:
        doubled = np.repeat(array, 2, axis=0)  # every other row: a non-contiguous view
        array = doubled[::2]
    return array


def same_bits(back: np.ndarray, original: np.ndarray) -> bool:
    """Equal values bit for bit, in native byte order."""
    native = original.astype(original.dtype.newbyteorder("="))
    return (
        back.dtype == native.dtype
        and back.shape == native.shape
        and back.tobytes() == native.tobytes()
    )


def through_msgpack(obj: Any) -> Any:
    return msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False)


@SETTINGS
@given(array=tensors())
def test_a_tensor_comes_back_bit_for_bit(array: np.ndarray) -> None:
    packed = pack_tensor(array)
    assert packed["shape"] == list(array.shape)
    assert len(packed["data"]) == array.size * array.dtype.itemsize
    # on the wire: little-endian bytes in C order, whatever the array's own layout
    assert packed["data"] == np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
    back = unpack_tensor(through_msgpack(packed))
    assert same_bits(back, array)
    assert back.flags.writeable  # a backend may write into its inputs


@SETTINGS
@given(
    kind=st.sampled_from(["c8", "c16", "O", "U3", "S2", "M8[s]", "m8[s]", "V4"]),
    shape=SHAPES,
)
def test_a_tensor_of_another_kind_is_refused_with_a_value_error(
    kind: str, shape: list[int]
) -> None:
    dtype = np.dtype(kind)
    data = b"\0" * (math.prod(shape) * dtype.itemsize)
    with pytest.raises(ValueError, match="cannot travel"):
        unpack_tensor({"dtype": dtype.str, "shape": shape, "data": data})


# --- envelopes --------------------------------------------------------------------------
ROWS = st.lists(st.integers(0, 3), min_size=1, max_size=3)  # a job's tensors: [N, ...]
FLOAT32 = tensors(st.just(np.dtype("<f4")), ROWS)
NAMES = st.text(min_size=1, max_size=20)
FINITE = st.floats(allow_nan=False, allow_infinity=False)
SEED = st.integers(0, 2**63 - 1)
DEADLINE = st.one_of(FINITE, st.just(math.inf))


@st.composite
def search_params(draw: st.DrawFn) -> SearchParams:
    return SearchParams(
        method=draw(st.sampled_from(["gd", "langevin", "dfo", "enumerate"])),
        k=draw(st.integers(1, 1000)),
        num_starts=draw(st.integers(1, 10_000)),
        steps=draw(st.integers(0, 10_000)),
        step_size=draw(FINITE),
        noise_scale=draw(FINITE),
        temperature=draw(FINITE),
        merge_radius=draw(FINITE),
        tol=draw(FINITE),
        seed=draw(SEED),
        seeded=draw(st.booleans()),
        return_trajectory=draw(st.booleans()),
        refine_step_size=draw(FINITE),
    )


@st.composite
def sample_params(draw: st.DrawFn) -> SampleParams:
    return SampleParams(
        n=draw(st.integers(1, 10_000)),
        chains=draw(st.integers(1, 1000)),
        steps=draw(st.integers(0, 10_000)),
        thin=draw(st.integers(1, 100)),
        step_size=draw(FINITE),
        temperature=draw(FINITE),
        seed=draw(SEED),
        seeded=draw(st.booleans()),
        return_trajectory=draw(st.booleans()),
    )


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


MASKS = tensors(st.just(np.dtype("?")), ROWS)
JOBS = st.one_of(
    st.builds(ScoreJob, st.dictionaries(st.sampled_from(["x", "y", "z"]), FLOAT32), st.booleans()),
    st.builds(
        SearchJob,
        x=maybe(FLOAT32),
        rows_x=st.integers(0, 10_000),
        params=search_params(),
        y_known=maybe(FLOAT32),
        y_mask=maybe(MASKS),
    ),
    st.builds(
        SampleJob,
        x=maybe(FLOAT32),
        rows_x=st.integers(0, 10_000),
        params=sample_params(),
        y_known=maybe(FLOAT32),
        y_mask=maybe(MASKS),
        decodes=st.booleans(),
    ),
)
OP = {ScoreJob: "score", SearchJob: "predict", SampleJob: "sample"}


def tensors_of(job: Any) -> dict[str, np.ndarray | None]:
    if isinstance(job, ScoreJob):
        return dict(job.inputs)
    return {"x": job.x, "y_known": job.y_known, "y_mask": job.y_mask}


@SETTINGS
@given(
    job=JOBS,
    model=NAMES,
    version=st.integers(0, 2**63 - 1),
    deadline=DEADLINE,
    job_id=NAMES,
)
def test_an_envelope_comes_back_equal(
    job: Any, model: str, version: int, deadline: float, job_id: str
) -> None:
    env = Envelope(model, version, OP[type(job)], job, deadline, id=job_id)  # type: ignore[arg-type]
    back = decode_envelope(encode_envelope(env))
    assert (back.model, back.version, back.op, back.id) == (model, version, env.op, job_id)
    assert back.deadline == deadline
    assert back.control.deadline == deadline  # the runner sees the deadline
    assert type(back.job) is type(job)
    for name, tensor in tensors_of(job).items():
        got = tensors_of(back.job)[name]
        assert (got is None) == (tensor is None)
        if tensor is not None:
            assert got is not None
            assert same_bits(got, tensor)
    if isinstance(job, ScoreJob):
        assert isinstance(back.job, ScoreJob)
        assert back.job.grad == job.grad
        if job.inputs:
            assert back.job.rows == job.rows
    else:
        assert not isinstance(back.job, ScoreJob)
        assert back.job.params == job.params
        assert back.job.rows_x == job.rows_x
        if isinstance(job, SampleJob):
            assert isinstance(back.job, SampleJob)
            assert back.job.decodes == job.decodes


@SETTINGS
@given(deadline=st.floats(-1e12, 1e12), offset=st.floats(-1e6, 1e6))
def test_a_deadline_travels_on_the_transport_clock_and_comes_home(
    deadline: float, offset: float
) -> None:
    env = Envelope("m", 1, "score", ScoreJob({}), deadline)
    data = encode_envelope(env, clock_offset=offset)
    assert msgpack.unpackb(data)["deadline"] == deadline + offset
    back = decode_envelope(data, clock_offset=offset).deadline
    # (d + o) - o: exact but for the rounding of the sum
    assert abs(back - deadline) <= math.ulp(abs(deadline) + abs(offset))


@st.composite
def damaged_envelopes(draw: st.DrawFn) -> bytes:
    """A real envelope cut short, with bytes changed, or bytes of anything at all."""
    choice = draw(st.sampled_from(["random", "cut", "flipped", "other msgpack"]))
    if choice == "random":
        return draw(st.binary(max_size=64))
    if choice == "other msgpack":
        value = draw(
            st.recursive(
                st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), NAMES),
                lambda inner: st.lists(inner, max_size=4) | st.dictionaries(NAMES, inner),
                max_leaves=10,
            )
        )
        if isinstance(value, dict) and draw(st.booleans()):
            value |= {"v": 1, "op": draw(st.sampled_from(["score", "predict", "sample"]))}
        packed: bytes = msgpack.packb(value, use_bin_type=True)
        return packed
    job = draw(JOBS)
    data = bytearray(encode_envelope(Envelope("m", 1, OP[type(job)], job, 1.0)))  # type: ignore[arg-type]
    if choice == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@SETTINGS
@given(data=damaged_envelopes())
def test_bytes_that_are_not_an_envelope_are_a_value_error(data: bytes) -> None:
    try:
        env = decode_envelope(data)
    except ValueError:
        return
    assert isinstance(env, Envelope)  # a changed byte can still leave a valid envelope


# --- outcomes ---------------------------------------------------------------------------
JSON_LEAF = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), FINITE, st.text(max_size=10)
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
PER_X = st.lists(
    st.lists(st.dictionaries(st.text(max_size=8), JSON, max_size=4), max_size=3), max_size=3
)
STATS = st.dictionaries(st.text(max_size=12), JSON, max_size=4)


@SETTINGS
@given(
    energy=FLOAT32,
    grads=st.dictionaries(st.sampled_from(["x", "y", "z"]), FLOAT32),
    job_id=NAMES,
)
def test_an_energy_outcome_comes_back_bit_for_bit(
    energy: np.ndarray, grads: dict[str, np.ndarray], job_id: str
) -> None:
    got_id, back = decode_outcome(encode_outcome(job_id, "score", EnergyOutput(energy, grads)))
    assert got_id == job_id
    assert isinstance(back, EnergyOutput)
    assert same_bits(back.energy, energy)
    assert back.grads.keys() == grads.keys()
    assert all(same_bits(back.grads[k], grads[k]) for k in grads)


@SETTINGS
@given(per_x=PER_X, stats=STATS, job_id=NAMES, op=st.sampled_from(["predict", "sample"]))
def test_predictions_and_samples_come_back_equal(
    per_x: list[list[dict[str, Any]]], stats: dict[str, Any], job_id: str, op: str
) -> None:
    outcome = PredictOutcome(per_x, stats) if op == "predict" else SampleOutcome(per_x, stats)
    got_id, back = decode_outcome(encode_outcome(job_id, op, outcome))  # type: ignore[arg-type]
    assert got_id == job_id
    assert back == outcome


def error_classes() -> list[type[EBMError]]:
    """Every error a worker can report: each class that names its own type."""
    found, todo = [], [EBMError]
    while todo:
        cls = todo.pop()
        if "error_type" in vars(cls):
            found.append(cls)
        todo.extend(cls.__subclasses__())
    return sorted(found, key=lambda cls: cls.error_type)


@SETTINGS
@given(cls=st.sampled_from(error_classes()), message=st.text(max_size=200), job_id=NAMES)
def test_an_error_comes_back_with_its_type_status_and_message(
    cls: type[EBMError], message: str, job_id: str
) -> None:
    sent = cls(message)
    got_id, back = decode_outcome(encode_outcome(job_id, "predict", sent))
    assert got_id == job_id
    assert type(back) is cls
    assert isinstance(back, EBMError)
    assert (back.error_type, back.status_code, back.message) == (
        sent.error_type,
        sent.status_code,
        message,
    )
