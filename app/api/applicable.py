"""One rule for request fields that do not apply: a 422 that names each field and says why.

A field the caller set but the server would ignore (a seed where nothing is random, a
gradient of a discrete answer, a Langevin setting on the prior-and-decode path) is refused
rather than silently dropped, so a mistaken request never looks like it worked. Fields
left at their defaults are never refused.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from app.errors import InvalidInput
from app.registry.manifest import Manifest
from app.schemas import EnergyRequest, PredictRequest, SampleRequest

#: What each search method reads of the request, besides k, merge_radius, temperature,
#: seed and the inputs (read by all).
METHOD_FIELDS: dict[str, frozenset[str]] = {
    "gd": frozenset({"num_starts", "steps", "step_size", "tol"}),
    "langevin": frozenset({"num_starts", "steps", "step_size", "noise_scale", "tol"}),
    "dfo": frozenset({"num_starts", "steps", "noise_scale", "tol"}),  # tol: its descent
    "enumerate": frozenset(),
}
SEARCH_FIELDS = frozenset({"num_starts", "steps", "step_size", "noise_scale", "tol"})


def refuse(body: BaseModel, why: Mapping[str, str]) -> None:
    """422 for every field of ``why`` that the caller set to something else than its
    default (an explicit null or default value changes nothing and passes)."""
    fields = type(body).model_fields
    given = [
        f"{field}: {reason}"
        for field, reason in why.items()
        if field in body.model_fields_set and getattr(body, field) != fields[field].default
    ]
    if given:
        raise InvalidInput("fields that do not apply here: " + "; ".join(given))


#: The fields of /energy that may not apply (to a plain score: all but grad go with
#: free_energy); a request that sets none of them is not looked at further.
_ENERGY_OPTIONS = frozenset({"beta", "num_samples", "seed", "grad"})


def check_energy(manifest: Manifest, body: EnergyRequest) -> None:
    if body.free_energy is None and body.model_fields_set.isdisjoint(_ENERGY_OPTIONS):
        return
    why: dict[str, str] = {}
    model = f"model '{manifest.name}'"
    if body.free_energy is None:
        for field in ("beta", "num_samples", "seed"):
            why[field] = "goes with free_energy: 'min' or 'marginal'"
        if not manifest.grad_names:
            why["grad"] = f"{model} has no continuous input to differentiate by"
        refuse(body, why)
        return
    z = manifest.z
    searched = body.free_energy == "min" and z is not None and z.kind == "continuous"
    grid = (
        z is not None
        and z.kind == "continuous"
        and z.size == 1
        and z.prior == "uniform"
        and z.low is not None
        and z.high is not None
    )
    if body.free_energy == "min":
        why["beta"] = "goes with free_energy: 'marginal'"
    if z is not None and z.kind == "discrete":
        why["num_samples"] = f"{model}'s discrete z is summed over all its labels"
        why["seed"] = f"{model}'s discrete z is summed over all its labels: nothing is drawn"
    elif searched:
        why["num_samples"] = "free_energy 'min' over a continuous z is a search, not samples"
    elif grid:
        why["seed"] = f"{model}'s 1-D uniform z is integrated on a grid: nothing is drawn"
    refuse(body, why)


def check_predict(manifest: Manifest, body: PredictRequest, method: str) -> None:
    why = {
        field: f"method '{method}' does not use it"
        for field in SEARCH_FIELDS - METHOD_FIELDS[method]
    }
    labels = manifest.y.num_classes
    if method == "enumerate" and labels is not None and body.k is not None and body.k > labels:
        why["k"] = f"is {body.k}; model '{manifest.name}' has {labels} labels to rank"
    refuse(body, why)


def check_sample(manifest: Manifest, body: SampleRequest, chains: bool) -> None:
    if chains:
        return
    why = {
        field: "Langevin only: this model samples its prior and decodes (no chain)"
        for field in ("steps", "step_size", "chains", "thin", "return_trajectory")
    }
    z = manifest.z
    if z is not None and z.prior != "normal":
        why["temperature"] = (
            f"scales a normal prior's variance; model '{manifest.name}' has a {z.prior} z"
        )
    refuse(body, why)
