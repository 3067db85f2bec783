"""Export a torch energy module to the registry's artifacts.

An energy module maps ``(x, y)`` (or ``(y,)`` for unconditional models) to energies ``[B]``.
These artifacts are written per model version:

- ``energy.onnx``: energy *and* its gradient with respect to ``y`` as one graph, so an
  onnxruntime worker needs no torch. The gradient is traced with ``make_fx`` through
  ``torch.autograd.grad`` and core-ATen decompositions (without them the ONNX exporter meets
  backward ops such as ``aten.silu_backward`` it cannot translate).
- ``score.onnx`` (continuous models): the energy alone, cut out of ``energy.onnx``.
- ``energy.pt2``: the energy alone as a ``torch.export`` program; the torch backend gets the
  gradient from autograd through it. Nothing is pickled and no Python code is loaded at serve
  time.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx.utils
import torch
from torch import nn
from torch._decomp import core_aten_decompositions
from torch.func import functional_call
from torch.fx.experimental.proxy_tensor import make_fx

ENERGY_ONNX = "energy.onnx"
ENERGY_PT2 = "energy.pt2"
ONNX_OPSET = 18


def _weights_of(module: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """All parameters and buffers, detached: they become constants of the exported graphs."""
    named: dict[str, torch.Tensor] = dict(module.named_parameters())
    named.update(dict(module.named_buffers()))
    names = sorted(named)
    return names, [named[n].detach().clone() for n in names]


class _EnergyAndGrad(nn.Module):
    """Holds a traced energy+gradient graph and feeds it the weights stored as buffers."""

    def __init__(self, graph: Callable[..., Any], weights: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.graph = graph
        self.num_weights = len(weights)
        for i, w in enumerate(weights):
            self.register_buffer(f"w{i}", w)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weights = [getattr(self, f"w{i}") for i in range(self.num_weights)]
        return tuple(self.graph(*weights, *inputs))


def trace_energy_and_grad(
    module: nn.Module, example_inputs: Sequence[torch.Tensor], grad_indices: Sequence[int]
) -> nn.Module:
    """A module ``(*inputs) -> (energy [B], dE/d inputs[i] for i in grad_indices)``."""
    names, weights = _weights_of(module)
    n_weights = len(weights)

    def energy_and_grad(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        params = dict(zip(names, args[:n_weights], strict=True))
        inputs = list(args[n_weights:])
        with torch.enable_grad():
            for i in grad_indices:
                inputs[i] = inputs[i].detach().requires_grad_(True)
            energy = functional_call(module, params, tuple(inputs))
            # autograd.grad (not torch.func.grad): the latter freezes the batch size of 3-D
            # inputs into view ops.
            grads = torch.autograd.grad(energy.sum(), [inputs[i] for i in grad_indices])
        return (energy.detach(), *(g.detach() for g in grads))

    with _quiet():
        graph = make_fx(
            energy_and_grad,
            tracing_mode="symbolic",
            decomposition_table=dict(core_aten_decompositions()),
        )(*weights, *example_inputs)
    return _EnergyAndGrad(graph, weights)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporters' warnings about their own internals (tree specs, axis renaming,
    optional torchvision ops): noise in every recipe's output, nothing a recipe can act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        previous = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(previous)


def _dynamic_batch(n_inputs: int) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    return tuple({0: batch} for _ in range(n_inputs))


def export_onnx(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    path: Path,
    grad_names: Sequence[str] = ("y",),
) -> None:
    """Write the energy and its gradients (outputs ``grad_<name>``) as one ONNX graph.

    An energy with no continuous input to differentiate (a discrete y) is written as its
    forward graph alone.
    """
    if not grad_names:
        export_onnx_score(module, example_inputs, input_names, path)
        return
    grad_indices = [list(input_names).index(n) for n in grad_names]
    graph_module = trace_energy_and_grad(module.eval(), example_inputs, grad_indices)
    _onnx_export(
        graph_module,
        example_inputs,
        input_names,
        ["energy", *(f"grad_{n}" for n in grad_names)],
        path,
    )


def export_onnx_score(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    path: Path,
) -> None:
    """Write the energy alone as an ONNX graph.

    onnxruntime runs every node of a graph whatever outputs are asked for, so scoring without
    gradients through the energy+gradient graph would pay for the backward pass too.
    """
    _onnx_export(
        _Positional(module.eval(), input_names), example_inputs, input_names, ["energy"], path
    )


def extract_score_onnx(energy_and_grad: Path, input_names: Sequence[str], path: Path) -> None:
    """Write the energy alone, cut out of an energy+gradient graph.

    Keeps only the nodes the ``energy`` output depends on: the forward half of the graph,
    bit-identical to the energies the full graph returns and as fast as a separate export of
    the forward pass, for none of that export's cost (several seconds of tracing per model).
    """
    onnx.utils.extract_model(str(energy_and_grad), str(path), list(input_names), ["energy"])


def export_decoder_onnx(
    decoder: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    path: Path,
) -> None:
    """Write y = Dec(x, z) (or Dec(z)) as an ONNX graph with output ``y``."""
    _onnx_export(_Positional(decoder.eval(), input_names), example_inputs, input_names, ["y"], path)


def _onnx_export(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    output_names: Sequence[str],
    path: Path,
) -> None:
    with _quiet():
        torch.onnx.export(
            module,
            tuple(example_inputs),
            str(path),
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_shapes=(_dynamic_batch(len(example_inputs)),),
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,  # one self-contained file, hashed as one artifact
            verbose=False,
        )


class _Positional(nn.Module):
    """torch.export wants named forward arguments; this gives every energy the same ones."""

    def __init__(self, energy: nn.Module, input_names: Sequence[str]) -> None:
        super().__init__()
        self.energy = energy
        self.input_names = tuple(input_names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.energy(*inputs)
        return out


def export_pt2(
    module: nn.Module,
    example_inputs: Sequence[torch.Tensor],
    input_names: Sequence[str],
    path: Path,
) -> None:
    """Write the energy as a torch.export program with a dynamic batch axis."""
    program = torch.export.export(
        _Positional(module.eval(), input_names),
        tuple(example_inputs),
        dynamic_shapes=(_dynamic_batch(len(example_inputs)),),
    )
    torch.export.save(program, str(path))
