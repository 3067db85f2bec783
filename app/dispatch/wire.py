"""Jobs and outcomes as wire types: one envelope for every operation, one msgpack codec.

Embedded mode hands :class:`Envelope` objects to the engine as they are; the Redis
transport sends ``encode_envelope(env)`` and ``encode_outcome(...)`` bytes. Tensors travel
as ``{"dtype", "shape", "data"}`` with the raw little-endian bytes, never as lists, so a
float32 comes back with the same bits. The API needs manifests only to build an envelope.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from random import getrandbits
from typing import Any, Literal, TypeAlias

import msgpack
import numpy as np

from app.errors import EBMError, error_from_wire
from app.inference.control import Control
from app.inference.params import SearchParams
from app.inference.predict import PredictOutcome
from app.inference.sampling import SampleJob, SampleOutcome, SampleParams
from app.inference.scoring import ScoreJob
from app.inference.search import SearchJob
from app.registry.backends.base import Array, EnergyOutput

Op = Literal["score", "predict", "sample"]
OPS: tuple[Op, ...] = ("score", "predict", "sample")
Job: TypeAlias = ScoreJob | SearchJob | SampleJob
Result: TypeAlias = EnergyOutput | PredictOutcome | SampleOutcome
WIRE_VERSION = 1


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_job_id() -> str:
    """A random version-4 UUID as 32 hex digits. Drawn from ``random`` (reseeded in every
    forked child) rather than ``uuid.uuid4()``, whose ``os.urandom`` syscall cost 2 us a job:
    ids need to be unique, not secret."""
    return f"{getrandbits(128) & _UUID4_CLEAR | _UUID4_SET:032x}"


@dataclass
class Envelope:
    """One job of any operation: which model, what to do, its inputs and its deadline
    (wall-clock seconds, see ``app.inference.control``). The seed of a search or sampling
    job is one of its params (``job.params.seed``)."""

    model: str
    version: int
    op: Op
    job: Job
    deadline: float
    id: str = field(default_factory=new_job_id)

    def __post_init__(self) -> None:
        self.job.control.deadline = self.deadline

    @property
    def control(self) -> Control:
        return self.job.control


# --- tensors --------------------------------------------------------------------------
def pack_tensor(a: np.ndarray) -> dict[str, Any]:
    little = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return {"dtype": little.dtype.str, "shape": list(a.shape), "data": little.tobytes()}


def unpack_tensor(t: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(t["dtype"])
    if dtype.kind not in "fiub":
        raise ValueError(f"tensor dtype {dtype} cannot travel on the wire")
    return np.frombuffer(t["data"], dtype).reshape(t["shape"]).astype(dtype.newbyteorder("="))


def _pack_tensors(tensors: dict[str, np.ndarray | None]) -> dict[str, Any]:
    return {k: pack_tensor(v) for k, v in tensors.items() if v is not None}


def _unpack_tensors(packed: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: unpack_tensor(v) for k, v in packed.items()}


# --- jobs -----------------------------------------------------------------------------
def _job_to_wire(job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, tensors) of a job."""
    if isinstance(job, ScoreJob):
        return {"grad": job.grad}, _pack_tensors(dict(job.inputs))
    tensors = _pack_tensors({"x": job.x, "y_known": job.y_known, "y_mask": job.y_mask})
    params: dict[str, Any] = {"rows_x": job.rows_x, "params": asdict(job.params)}
    if isinstance(job, SampleJob):
        params["decodes"] = job.decodes
    return params, tensors


def _job_from_wire(op: Op, params: dict[str, Any], packed: dict[str, Any]) -> Job:
    tensors = _unpack_tensors(packed)
    if op == "score":
        inputs: dict[str, Array] = tensors
        return ScoreJob(inputs, grad=bool(params["grad"]))
    common: dict[str, Any] = {
        "x": tensors.get("x"),
        "rows_x": int(params["rows_x"]),
        "y_known": tensors.get("y_known"),
        "y_mask": tensors.get("y_mask"),
    }
    if op == "predict":
        return SearchJob(params=SearchParams(**params["params"]), **common)
    return SampleJob(
        params=SampleParams(**params["params"]), decodes=bool(params["decodes"]), **common
    )


def encode_envelope(env: Envelope, clock_offset: float = 0.0) -> bytes:
    """``clock_offset``: the transport's clock minus this process's (deadlines travel on
    the transport's clock)."""
    params, tensors = _job_to_wire(env.job)
    body = {
        "v": WIRE_VERSION,
        "id": env.id,
        "model": env.model,
        "version": env.version,
        "op": env.op,
        "deadline": env.deadline + clock_offset,
        "params": params,
        "tensors": tensors,
    }
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode_envelope(data: bytes, clock_offset: float = 0.0) -> Envelope:
    """The envelope in ``data`` (its deadline on this process's clock); ValueError when it
    is not one this build understands."""
    try:
        body = msgpack.unpackb(data, raw=False)
        if body.get("v") != WIRE_VERSION:
            raise ValueError(f"wire version {body.get('v')!r}; this build speaks {WIRE_VERSION}")
        op = body["op"]
        if op not in OPS:
            raise ValueError(f"unknown operation {op!r}")
        job = _job_from_wire(op, body["params"], body["tensors"])
        return Envelope(
            model=str(body["model"]),
            version=int(body["version"]),
            op=op,
            job=job,
            deadline=float(body["deadline"]) - clock_offset,
            id=str(body["id"]),
        )
    except ValueError:
        raise
    except Exception as exc:  # a malformed entry: say what, never crash the reader
        raise ValueError(f"not a job envelope: {type(exc).__name__}: {exc}") from exc


# --- outcomes -------------------------------------------------------------------------
def _result_to_wire(result: Result) -> dict[str, Any]:
    if isinstance(result, EnergyOutput):
        return {
            "energy": pack_tensor(result.energy),
            "grads": _pack_tensors(dict(result.grads)),
        }
    if isinstance(result, PredictOutcome):
        return {"predictions": result.predictions, "stats": result.stats}
    return {"samples": result.samples, "stats": result.stats}


def _result_from_wire(op: Op, body: dict[str, Any]) -> Result:
    if op == "score":
        grads: dict[str, Array] = _unpack_tensors(body["grads"])
        return EnergyOutput(energy=unpack_tensor(body["energy"]), grads=grads)
    if op == "predict":
        return PredictOutcome(body["predictions"], body["stats"])
    return SampleOutcome(body["samples"], body["stats"])


def encode_outcome(job_id: str, op: Op, outcome: Result | EBMError) -> bytes:
    body: dict[str, Any] = {"v": WIRE_VERSION, "id": job_id, "op": op}
    if isinstance(outcome, EBMError):
        body["error"] = {"type": outcome.error_type, "message": outcome.message}
    else:
        body["result"] = _result_to_wire(outcome)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return packed


def decode_outcome(data: bytes) -> tuple[str, Result | EBMError]:
    """(job id, its result or the error to raise to its caller)."""
    body = msgpack.unpackb(data, raw=False)
    if "error" in body:
        return body["id"], error_from_wire(body["error"]["type"], body["error"]["message"])
    return body["id"], _result_from_wire(body["op"], body["result"])
