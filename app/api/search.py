"""Request checks shared by the search endpoints (/predict, /sample, free energies)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from app.api.tensors import (
    check_row_limit,
    known_components,
    require_within,
    row_count,
    to_batch,
)
from app.config import Settings
from app.dispatch.base import Dispatcher
from app.errors import InvalidInput, PayloadTooLarge
from app.inference.params import SearchParams
from app.inference.sampling import SampleParams
from app.inference.steppers.stepper import planned_steps
from app.registry.backends.base import Array
from app.registry.manifest import Manifest
from app.schemas import SearchFields


def observations(manifest: Manifest, x: Any, y_known: Any) -> tuple[Array | None, int]:
    """The x batch (None for unconditional models) and the number of rows N.

    Unconditional models take no x: N is the number of y_known rows, or 1.
    """
    model = manifest.name
    if manifest.x is None:
        if x is not None:
            raise InvalidInput(f"model '{model}' is unconditional: omit x")
        return None, row_count(y_known) or 1
    if x is None:
        raise InvalidInput(f"model '{model}' is conditional: x is required")
    check_row_limit(model, row_count(x), manifest.batching.max_rows_per_request)
    batch = to_batch("x", x, manifest.x, model)
    # Searching from an x outside the range the model was trained on gives answers pinned
    # to y's bounds or worse: refused. (/energy still scores any finite x: high is right.)
    require_within("x", batch, manifest.x, model)
    return batch, len(batch)


@dataclass(frozen=True)
class SearchInputs:
    x: Array | None  # [N, *x] (None for unconditional models)
    rows: int  # N
    y_known: Array | None  # [N, Dy], fill in the blanks
    y_mask: np.ndarray | None  # [N, Dy], true = observed


def search_inputs(manifest: Manifest, body: SearchFields) -> SearchInputs:
    """x, the row count and the fill-in-the-blanks inputs of a /predict or /sample body."""
    x, rows = observations(manifest, body.x, body.y_known)
    y_known, y_mask = known_components(manifest, body.y_known, body.y_mask, rows)
    return SearchInputs(x, rows, y_known, y_mask)


def check_cost(
    manifest: Manifest,
    rows: int,
    starts: int,
    steps: int,
    settings: Settings,
    dispatcher: Dispatcher,
) -> None:
    """Refuse (413), before any compute, a search of more than ``EBM_MAX_SEARCH_COST``
    candidate evaluations, or one that the model's cost per row, measured when it loaded,
    puts past ``EBM_MAX_SEARCH_SECONDS`` of compute."""
    evaluations = rows * starts * max(steps, 1)
    size = f"{rows} x {starts} x {max(steps, 1)} = {evaluations:,} evaluations"
    if evaluations > settings.max_search_cost:
        raise PayloadTooLarge(
            f"this search costs {size} (rows x starts x steps); the limit is "
            f"{settings.max_search_cost:,}: ask for fewer rows, starts or steps"
        )
    row_seconds = dispatcher.row_seconds(manifest.name, manifest.version)
    if row_seconds is None:  # queue mode before any worker reported its measure
        return
    seconds = evaluations * row_seconds
    if seconds > settings.max_search_seconds:
        raise PayloadTooLarge(
            f"this search would compute for about {seconds:.0f} s: {size} at "
            f"{row_seconds * 1e6:.2f} us each (model '{manifest.name}', measured when it "
            f"loaded); the limit is {settings.max_search_seconds:g} s: ask for fewer rows, "
            "starts or steps"
        )


# What a number takes in a response, separator included (measured: 21 on /sample): values
# leave as the shortest repr of a float64, e.g. 0.30000001192092896. The estimate of a
# response's size from the numbers it will hold, before computing it.
BYTES_PER_NUMBER = 20


def check_response_size(
    settings: Settings, numbers: int, detail: str, held_floats: int = 0
) -> None:
    """Refuse (413), before any compute, a response of more than ``EBM_MAX_RESPONSE_BYTES``
    (``numbers`` in it, counted as ``detail`` says), or a search that would hold more
    trajectory floats (``held_floats``, 4 bytes each) than that many bytes meanwhile."""
    limit = settings.max_response_bytes
    size = numbers * BYTES_PER_NUMBER
    if size > limit:
        raise PayloadTooLarge(
            f"the response would hold {numbers:,} numbers ({detail}), about "
            f"{size / 1e6:.1f} MB; the limit is {limit:,} bytes (EBM_MAX_RESPONSE_BYTES): "
            "ask for fewer rows or answers, or no trajectory"
        )
    if held_floats * 4 > limit:
        raise PayloadTooLarge(
            f"return_trajectory would keep every candidate's path, {held_floats:,} numbers "
            f"({held_floats * 4 / 1e6:.1f} MB) while searching; the limit is {limit:,} "
            "bytes (EBM_MAX_RESPONSE_BYTES): ask for fewer rows, starts or steps"
        )


def _sizes(manifest: Manifest) -> tuple[int, int]:
    """Numbers per y and per continuous z (0 without one) in a response."""
    return manifest.y.size, manifest.z.size if manifest.z is not None else 0


def check_predict_size(
    manifest: Manifest, rows: int, params: SearchParams, settings: Settings
) -> None:
    """/predict: k predictions per row (y, z?, energy, mass, converged), each with its
    path when asked; the search holds every start's path until the merge."""
    y_size, z_size = _sizes(manifest)
    frames = planned_steps(params) + 1 if params.return_trajectory else 0
    k = min(params.k, params.num_starts)
    check_response_size(
        settings,
        rows * k * (y_size + z_size + 3 + frames * y_size),
        f"{rows} rows x {k} predictions"
        + (f", each with a path of {frames} points" if frames else ""),
        held_floats=rows * params.num_starts * frames * y_size,
    )


def check_sample_size(
    manifest: Manifest, rows: int, params: SampleParams, chains: bool, settings: Settings
) -> None:
    """/sample: n samples per row (y, z?, energy), plus each chain's path when asked."""
    y_size, z_size = _sizes(manifest)
    frames = params.chain_steps if params.return_trajectory and chains else 0
    paths = params.chains * frames * y_size
    check_response_size(
        settings,
        rows * (params.n * (y_size + z_size + 1) + paths),
        f"{rows} rows x {params.n} samples"
        + (f", {params.chains} chains each with a path of {frames} points" if frames else ""),
        held_floats=rows * paths,
    )
