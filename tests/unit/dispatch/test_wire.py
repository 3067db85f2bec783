"""Jobs and outcomes survive the msgpack codec bit for bit, for every operation."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from app.dispatch.wire import (
    Envelope,
    decode_envelope,
    decode_outcome,
    encode_envelope,
    encode_outcome,
    pack_tensor,
    unpack_tensor,
)
from app.errors import DeadLettered, EBMError, InvalidInput, Overloaded
from app.inference.params import SearchParams
from app.inference.predict import PredictOutcome
from app.inference.sampling import SampleJob, SampleOutcome, SampleParams
from app.inference.scoring import ScoreJob
from app.inference.search import SearchJob
from app.registry.backends.base import EnergyOutput

RNG = np.random.default_rng(0)
SEARCH = SearchParams(
    method="gd",
    k=3,
    num_starts=8,
    steps=20,
    step_size=0.1,
    noise_scale=0.0,
    temperature=1.0,
    merge_radius=0.05,
    tol=1e-3,
    seed=2**62 + 7,
    seeded=True,
    return_trajectory=True,
    refine_step_size=0.2,
)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_tensors_travel_as_raw_little_endian_bytes() -> None:
    big = np.arange(6, dtype=">f4").reshape(2, 3) / 7
    packed = pack_tensor(big)
    assert packed["dtype"] == "<f4"
    assert packed["shape"] == [2, 3]
    assert packed["data"] == big.astype("<f4").tobytes()
    back = unpack_tensor(msgpack.unpackb(msgpack.packb(packed)))
    np.testing.assert_array_equal(back, big)
    assert back.dtype == np.float32


def test_a_tensor_of_objects_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot travel"):
        unpack_tensor({"dtype": "|O", "shape": [1], "data": b"\0" * 8})


def test_a_score_envelope_round_trips() -> None:
    inputs = {"x": RNG.standard_normal((5, 3), dtype=np.float32), "y": RNG.random((5, 2))}
    inputs["y"] = inputs["y"].astype(np.float32)
    env = Envelope("car", 2, "score", ScoreJob(inputs, grad=True), deadline=1.7e9 + 0.123456)
    back = decode_envelope(encode_envelope(env))
    assert (back.id, back.model, back.version, back.op) == (env.id, "car", 2, "score")
    assert back.deadline == env.deadline
    assert back.control.deadline == env.deadline  # the runner sees the deadline
    assert isinstance(back.job, ScoreJob)
    assert back.job.grad is True
    assert all(same_bits(back.job.inputs[k], inputs[k]) for k in inputs)


def test_a_predict_envelope_round_trips_with_a_clock_offset() -> None:
    mask = np.array([[True, False]])
    job = SearchJob(
        x=RNG.standard_normal((1, 3), dtype=np.float32),
        rows_x=1,
        params=SEARCH,
        y_known=np.array([[1.5, 0.0]], np.float32),
        y_mask=mask,
    )
    env = Envelope("car", 1, "predict", job, deadline=100.0)
    # the transport's clock runs 2.5 s ahead: on the wire 102.5, back home 100.0
    data = encode_envelope(env, clock_offset=2.5)
    assert msgpack.unpackb(data)["deadline"] == 102.5
    back = decode_envelope(data, clock_offset=2.5)
    assert back.deadline == 100.0
    assert isinstance(back.job, SearchJob)
    assert back.job.params == SEARCH
    assert back.job.x is not None
    assert job.x is not None
    assert same_bits(back.job.x, job.x)
    assert back.job.y_mask is not None
    assert back.job.y_mask.dtype == bool
    np.testing.assert_array_equal(back.job.y_mask, mask)


def test_a_sample_envelope_round_trips_for_an_unconditional_model() -> None:
    params = SampleParams(
        n=5, chains=2, steps=3, thin=2, step_size=0.01, temperature=0.5, seed=1, seeded=False
    )
    env = Envelope("spiral", 1, "sample", SampleJob(None, 1, params, decodes=True), 5.0)
    back = decode_envelope(encode_envelope(env))
    assert isinstance(back.job, SampleJob)
    assert back.job.x is None
    assert back.job.y_known is None
    assert back.job.params == params
    assert back.job.decodes is True
    assert back.job.rows == env.job.rows


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", msgpack.packb({"v": 99}), msgpack.packb({"v": 1, "op": "train"}), b"[1,2"],
)
def test_a_malformed_envelope_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every way of being malformed
        decode_envelope(data)


def test_outcomes_round_trip() -> None:
    energy = EnergyOutput(
        energy=RNG.standard_normal(4, dtype=np.float32),
        grads={"y": RNG.standard_normal((4, 2), dtype=np.float32)},
    )
    job_id, back = decode_outcome(encode_outcome("a", "score", energy))
    assert job_id == "a"
    assert isinstance(back, EnergyOutput)
    assert same_bits(back.energy, energy.energy)
    assert same_bits(back.grads["y"], energy.grads["y"])
    predicted = PredictOutcome([[{"y": [0.1, 1 / 3], "energy": -2.5, "mass": 1.0}]], {"k": 1})
    assert decode_outcome(encode_outcome("b", "predict", predicted))[1] == predicted
    sampled = SampleOutcome([[{"y": [1.0], "energy": 0.25, "z": 3}]], {"seed": 4})
    assert decode_outcome(encode_outcome("c", "sample", sampled))[1] == sampled


@pytest.mark.parametrize(
    "error", [InvalidInput("y has shape [1, 3]"), Overloaded("full"), DeadLettered("3 times")]
)
def test_errors_come_back_with_their_type_status_and_message(error: EBMError) -> None:
    _, back = decode_outcome(encode_outcome("e", "predict", error))
    assert type(back) is type(error)
    assert isinstance(back, EBMError)
    assert (back.status_code, back.error_type, back.message) == (
        error.status_code,
        error.error_type,
        error.message,
    )


def test_an_unknown_error_type_is_an_internal_error() -> None:
    data = msgpack.packb({"v": 1, "id": "x", "op": "score", "error": {"type": "?", "message": "m"}})
    _, back = decode_outcome(data)
    assert isinstance(back, EBMError)
    assert back.status_code == 500
