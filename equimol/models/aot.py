"""Ahead-of-time compiled potentials: one ``.pt2`` file with energies and forces as machine code.

:func:`export_aot` traces the inference graph of an
:class:`~equimol.models.equivariant.EquivariantPotential` (per-atom energies, forces and the
gradient with respect to the edge vectors, the backward pass written out as ordinary
operations) and compiles it with AOTInductor into a package. :func:`load_aot` reads it back as
an :class:`AOTPotential`: no tracing or compiling when it is loaded, and no Python between the
operations when it runs, which is what a small molecule's call time is made of.
:class:`~equimol.calculator.EquimolCalculator` takes the file directly::

    from equimol.models.aot import export_aot
    export_aot(model, "ethanol.pt2")                  # once: tens of seconds to minutes
    atoms.calc = EquimolCalculator("ethanol.pt2")     # then: milliseconds to load

The package computes on the device and in the dtype of the model it was compiled from
(compile on a GPU machine for a GPU package). Its inputs are the edges of a radius graph, so
the neighbour list stays outside: ``types [N]`` int64 species indices (positions in
:attr:`AOTPotential.atomic_numbers`), ``edge_vec [E, 3]`` Å (``pos[j] - pos[i] + shift @ cell``)
and ``edge_index [2, E]`` int64 (row 0 neighbour j, row 1 centre i); any N >= 1 and E >= 0.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from equimol.models._traced import trace_edge_gradients

__all__ = ["AOTPotential", "export_aot", "load_aot", "AOT_FORMAT"]

AOT_FORMAT = "equimol-aot-1"
"""Written into every package's metadata; :func:`load_aot` refuses other files."""

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


def export_aot(model: nn.Module, path: str | os.PathLike, autotune: bool = True) -> Path:
    """Compile ``model`` (an :class:`~equimol.models.equivariant.EquivariantPotential`) ahead
    of time into the package ``path`` (``.pt2``) and return its path.

    The model is copied, so its own parameters and mode are left as they are. Compiling
    takes tens of seconds for a small network (a C++ compiler must be installed); the
    package then loads in milliseconds. ``autotune`` lets the compiler time its own
    matrix-product kernels against the library's and keep the faster (about a third more
    compile time; on a 9-atom molecule, a tenth off the package's time).
    """
    network = getattr(model, "network", None)
    if network is None or not hasattr(model, "atomic_numbers") or not hasattr(model, "cutoff"):
        raise TypeError(
            f"export_aot needs an EquivariantPotential (a model with 'network', 'atomic_numbers' "
            f"and 'cutoff'), got {type(model).__name__}"
        )
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"{path}: an AOTInductor package must be named *.pt2")
    network = copy.deepcopy(network).eval()
    parameter = next(network.parameters())
    dtype, device = parameter.dtype, parameter.device
    params = {name: p.detach() for name, p in network.named_parameters()}
    buffers = {name: b.detach() for name, b in network.named_buffers()}
    types, edge_vec, edge_index = _example_graph(len(model.atomic_numbers), dtype, device)
    graph = trace_edge_gradients(network, params, buffers, types, edge_vec, edge_index, differentiable=False)
    atoms = torch.export.Dim("atoms", min=1, max=_MAX_EDGES)
    edges = torch.export.Dim("edges", min=0, max=_MAX_EDGES)
    with torch.no_grad():
        program = torch.export.export(
            _InferenceGraph(graph, params, buffers),
            (types, edge_vec, edge_index),
            dynamic_shapes=({0: atoms}, {0: edges}, {1: edges}),
        )
    metadata = {
        "equimol.format": AOT_FORMAT,
        "equimol.cutoff": repr(float(model.cutoff)),
        "equimol.atomic_numbers": ",".join(str(z) for z in model.atomic_numbers),
        "equimol.dtype": str(dtype).removeprefix("torch."),
        "equimol.device": device.type,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    # freezing folds what depends on the weights alone (weight normalisations, reshapes) into
    # constants: a third off a small molecule's call
    options = {"aot_inductor.metadata": metadata, "freezing": True}
    if autotune:
        options.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=options)
    return path


class AOTPotential:
    """A package written by :func:`export_aot`, ready to run.

    Attributes:
        cutoff: radius of the graph the model expects, Å.
        atomic_numbers: the elements it knows; species index ``k`` is ``atomic_numbers[k]``.
        dtype, device: of its inputs and outputs.

    Call it with ``types [N]``, ``edge_vec [E, 3]`` Å and ``edge_index [2, E]`` (see the module
    docstring) to get per-atom energies ``[N]`` eV, forces ``[N, 3]`` eV/Å and
    ``dE/d edge_vec [E, 3]`` eV/Å (for the virial). Nothing is differentiable.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such AOT package")
        try:
            self._package = torch._inductor.aoti_load_package(str(self.path))
            metadata = self._package.get_metadata()
        except Exception as error:
            raise ValueError(f"{self.path}: not an AOTInductor package ({error})") from error
        if metadata.get("equimol.format") != AOT_FORMAT:
            raise ValueError(
                f"{self.path}: not an equimol AOT package (format {metadata.get('equimol.format')!r}, "
                f"expected {AOT_FORMAT!r}); write one with equimol.models.aot.export_aot"
            )
        self.cutoff = float(metadata["equimol.cutoff"])
        self.atomic_numbers = [int(z) for z in metadata["equimol.atomic_numbers"].split(",")]
        self.dtype = getattr(torch, metadata["equimol.dtype"])
        self.device = torch.device(metadata["equimol.device"])
        # the package's own runner, called with the flat list of inputs; the public wrapper
        # re-reads the input and output specs at every call, a good part of a small call
        self._run = getattr(self._package, "loader", None)
        z_to_type = np.full(max(self.atomic_numbers) + 1, -1, dtype=np.int64)
        z_to_type[self.atomic_numbers] = np.arange(len(self.atomic_numbers))
        self._z_to_type = z_to_type

    def species_index(self, numbers: np.ndarray) -> np.ndarray:
        """Species indices ``[N]`` of atomic numbers ``[N]``; ValueError naming unknown elements."""
        numbers = np.asarray(numbers, dtype=np.int64)
        inside = (numbers >= 0) & (numbers < len(self._z_to_type))
        types = np.where(inside, self._z_to_type[np.where(inside, numbers, 0)], -1)
        if (types < 0).any():
            unknown = sorted(set(numbers[types < 0].tolist()))
            raise ValueError(
                f"{self.path}: atomic number(s) {unknown} not known to this model; "
                f"it was built for species {self.atomic_numbers}"
            )
        return types

    def __call__(
        self, types: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._run is not None:
            return tuple(self._run.boxed_run([types, edge_vec, edge_index]))
        return tuple(self._package(types, edge_vec, edge_index))


def load_aot(path: str | os.PathLike) -> AOTPotential:
    """Load a package written by :func:`export_aot`."""
    return AOTPotential(path)
