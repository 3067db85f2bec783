"""Search settings: the request's, else the manifest's per method, else its top level (for
its default method only), else built-in settings scaled from the bounds of y."""

from __future__ import annotations

from typing import Any

import pytest

from app.errors import InvalidInput
from app.inference.params import converged_distance, resolve
from app.registry.manifest import (
    Artifact,
    Artifacts,
    Card,
    InferenceDefaults,
    Manifest,
    MethodSettings,
    TensorSpec,
    Training,
)

PLANE = TensorSpec(shape=[2], low=[-3.0, -3.0], high=[3.0, 3.0])  # width 6
LABELS = TensorSpec(shape=[1], kind="discrete", num_classes=5)


def manifest(y: TensorSpec = PLANE, **inference: Any) -> Manifest:
    return Manifest(
        name="m",
        version=1,
        x=TensorSpec(shape=[1]),
        y=y,
        artifacts=Artifacts(energy_onnx=Artifact(file="energy.onnx", sha256="0" * 64)),
        training=Training(recipe="r.py", seed=0, method="none", data="none"),
        card=Card(task="t", method="m"),
        inference=InferenceDefaults(**inference),
    )


def optimiser(params: Any) -> tuple[int, int, float, float]:
    return (params.num_starts, params.steps, params.step_size, params.noise_scale)


# --- which method -------------------------------------------------------------------------
@pytest.mark.parametrize("given", [{}, {"method": "auto"}, {"method": None}])
def test_auto_enumerates_a_discrete_y(given: dict[str, Any]) -> None:
    params = resolve(manifest(LABELS, method="gd"), given)
    assert params.method == "enumerate"
    assert params.num_starts == 5  # one candidate per label


@pytest.mark.parametrize(
    ("in_manifest", "expected"),
    [("auto", "dfo"), ("gd", "gd"), ("langevin", "langevin"), ("dfo", "dfo"), ("enumerate", "dfo")],
)
def test_auto_is_the_manifest_method_for_a_continuous_y(in_manifest: str, expected: str) -> None:
    # a manifest naming no method gets dfo in few dimensions (see the next test)
    assert resolve(manifest(method=in_manifest), {}).method == expected
    assert resolve(manifest(method=in_manifest), {"method": "auto"}).method == expected


def test_auto_is_gd_for_a_search_in_many_dimensions() -> None:
    assert resolve(manifest(TensorSpec(shape=[9])), {}).method == "gd"
    assert resolve(manifest(TensorSpec(shape=[8])), {}).method == "dfo"


@pytest.mark.parametrize("method", ["gd", "langevin", "dfo"])
def test_a_named_method_wins_over_the_manifest(method: str) -> None:
    assert resolve(manifest(method="dfo"), {"method": method}).method == method


@pytest.mark.parametrize(
    ("y", "method", "fragments"),
    [
        (PLANE, "newton", ["'newton' is unknown", "auto", "gd", "langevin", "dfo", "enumerate"]),
        (PLANE, "GD", ["'GD' is unknown"]),
        (PLANE, "enumerate", ["needs a discrete y", "'m'", "gd, langevin or dfo"]),
        (LABELS, "gd", ["discrete y (5 labels)", "'enumerate'"]),
        (LABELS, "langevin", ["discrete y", "'enumerate'"]),
        (LABELS, "dfo", ["discrete y", "'enumerate'"]),
    ],
)
def test_unusable_methods_are_refused_with_what_to_use(
    y: TensorSpec, method: str, fragments: list[str]
) -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve(manifest(y), {"method": method})
    assert caught.value.status_code == 422
    for fragment in fragments:
        assert fragment in caught.value.message


def test_a_silent_manifest_defaulting_to_langevin_or_dfo_gets_their_built_ins() -> None:
    # no top-level settings: the default method runs with its own built-in ones, never gd's
    assert optimiser(resolve(manifest(method="langevin"), {})) == (
        1024,
        100,
        pytest.approx(3.6e-4),
        None,
    )
    assert optimiser(resolve(manifest(method="dfo"), {})) == (2048, 8, 1.0, pytest.approx(0.99))


def test_unset_tol_and_merge_radius_come_from_the_bounds() -> None:
    params = resolve(manifest(), {})
    assert params.tol is None  # converged by estimated distance, not gradient units
    assert params.merge_radius == pytest.approx(0.12)  # 2% of the width 6
    assert converged_distance(manifest()) == pytest.approx(0.006)


# --- precedence ---------------------------------------------------------------------------
def test_built_in_settings_scale_with_the_bounds_of_y() -> None:
    m = manifest(method="gd", step_size=0.5)  # the top-level settings belong to gd alone
    assert optimiser(resolve(m, {"method": "langevin"})) == (
        1024,
        100,
        pytest.approx(3.6e-4),
        None,
    )
    assert optimiser(resolve(m, {"method": "dfo"})) == (2048, 8, 1.0, pytest.approx(0.99))
    m = manifest(method="dfo")
    assert optimiser(resolve(m, {"method": "gd"})) == (1024, 100, pytest.approx(0.12), 0.0)


def test_built_in_scale_is_the_mean_bound_width() -> None:
    uneven = TensorSpec(shape=[2], low=[-1.0, 0.0], high=[1.0, 10.0])  # widths 2, 10: mean 6
    m = manifest(uneven, method="dfo")
    assert resolve(m, {"method": "gd"}).step_size == pytest.approx(0.12)
    assert resolve(m, {"method": "langevin"}).step_size == pytest.approx(3.6e-4)


def test_unbounded_y_gets_unit_scale() -> None:
    m = manifest(TensorSpec(shape=[3]), method="dfo")
    assert resolve(m, {"method": "gd"}).step_size == pytest.approx(0.02)
    assert resolve(m, {"method": "langevin"}).step_size == pytest.approx(1e-5)
    assert resolve(manifest(TensorSpec(shape=[3])), {"method": "dfo"}).noise_scale == (
        pytest.approx(0.165)
    )


def test_top_level_settings_apply_to_the_default_method_only() -> None:
    m = manifest(method="langevin", num_starts=7, steps=11, step_size=0.5, noise_scale=0.25)
    assert optimiser(resolve(m, {})) == (7, 11, 0.5, 0.25)
    assert optimiser(resolve(m, {"method": "langevin"})) == (7, 11, 0.5, 0.25)
    assert optimiser(resolve(m, {"method": "gd"})) == (1024, 100, pytest.approx(0.12), 0.0)
    # "auto" in the manifest means dfo for a 2-D y: the top level is dfo's
    m = manifest(method="auto", steps=11, noise_scale=0.5)
    assert optimiser(resolve(m, {}))[1::2] == (11, 0.5)
    assert optimiser(resolve(m, {"method": "dfo"}))[1::2] == (11, 0.5)
    assert resolve(m, {"method": "gd"}).steps == 100


def test_per_method_settings_beat_the_top_level_and_the_built_ins() -> None:
    m = manifest(
        method="gd",
        num_starts=7,
        steps=11,
        step_size=0.5,
        methods={
            "gd": MethodSettings(step_size=0.25),
            "dfo": MethodSettings(num_starts=99, noise_scale=0.5),
        },
    )
    # gd: its own step size, the other fields from the top level
    assert optimiser(resolve(m, {})) == (7, 11, 0.25, 0.0)
    # dfo: its own fields, the rest built in (never the top level: that is gd's)
    assert optimiser(resolve(m, {"method": "dfo"})) == (99, 8, 1.0, 0.5)
    # langevin: nothing in the manifest, all built in
    assert optimiser(resolve(m, {"method": "langevin"})) == (
        1024,
        100,
        pytest.approx(3.6e-4),
        None,
    )


def test_the_request_beats_everything() -> None:
    m = manifest(
        method="gd",
        num_starts=7,
        steps=11,
        step_size=0.5,
        k=3,
        temperature=2.0,
        merge_radius=0.2,
        tol=0.01,
        methods={"dfo": MethodSettings(num_starts=99, steps=4, step_size=0.3, noise_scale=0.5)},
    )
    request = {
        "num_starts": 5,
        "steps": 6,
        "step_size": 0.125,
        "noise_scale": 0.75,
        "k": 9,
        "temperature": 0.5,
        "merge_radius": 0.05,
        "tol": 0.0,
    }
    for method in ("gd", "dfo", "langevin"):
        params = resolve(m, {**request, "method": method})
        assert optimiser(params) == (5, 6, 0.125, 0.75)
        assert (params.k, params.temperature, params.merge_radius, params.tol) == (9, 0.5, 0.05, 0)
    # unset (None) request fields fall back
    params = resolve(m, {"method": "dfo", "steps": None, "k": None, "tol": None})
    assert optimiser(params) == (99, 4, 0.3, 0.5)
    assert (params.k, params.temperature, params.merge_radius, params.tol) == (3, 2.0, 0.2, 0.01)


def test_enumerate_always_scores_every_label() -> None:
    params = resolve(manifest(LABELS), {"num_starts": 2, "k": 5})
    assert (params.method, params.num_starts, params.k) == ("enumerate", 5, 5)


# --- seeds and flags ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2**63 - 1])
def test_a_given_seed_is_kept_and_marked(seed: int) -> None:
    params = resolve(manifest(), {"seed": seed})
    assert (params.seed, params.seeded) == (seed, True)


def test_without_a_seed_each_request_draws_a_fresh_one() -> None:
    draws = [resolve(manifest(), {"seed": None}) for _ in range(8)]
    assert not any(p.seeded for p in draws)
    assert all(0 <= p.seed < 2**63 for p in draws)
    assert len({p.seed for p in draws}) == 8


def test_trajectory_is_off_unless_asked() -> None:
    assert resolve(manifest(), {}).return_trajectory is False
    assert resolve(manifest(), {"return_trajectory": True}).return_trajectory is True


def test_temperature_comes_from_the_request_else_the_method_else_the_top_level() -> None:
    m = manifest(temperature=2.0, methods={"dfo": MethodSettings(temperature=5.0)})
    assert resolve(m, {"method": "dfo"}).temperature == 5.0
    assert resolve(m, {"method": "gd"}).temperature == 2.0
    assert resolve(m, {"method": "dfo", "temperature": 0.5}).temperature == 0.5
