"""``EquimolCalculator``: an ASE calculator over a trained equimol potential.

The potential comes from a checkpoint written by ``equimol fit`` (``.ckpt``; the EMA weights
when EMA was on), from a file written by ``equimol.models.export.export_potential``, from an
ahead-of-time compiled package (``.pt2``, written by ``equimol.models.aot.export_aot``: the
fastest calls, for MD), or from a model object (any ``nn.Module`` with the ``Potential``
interface, or a ``PotentialModule``).
Energies are in eV, forces in eV/Å, stress in eV/Å³ in Voigt order (xx, yy, zz, yz, xz, xy),
ASE's sign convention.

Example::

    from ase.optimize import BFGS
    atoms.calc = EquimolCalculator("runs/quickstart/checkpoints/last.ckpt")
    BFGS(atoms).run(fmax=0.01)
"""

from __future__ import annotations

import copy

import os
from pathlib import Path
from typing import Sequence

import ase
import numpy as np
import torch
import vesin
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from equimol import _keys as K
from equimol.data.graph import atoms_to_graph, structure_arrays
from equimol.models._traced import virial_from_edge_gradients
from equimol.models.aot import AOTPotential

__all__ = ["EquimolCalculator", "load_model"]


def load_model(source: str | os.PathLike | nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """The potential in ``source``: a ``.ckpt`` from ``equimol fit``, an exported file, or a
    model object (a ``PotentialModule`` gives its ``model``), in eval mode on ``device``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such checkpoint or exported model")
        if path.suffix == ".ckpt":
            from equimol.train.module import load_potential

            model = load_potential(str(path), map_location=device).model
        else:
            try:
                from equimol.models.export import load_exported
            except ImportError:  # pragma: no cover - exporter not available
                load_exported = torch.jit.load
            try:
                model = load_exported(path, map_location=device)
            except Exception as error:
                raise ValueError(
                    f"{path}: neither a Lightning checkpoint (.ckpt) nor an exported equimol model ({error})"
                ) from error
    elif isinstance(source, nn.Module):
        # a copy: moving, casting or switching to eval mode must not touch the caller's model
        model = copy.deepcopy(source)
        if not isinstance(model, torch.jit.ScriptModule):
            model = getattr(model, "model", model)
    else:
        raise TypeError(f"expected a checkpoint path or a torch.nn.Module, got {type(source).__name__}")
    return model.to(device).eval()


class EquimolCalculator(Calculator):
    """ASE calculator of energy, free energy (= energy), forces and, for cells periodic along
    all three axes, stress.

    Args:
        model: a checkpoint path (``.ckpt``), an ahead-of-time compiled package (``.pt2``),
            an exported TorchScript model path, or a model object.
        device: torch device for the model (``"cpu"``, ``"cuda"``...).
        dtype: floating dtype of the computation (``torch.float64`` for tight energy
            conservation in MD); default: the dtype of the model's parameters. A model object
            given with another dtype is converted (the object itself is left unchanged).
        cutoff: radius of the graph, Å; default ``model.cutoff`` (it must be set one way).
        compile: True compiles the model: energy and forces as one compiled graph for models
            with ``set_compile`` (:class:`~equimol.models.EquivariantPotential`), otherwise
            ``torch.compile`` of its ``energy`` (dynamic shapes). The first call then takes
            tens of seconds, later calls are faster (see the performance page of the docs).
            False runs eagerly; None (default) keeps the model's own setting (a model
            trained with ``compile: true`` stays compiled). Exported models and ``.pt2``
            packages are compiled already (a package runs on the device and in the dtype it
            was compiled for).

    The calculator holds its own copy of the model, with gradients of the parameters
    switched off (only the gradient with respect to positions and strain is taken).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: str | os.PathLike | nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cutoff: float | None = None,
        compile: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.aot: AOTPotential | None = None
        if isinstance(model, (str, os.PathLike)) and Path(model).suffix == ".pt2":
            self._init_aot(AOTPotential(model), dtype, cutoff)
            return
        network = load_model(model, self.device)
        model_dtype = next((p.dtype for p in network.parameters() if p.is_floating_point()), torch.float32)
        self.dtype = dtype or model_dtype
        if self.dtype != model_dtype:
            network = network.to(self.dtype)
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        self.model = network
        self.exported = isinstance(network, torch.jit.ScriptModule)
        if compile is not None and not self.exported:
            if hasattr(network, "set_compile"):  # energy and forces as one compiled graph
                network.set_compile(bool(compile))
            elif compile:
                network.energy = torch.compile(network.energy, dynamic=True)
        self.cutoff = _graph_cutoff(cutoff, getattr(network, "cutoff", None))

    def check_state(self, atoms: ase.Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation, as ASE's ``compare_atoms`` reports it, but
        with exact comparisons: ``numpy.allclose`` over each small array costs more than a
        small molecule's whole model call. A difference below ``tol`` then counts as a change
        as well, which only means computing again."""
        if self.atoms is None:
            return list(all_changes)
        to_check = set(all_changes) - set(self.ignored_changes)
        changes = []
        for name in ("cell", "pbc"):
            if name in to_check:
                to_check.discard(name)
                if not np.array_equal(np.asarray(getattr(self.atoms, name)), np.asarray(getattr(atoms, name))):
                    changes.append(name)
        previous, current = self.atoms.arrays, atoms.arrays
        changes += sorted(to_check & (set(previous) ^ set(current)))
        for name in sorted(to_check & set(previous) & set(current)):
            if not np.array_equal(previous[name], current[name]):
                changes.append(name)
        return changes

    def _init_aot(self, package: AOTPotential, dtype: torch.dtype | None, cutoff: float | None) -> None:
        if dtype is not None and dtype != package.dtype:
            raise ValueError(f"{package.path} computes in {package.dtype}; it cannot run in {dtype}")
        if self.device.type != package.device.type:
            raise ValueError(
                f"{package.path} was compiled for {package.device.type}; it cannot run on {self.device}"
            )
        self.aot = package
        self.model = None
        self.exported = False
        self.dtype = package.dtype
        self.cutoff = _graph_cutoff(cutoff, package.cutoff)
        # one neighbour list for all calls: it keeps its buffers between structures
        self._neighbours = vesin.NeighborList(cutoff=self.cutoff, full_list=True)
        self._numbers: np.ndarray | None = None
        self._types: torch.Tensor | None = None

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        periodic = bool(np.all(atoms.get_pbc()))
        want_stress = "stress" in properties
        if want_stress and not periodic:
            raise PropertyNotImplementedError("stress needs a cell that is periodic along all three axes")
        if want_stress and self.exported:
            raise PropertyNotImplementedError("an exported model computes energy and forces only")
        if self.aot is not None:
            self._calculate_aot(atoms, periodic and want_stress)
            return
        # one structure: a plain graph, no collation (the model reads it as a batch of one)
        data = atoms_to_graph(atoms, self.cutoff, dtype=self.dtype, on_isolated="ignore").to(self.device)
        if self.exported:
            batch = torch.zeros(data.pos.shape[0], dtype=torch.long, device=self.device)
            energy, forces = self.model(data.pos, data.z, data.edge_index, data.edge_shift, data.cell, batch)
            out = {K.ENERGY: energy, K.FORCES: forces}
        else:
            with torch.no_grad():  # inference: the forces need no graph beyond their own
                out = self.model(data, compute_forces=True, compute_stress=want_stress)
        energy = float(out[K.ENERGY].detach().sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[K.FORCES].detach().cpu().double().numpy(),
        }
        if K.STRESS in out and want_stress:
            stress = out[K.STRESS].detach().cpu().double().numpy().reshape(3, 3)
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)

    def _calculate_aot(self, atoms: ase.Atoms, want_stress: bool) -> None:
        """Energy, forces (and stress) from the compiled package: the neighbour list gives the
        edge vectors directly, the package the per-atom energies, forces and edge gradients.
        At a few atoms the Python around the package is a good part of the call, so the
        species indices are kept while the atomic numbers stay the same."""
        positions, cell, pbc = structure_arrays(atoms, source="EquimolCalculator")
        numbers = atoms.arrays["numbers"]
        if self._numbers is None or not np.array_equal(numbers, self._numbers):
            self._types = torch.from_numpy(self.aot.species_index(numbers)).to(self.device)
            self._numbers = numbers.copy()
        centre, neighbour, vectors = self._neighbours.compute(positions, cell, pbc.tolist(), "ijD", copy=False)
        edge_index = torch.from_numpy(np.stack((neighbour, centre)).astype(np.int64, copy=False))
        edge_vec = torch.from_numpy(vectors).to(device=self.device, dtype=self.dtype)
        per_atom, forces, edge_grad = self.aot(self._types, edge_vec, edge_index.to(self.device))
        energy = per_atom.double().sum().item()
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces.cpu().numpy().astype(np.float64),
        }
        if want_stress:  # dE/dstrain from the edge gradients, as the compiled model does, over the volume
            vectors = torch.from_numpy(vectors)
            structure = torch.zeros(len(vectors), dtype=torch.long)
            virial = virial_from_edge_gradients(vectors, edge_grad.cpu().to(vectors.dtype), structure, 1)[0]
            self.results["stress"] = full_3x3_to_voigt_6_stress(virial.numpy() / abs(np.linalg.det(cell)))


def _graph_cutoff(requested: float | None, model_cutoff: float | None) -> float:
    """The radius of the calculator's graphs, Å: ``requested`` (at least the model's cutoff)
    or the model's own; ValueError when neither is known or ``requested`` is too short."""
    value = requested if requested is not None else model_cutoff
    if value is None:
        raise ValueError("the model has no 'cutoff' attribute; pass cutoff=<Å> to EquimolCalculator")
    if model_cutoff is not None and float(value) < float(model_cutoff):
        raise ValueError(
            f"cutoff={value} Å is smaller than the model's cutoff of {float(model_cutoff)} Å: "
            "the graph would miss neighbours the model was trained with"
        )
    return float(value)
