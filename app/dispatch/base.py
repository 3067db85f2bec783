"""The Dispatcher protocol: how the API hands a job to compute, whatever the transport.

Embedded mode (``LocalDispatcher``) runs the envelope on the engine in this process; queue
mode (``RedisDispatcher``) puts it on Redis for ``ebm worker`` processes. Both answer with
the job's result or raise its EBMError.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

from app.dispatch.wire import Envelope, Result
from app.errors import EBMError
from app.inference.predict import PredictOutcome
from app.inference.sampling import SampleOutcome
from app.registry.backends.base import EnergyOutput


class Dispatcher(Protocol):
    async def submit(self, env: Envelope) -> Result:
        """The job's result; raises its EBMError (504 past ``env.deadline``, 429, 503...).
        Cancelling the awaiting task cancels the job: it stops within one step."""
        ...

    def describe(self, name: str, version: int) -> dict[str, Any]:
        """What serves a version here: ``backend``, ``parity``, ``rows_independent``."""
        ...

    def row_seconds(self, name: str, version: int) -> float | None:
        """Seconds per row of an energy-and-gradient call where the version computes,
        measured at load; None while unknown (queue mode before a worker reported)."""
        ...

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether new work can be taken, and the details (/readyz)."""
        ...

    async def announce_reload(self) -> int | None:
        """After this process reloaded its models: tell whatever else computes (queue mode:
        the workers, returns how many listened); None when nothing else does."""
        ...

    async def close(self) -> None:
        """Finish accepted work, then release resources."""
        ...


R = TypeVar("R", EnergyOutput, PredictOutcome, SampleOutcome)


async def submit_as(dispatcher: Dispatcher, env: Envelope, kind: type[R]) -> R:
    """``dispatcher.submit(env)``, checked to be the result type its operation gives."""
    result = await dispatcher.submit(env)
    if not isinstance(result, kind):
        raise EBMError(f"{env.op} job {env.id} came back as {type(result).__name__}")
    return result
