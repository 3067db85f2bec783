"""The Dispatcher protocol: how the API hands work to compute, whatever the transport."""

from __future__ import annotations

from typing import Protocol

from app.inference.predict import PredictOutcome
from app.inference.sampling import SampleJob, SampleOutcome
from app.inference.scoring import ScoreJob
from app.inference.search import SearchJob
from app.registry.backends.base import EnergyOutput
from app.registry.loader import LoadedModel


class Dispatcher(Protocol):
    async def score(
        self, model: LoadedModel, job: ScoreJob, grad: bool, deadline: float
    ) -> EnergyOutput:
        """Energies (and gradients) of ``job``'s pairs; ``deadline`` in ``loop.time()`` s."""
        ...

    async def predict(self, model: LoadedModel, job: SearchJob) -> PredictOutcome:
        """The k lowest-energy modes per x; ``job.deadline`` in ``time.monotonic()`` s."""
        ...

    async def sample(self, model: LoadedModel, job: SampleJob) -> SampleOutcome:
        """n samples per x; ``job.deadline`` in ``time.monotonic()`` s."""
        ...

    async def close(self) -> None:
        """Finish accepted work, then release resources."""
        ...

    def ready(self) -> tuple[bool, str]:
        """Whether new work can be taken, and why not."""
        ...
