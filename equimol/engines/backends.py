"""One inference interface for a trained potential, with interchangeable backends.

Every engine (the ASE calculator, and any MD code coupled to equimol) is written once against
:class:`InferenceBackend`: it hands over a radius graph and gets energies, forces and, when
asked, stress. Which backend runs the model is a choice made when it is loaded:

==================  ===========================================================================
backend             what runs
==================  ===========================================================================
:class:`Eager`      the model's own ``forward`` (any :class:`~equimol.models.Potential`)
:class:`Compiled`   the same model with energy and forces as one ``torch.compile``-d graph
                    (compiles on its first call: tens of seconds; then faster)
:class:`Package`    an ahead-of-time compiled ``.pt2`` file (``equimol compile``): machine code,
                    no Python between operations, milliseconds to load
==================  ===========================================================================

:func:`load_backend` picks one from what it is given (a checkpoint, a package, a model object).
A new backend is one subclass of :class:`InferenceBackend`; the engines need no change. Several
models run as one backend, with the spread of their predictions as an uncertainty, are a
:class:`~equimol.engines.committee.Committee`: :func:`load_backend` given a list of sources
returns one, so every engine on this interface takes a committee.

Graphs follow equimol's conventions (``equimol._keys``): ``pos [N, 3]`` Å, ``z [N]`` atomic
numbers, ``cell [B, 3, 3]`` Å, ``pbc [B, 3]``, ``edge_index [2, E]`` (row 0 neighbour j, row 1
centre i), ``edge_shift [E, 3]`` and, for several structures, ``batch [N]``.
"""

from __future__ import annotations

import copy
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.data.graph import edge_vectors
from equimol.engines.base import InferenceBackend
from equimol.engines.committee import Committee
from equimol.models._traced import outputs_from_edge_gradients
from equimol.models.aot import AOT_FORMAT
from equimol.models.base import Potential
from equimol.models.equivariant import EquivariantPotential

__all__ = ["InferenceBackend", "Eager", "Compiled", "Package", "Committee", "load_backend", "load_model"]


class Eager(InferenceBackend):
    """A :class:`~equimol.models.Potential` run through its own ``forward``.

    The backend holds its own copy of the model, in eval mode, on ``device`` and in ``dtype``
    (default: the model's), with the parameters' gradients switched off; the caller's model
    is left untouched. A model built with ``compile=True`` keeps its compiled graph.
    """

    def __init__(self, model: Potential, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        if not isinstance(model, Potential):
            raise TypeError(
                f"expected an equimol Potential (a subclass of equimol.models.Potential), got {type(model).__name__}"
            )
        model = copy.deepcopy(model)
        model_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        dtype = dtype or model_dtype
        model = model.to(device=device, dtype=dtype).eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        self.model = model
        super().__init__(model.cutoff, model.atomic_numbers, dtype, torch.device(device), type(model).__name__)

    def compute(self, graph: Data, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        with torch.no_grad():  # inference: the forces need no graph beyond their own
            out = self.model(graph, compute_forces=True, compute_stress=compute_stress)
        return {key: value.detach() for key, value in out.items()}


class Compiled(Eager):
    """:class:`Eager` with the model compiled: for an
    :class:`~equimol.models.EquivariantPotential`, energy and forces as one traced and
    ``torch.compile``-d graph (:meth:`~equimol.models.EquivariantPotential.set_compile`);
    for any other potential, ``torch.compile`` of its ``energy`` (dynamic shapes). The first
    call compiles (tens of seconds on a CPU), later calls are faster."""

    def __init__(self, model: Potential, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        super().__init__(model, device, dtype)
        if isinstance(self.model, EquivariantPotential):
            self.model.set_compile(True)
        else:
            self.model.energy = torch.compile(self.model.energy, dynamic=True)


class Package(InferenceBackend):
    """A ``.pt2`` package written by :func:`equimol.models.aot.export_aot` (``equimol compile``).

    It computes on the device type and in the dtype it was compiled for (compile on a GPU
    machine for a GPU package). A package holds compiled machine code: load only packages
    from a source you trust, as you would a program.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such package")
        try:
            package = torch._inductor.aoti_load_package(str(self.path))
            metadata = package.get_metadata()
        except Exception as error:
            raise ValueError(f"{self.path}: not an AOTInductor package ({error})") from error
        if metadata.get("equimol.format") != AOT_FORMAT:
            raise ValueError(
                f"{self.path}: not an equimol package (format {metadata.get('equimol.format')!r}, "
                f"expected {AOT_FORMAT!r}); write one with 'equimol compile'"
            )
        package_dtype = getattr(torch, metadata["equimol.dtype"])
        package_device = torch.device(metadata["equimol.device"])
        if dtype is not None and dtype != package_dtype:
            raise ValueError(f"{self.path} computes in {package_dtype}; it cannot run in {dtype}")
        if torch.device(device).type != package_device.type:
            raise ValueError(f"{self.path} was compiled for {package_device.type}; it cannot run on {device}")
        super().__init__(
            float(metadata["equimol.cutoff"]),
            tuple(int(z) for z in metadata["equimol.atomic_numbers"].split(",")),
            package_dtype,
            torch.device(device),
            str(self.path),
        )
        # the package's own runner, called with the flat list of inputs: the public wrapper
        # re-reads the input and output specs at every call, a good part of a small call
        runner = getattr(package, "loader", None)
        self._run = runner.boxed_run if runner is not None else (lambda inputs: package(*inputs))

    def edge_outputs(
        self, types: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The package's own outputs: per-atom energies ``[N]`` eV, forces ``[N, 3]`` eV/Å and
        ``dE/d edge_vec [E, 3]`` eV/Å, from species indices ``types [N]``, ``edge_vec [E, 3]`` Å
        and ``edge_index [2, E]``."""
        return tuple(self._run([types, edge_vec, edge_index]))

    def compute(self, graph: Data, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        batch = getattr(graph, K.BATCH, None)
        cell = graph.cell.reshape(-1, 3, 3)
        vectors = edge_vectors(graph.pos, graph.edge_index, graph.edge_shift, cell, batch)
        per_atom, forces, edge_grad = self.edge_outputs(self.species_index(graph.z), vectors, graph.edge_index)
        return outputs_from_edge_gradients(graph, vectors, per_atom, forces, edge_grad, compute_stress=compute_stress)


def _potential_in(source: str | os.PathLike | nn.Module, device: str | torch.device) -> Potential:
    """The potential in ``source``: loaded from a checkpoint onto ``device``, or, for a model
    object, the object itself (a Lightning module's ``model``), neither copied nor changed."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint")
        if _is_torchscript(path):
            raise ValueError(
                f"{path} is a TorchScript file; equimol no longer reads TorchScript exports. Compile the "
                "checkpoint it came from into a package instead: equimol compile CHECKPOINT model.pt2"
            )
        from equimol.train.module import load_potential

        model = load_potential(str(path), map_location=device).model
    elif isinstance(source, nn.Module):
        model = source.model if isinstance(getattr(source, "model", None), Potential) else source
    else:
        raise TypeError(f"expected a checkpoint path or a torch.nn.Module, got {type(source).__name__}")
    if not isinstance(model, Potential):
        raise TypeError(f"expected an equimol Potential, got {type(model).__name__}")
    return model


def load_model(source: str | os.PathLike | nn.Module, device: str | torch.device = "cpu") -> Potential:
    """The potential in ``source``, in eval mode on ``device``: a checkpoint (``.ckpt``) of
    ``equimol fit`` (the EMA weights when EMA was on), or a model object (a Lightning module
    gives its ``model``; the object is copied, never changed)."""
    model = _potential_in(source, device)
    if isinstance(source, nn.Module):
        model = copy.deepcopy(model)
    return model.to(device).eval()


#: What :func:`load_backend` takes for one model.
Source = str | os.PathLike | nn.Module | InferenceBackend


def load_backend(
    source: Source | Sequence[Source],
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    compile: bool | None = None,
) -> InferenceBackend:
    """The backend that runs ``source``.

    Args:
        source: a ``.pt2`` package (:class:`Package`), a checkpoint of ``equimol fit`` or a
            model object (:class:`Eager`, or :class:`Compiled` when ``compile``), or a backend
            (returned as it is); or a list of several of them, each loaded so, as one
            :class:`~equimol.engines.committee.Committee` (the mean prediction and the
            members' spread; a list of one is that one source).
        device: where to compute.
        dtype: floating dtype (default: the model's or the package's own).
        compile: True compiles the model, False runs it eagerly, None keeps the model's own
            setting (a model trained with ``compile: true`` stays compiled). Packages are
            compiled already.
    """
    if isinstance(source, (list, tuple)):
        if len(source) == 1:
            return load_backend(source[0], device, dtype, compile)
        names = [_member_name(member, position) for position, member in enumerate(source)]
        members = []
        for name, member in zip(names, source, strict=True):
            try:
                members.append(load_backend(member, device, dtype, compile))
            except (TypeError, ValueError, OSError) as error:
                raise _naming(error, name) from error
        return Committee(members, names)
    if isinstance(source, InferenceBackend):
        return source
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix == ".pt2":
        return Package(source, device, dtype)
    # the backend copies the model once; the caller's object is never changed
    model = _potential_in(source, device)
    if compile:
        return Compiled(model, device, dtype)
    backend = Eager(model, device, dtype)
    if compile is False and isinstance(backend.model, EquivariantPotential):
        backend.model.set_compile(False)
    return backend


def _naming(error: Exception, name: str) -> Exception:
    """``error`` of the same type with the committee member's name in front of its message (a
    plain ValueError or TypeError where the type takes other arguments)."""
    message = f"committee member {name}: {error}"
    try:
        return type(error)(message)
    except Exception:  # an exception class with a signature of its own
        return (TypeError if isinstance(error, TypeError) else ValueError)(message)


def _member_name(source: Source, position: int) -> str:
    """``runs/a/last.ckpt``, or ``2 (EquivariantPotential)`` for an object."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    path = getattr(source, "path", None)
    if isinstance(path, (str, os.PathLike)):
        return str(path)
    return f"{position} ({type(source).__name__})"


def _is_torchscript(path: Path) -> bool:
    """True for a file written by ``torch.jit.save`` (a zip archive with a ``code/`` folder)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist()[:64])
