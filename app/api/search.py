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
from app.errors import InvalidInput, PayloadTooLarge
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


def check_cost(manifest: Manifest, rows: int, starts: int, steps: int, settings: Settings) -> None:
    """Refuse (413) a search larger than ``EBM_MAX_SEARCH_COST`` candidate evaluations."""
    cost = rows * starts * max(steps, 1)
    if cost > settings.max_search_cost:
        raise PayloadTooLarge(
            f"this search costs {rows} x {starts} x {max(steps, 1)} = {cost:,} evaluations "
            f"(rows x starts x steps); the limit is {settings.max_search_cost:,}: ask for fewer "
            "rows, starts or steps"
        )
