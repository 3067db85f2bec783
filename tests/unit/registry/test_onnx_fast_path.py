"""OnnxBackend.energy's fast path against the plain ``session.run``, on the shipped models.

The fast path calls the compiled session directly and copies nothing, so it must give the
same bits as the public run, at every batch size in any order, and never hand out memory
that a later call writes into (the search keeps energies and gradients across steps).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest

from app.config import BackendChoice, Settings
from app.registry.backends.base import Array, EnergyOutput
from app.registry.backends.onnx import OnnxBackend, runner
from app.registry.loader import LoadedModel, Registry, load_registry
from app.registry.parity import probe_inputs
from tests.conftest import SHIPPED_MODELS

# car: x and y, with a score graph; ellipse: latent z, no x; digits-inpaint: x, y and z of
# rank 2; digits: no score graph, no gradient (its y is a label).
MODELS = ("car", "ellipse", "digits-inpaint", "digits")
# Shape changes in both directions, and back to a size seen before.
ROWS = (8, 1, 256, 64, 8, 257)


@pytest.fixture(scope="module")
def registry() -> Registry[LoadedModel]:
    settings = Settings(models_dir=SHIPPED_MODELS, backend=BackendChoice.ONNX)
    return load_registry(settings, frozenset(MODELS))


def _backend(registry: Registry[LoadedModel], name: str) -> OnnxBackend:
    backend = registry.get(name).backend
    assert isinstance(backend, OnnxBackend)
    return backend


def _batch(model: LoadedModel, rows: int, offset: int = 0) -> dict[str, Array]:
    """The probe rows repeated to ``rows``, starting at ``offset``: valid inputs (labels
    included) that differ from one offset to the next."""
    probe = probe_inputs(model.manifest)
    index = (np.arange(rows) + offset) % len(next(iter(probe.values())))
    return {name: np.ascontiguousarray(values[index]) for name, values in probe.items()}


def _plain(backend: OnnxBackend, inputs: dict[str, Array], grad: bool) -> list[Array]:
    """What the public ``InferenceSession.run`` gives for the same call."""
    if not grad and backend._score is not None:
        outputs: list[Array] = backend._score.run(["energy"], inputs)
        return outputs
    outputs = backend._grad.run(backend._grad_outputs, inputs)
    return outputs if grad else outputs[:1]


def _flat(out: EnergyOutput) -> list[Array]:
    return [out.energy, *out.grads.values()]


def _assert_same(actual: list[Array], expected: list[Array]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.dtype == e.dtype
        assert a.shape == e.shape
        assert np.array_equal(a, e)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("grad", [True, False])
def test_outputs_equal_the_plain_run_bit_for_bit(
    registry: Registry[LoadedModel], name: str, grad: bool
) -> None:
    model = registry.get(name)
    backend = _backend(registry, name)
    for offset, rows in enumerate(ROWS):
        inputs = _batch(model, rows, offset)
        out = backend.energy(inputs, grad)
        _assert_same(_flat(out), _plain(backend, inputs, grad))
        assert list(out.grads) == (model.manifest.grad_names if grad else [])
        for grad_name, value in out.grads.items():
            assert value.shape == inputs[grad_name].shape


def test_earlier_outputs_survive_later_calls(registry: Registry[LoadedModel]) -> None:
    """A caller may keep (and slice) a call's outputs while the next calls run."""
    model = registry.get("ellipse")
    backend = _backend(registry, "ellipse")
    kept = [backend.energy(_batch(model, 64, offset=i), grad=True) for i in range(3)]
    views = [out.grads["z"][::2] for out in kept]
    copies = [[a.copy() for a in _flat(out)] for out in kept]
    for offset, rows in enumerate(ROWS):
        later = backend.energy(_batch(model, rows, offset + 3), grad=True)
        for out in kept:
            for a, b in zip(_flat(out), _flat(later), strict=True):
                assert not np.shares_memory(a, b)
    for out, view, copy in zip(kept, views, copies, strict=True):
        _assert_same(_flat(out), copy)
        assert np.array_equal(view, copy[2][::2])


def test_any_mapping_is_a_feed(registry: Registry[LoadedModel]) -> None:
    model = registry.get("car")
    backend = _backend(registry, "car")
    inputs = _batch(model, 8)
    out = backend.energy(MappingProxyType(inputs), grad=True)
    _assert_same(_flat(out), _plain(backend, inputs, grad=True))


def test_threads_get_their_own_results(registry: Registry[LoadedModel]) -> None:
    """The event loop and the compute threads call one backend at once."""
    model = registry.get("car")
    backend = _backend(registry, "car")
    batches = [_batch(model, rows, offset) for offset, rows in enumerate(ROWS * 4)]
    expected = [_plain(backend, inputs, grad=True) for inputs in batches]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda inputs: backend.energy(inputs, grad=True), batches))
    for out, want in zip(outs, expected, strict=True):
        _assert_same(_flat(out), want)


@pytest.mark.parametrize(
    ("providers", "public"),
    [
        (["CPUExecutionProvider"], False),
        (["CUDAExecutionProvider", "CPUExecutionProvider"], True),
    ],
)
def test_cuda_keeps_the_public_run(providers: list[str], public: bool) -> None:
    """The public run falls back to the CPU provider when CUDA fails; on CPU it only checks."""
    session = SimpleNamespace(
        get_providers=lambda: providers,
        run=lambda *args: "public",
        _sess=SimpleNamespace(run=lambda *args: "compiled"),
    )
    assert runner(session) is (session.run if public else session._sess.run)
