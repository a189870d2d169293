"""Ahead-of-time compiled potentials: one ``.pt2`` file with energies and forces as machine code.

:func:`export_aot` traces the inference graph of an
:class:`~equimol.models.equivariant.EquivariantPotential` (per-atom energies, forces and the
gradient with respect to the edge vectors, the backward pass written out as ordinary
operations) and compiles it with AOTInductor into a package. The engines run it through
:class:`equimol.engines.Package`: no tracing or compiling when it is loaded, and no Python
between the operations when it runs, which is what a small molecule's call time is made of.
:class:`~equimol.engines.EquimolCalculator` takes the file directly::

    from equimol.models.aot import export_aot
    export_aot(model, "ethanol.pt2")                  # once: tens of seconds to minutes
    atoms.calc = EquimolCalculator("ethanol.pt2")     # then: milliseconds to load

The package computes on the device and in the dtype of the model it was compiled from
(compile on a GPU machine for a GPU package). Its inputs are the edges of a radius graph, so
the neighbour list stays outside: ``types [N]`` int64 species indices (positions in
``atomic_numbers`` in its metadata), ``edge_vec [E, 3]`` Å (``pos[j] - pos[i] + shift @ cell``)
and ``edge_index [2, E]`` int64 (row 0 neighbour j, row 1 centre i); any N >= 1 and E >= 0.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from torch import nn

from equimol.models._traced import trace_edge_gradients
from equimol.models.equivariant import EquivariantPotential

__all__ = ["export_aot", "export_program", "AOT_FORMAT"]

AOT_FORMAT = "equimol-aot-1"
"""Written into every package's metadata; the engines refuse other files."""

_MAX_EDGES = 2**31 - 1


class _InferenceGraph(nn.Module):
    """The traced graph with the network's weights as buffers, which export makes constants."""

    def __init__(self, graph: torch.fx.GraphModule, params: dict, buffers: dict) -> None:
        super().__init__()
        self.graph = graph
        self.parameter_names = list(params)
        self.buffer_names = list(buffers)
        for index, name in enumerate(self.parameter_names):
            self.register_buffer(f"parameter_{index}", params[name])
        for index, name in enumerate(self.buffer_names):
            self.register_buffer(f"buffer_{index}", buffers[name])

    def forward(self, types: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor):
        params = {name: getattr(self, f"parameter_{i}") for i, name in enumerate(self.parameter_names)}
        buffers = {name: getattr(self, f"buffer_{i}") for i, name in enumerate(self.buffer_names)}
        return self.graph(params, buffers, types, edge_vec, edge_index)


def _example_graph(num_species: int, dtype: torch.dtype, device: torch.device):
    """A complete graph on five atoms of every species: inputs to trace with (sizes only matter
    in that they are not 0 or 1, which tracing would specialise on)."""
    generator = torch.Generator().manual_seed(0)
    num_atoms = 5
    pos = torch.rand(num_atoms, 3, generator=generator, dtype=torch.float64) * 2.0
    centre, neighbour = torch.meshgrid(torch.arange(num_atoms), torch.arange(num_atoms), indexing="ij")
    keep = centre != neighbour
    edge_index = torch.stack([neighbour[keep], centre[keep]])
    edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
    types = torch.arange(num_atoms) % num_species
    return types.to(device), edge_vec.to(device=device, dtype=dtype), edge_index.to(device)


def export_program(model: EquivariantPotential) -> torch.export.ExportedProgram:
    """The inference graph of ``model`` as a ``torch.export`` program: the step before compiling.

    Inputs ``types [N]``, ``edge_vec [E, 3]`` Å, ``edge_index [2, E]`` (any N >= 1, E >= 0);
    outputs per-atom energies ``[N]`` eV, forces ``[N, 3]`` eV/Å and ``dE/d edge_vec [E, 3]``
    eV/Å. The weights are constants of the program (the model is copied; its own parameters
    and mode are left as they are). ``program.module()`` runs it without compiling, which is
    how the tests check every architecture's graph against the eager model.
    """
    if not isinstance(model, EquivariantPotential):
        raise TypeError(f"export_program needs an EquivariantPotential, got {type(model).__name__}")
    network = copy.deepcopy(model.network).eval()
    parameter = next(network.parameters())
    dtype, device = parameter.dtype, parameter.device
    params = {name: p.detach() for name, p in network.named_parameters()}
    buffers = {name: b.detach() for name, b in network.named_buffers()}
    types, edge_vec, edge_index = _example_graph(len(model.atomic_numbers), dtype, device)
    graph = trace_edge_gradients(network, params, buffers, types, edge_vec, edge_index, differentiable=False)
    atoms = torch.export.Dim("atoms", min=1, max=_MAX_EDGES)
    edges = torch.export.Dim("edges", min=0, max=_MAX_EDGES)
    with torch.no_grad():
        return torch.export.export(
            _InferenceGraph(graph, params, buffers),
            (types, edge_vec, edge_index),
            dynamic_shapes=({0: atoms}, {0: edges}, {1: edges}),
        )


def export_aot(model: EquivariantPotential, path: str | os.PathLike, autotune: bool = True) -> Path:
    """Compile ``model`` (an :class:`~equimol.models.equivariant.EquivariantPotential`) ahead
    of time into the package ``path`` (``.pt2``) and return its path.

    The model is copied, so its own parameters and mode are left as they are. Compiling
    takes tens of seconds for a small network (a C++ compiler must be installed); the
    package then loads in milliseconds. ``autotune`` lets the compiler time its own
    matrix-product kernels against the library's and keep the faster (about a third more
    compile time; on a 9-atom molecule, a tenth off the package's time).
    """
    if not isinstance(model, EquivariantPotential):
        raise TypeError(f"export_aot needs an EquivariantPotential, got {type(model).__name__}")
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"{path}: an AOTInductor package must be named *.pt2")
    parameter = next(model.network.parameters())
    program = export_program(model)
    metadata = {
        "equimol.format": AOT_FORMAT,
        "equimol.cutoff": repr(float(model.cutoff)),
        "equimol.atomic_numbers": ",".join(str(z) for z in model.atomic_numbers),
        "equimol.dtype": str(parameter.dtype).removeprefix("torch."),
        "equimol.device": parameter.device.type,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # freezing folds what depends on the weights alone (weight normalisations, reshapes) into
    # constants: a third off a small molecule's call
    options = {"aot_inductor.metadata": metadata, "freezing": True}
    if autotune:
        options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    return path
