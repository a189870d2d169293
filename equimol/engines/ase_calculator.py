"""``EquimolCalculator``: an ASE calculator over any backend of a trained equimol potential.

The potential comes from a checkpoint written by ``equimol fit`` (``.ckpt``; the EMA weights
when EMA was on), from an ahead-of-time compiled package (``.pt2``, written by
``equimol compile``: the fastest calls, for MD), from a model object (any
:class:`~equimol.models.Potential`, or a ``PotentialModule``), or from an
:class:`~equimol.engines.InferenceBackend` made by hand. Energies are in eV, forces in eV/Å,
stress in eV/Å³ in Voigt order (xx, yy, zz, yz, xz, xy), ASE's sign convention.

Given a list of models (a committee, :class:`~equimol.engines.Committee`), the results are
the members' mean, and ``results["energy_std"]`` (eV), ``results["forces_std"]`` ([N, 3]
eV/Å) and, with stress, ``results["stress_std"]`` (Voigt, eV/Å³) their spread.

Example::

    from ase.optimize import BFGS
    atoms.calc = EquimolCalculator("runs/quickstart/checkpoints/last.ckpt")
    BFGS(atoms).run(fmax=0.01)
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import ase
import numpy as np
import torch
import vesin
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from equimol import _keys as K
from equimol.data.graph import atoms_to_graph
from equimol.engines.backends import InferenceBackend, load_backend
from equimol.engines.committee import ENERGY_STD, FORCES_STD, STRESS_STD, Committee

__all__ = ["EquimolCalculator"]


class EquimolCalculator(Calculator):
    """ASE calculator of energy, free energy (= energy), forces and, for cells periodic along
    all three axes, stress.

    Args:
        model: a checkpoint path (``.ckpt``), a package (``.pt2``), a model object, or an
            :class:`~equimol.engines.InferenceBackend`; or a list of them, a committee: the
            results are then the members' mean, with ``energy_std`` (eV), ``forces_std``
            (``[N, 3]`` eV/Å) and, with stress, ``stress_std`` (Voigt, eV/Å³) beside them.
        device: torch device (``"cpu"``, ``"cuda"``...).
        dtype: floating dtype of the computation (``torch.float64`` for tight energy
            conservation in MD); default: the model's own. A package runs in the dtype it was
            compiled for.
        cutoff: radius of the graph, Å; default the model's cutoff (a larger one is allowed).
        compile: True compiles the model (energy and forces as one compiled graph; the first
            call takes tens of seconds, later calls are faster), False runs it eagerly, None
            (default) keeps the model's own setting. Packages are compiled already.

    :attr:`backend` does the computing (see :func:`~equimol.engines.load_backend`); the
    calculator only turns the atoms into a radius graph and the outputs into ASE's results.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: str | os.PathLike | nn.Module | InferenceBackend | Sequence[str | os.PathLike | nn.Module],
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        cutoff: float | None = None,
        compile: bool | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.backend = load_backend(model, device=device, dtype=dtype, compile=compile)
        if isinstance(self.backend, Committee):  # its spread is a property too
            self.implemented_properties = [*type(self).implemented_properties, ENERGY_STD, FORCES_STD, STRESS_STD]
        self.cutoff = _graph_cutoff(cutoff, self.backend.cutoff)
        # one neighbour list for all calls: it keeps its buffers between structures
        self._neighbours = vesin.NeighborList(cutoff=self.cutoff, full_list=True) if self.cutoff > 0 else None

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

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        want_stress = "stress" in properties or STRESS_STD in properties
        if want_stress and not bool(np.all(self.atoms.get_pbc())):
            raise PropertyNotImplementedError("stress needs a cell that is periodic along all three axes")
        graph = atoms_to_graph(
            self.atoms,
            self.cutoff,
            dtype=self.backend.dtype,
            on_isolated="ignore",
            source="EquimolCalculator",
            neighbour_list=self._neighbours,
        )
        if self.backend.device.type != "cpu":  # the graph is built on the CPU; moving it there again costs a copy per field
            graph = graph.to(self.backend.device)
        out = self.backend.compute(graph, compute_stress=want_stress)
        energy = out[K.ENERGY].double().sum().item()
        forces = out[K.FORCES].cpu().numpy().astype(np.float64)
        stress = full_3x3_to_voigt_6_stress(out[K.STRESS].cpu().double().numpy().reshape(3, 3)) if want_stress else None
        if not (math.isfinite(energy) and np.isfinite(forces).all() and (stress is None or np.isfinite(stress).all())):
            raise _non_finite_error(self.atoms, energy, forces, stress, out.get(K.PER_ATOM_ENERGY))
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
        if stress is not None:
            self.results["stress"] = stress
        if ENERGY_STD in out:  # a committee's spread
            self.results[ENERGY_STD] = out[ENERGY_STD].double().sum().item()
            self.results[FORCES_STD] = out[FORCES_STD].cpu().numpy().astype(np.float64)
            if stress is not None:
                self.results[STRESS_STD] = full_3x3_to_voigt_6_stress(
                    out[STRESS_STD].cpu().double().numpy().reshape(3, 3))


def _non_finite_error(atoms: ase.Atoms, energy: float, forces: np.ndarray, stress: np.ndarray | None,
                      per_atom: torch.Tensor | None) -> ValueError:
    """The error for a result that is not finite, naming the property and the atoms: no NaN
    may reach a dynamics or an optimizer as a result (ASE would carry on with it)."""
    symbols = atoms.get_chemical_symbols()

    def listed(indices: list[int]) -> str:
        shown = ", ".join(f"{i} ({symbols[i]})" for i in indices[:10])
        return shown + (f" and {len(indices) - 10} more" if len(indices) > 10 else "")

    where = f"{atoms.get_chemical_formula()} ({len(atoms)} atoms)"
    hint = "; atoms far closer than in the training data, or weights that are not finite, are the usual causes"
    rows = np.flatnonzero(~np.isfinite(forces).all(axis=1)).tolist()
    if not math.isfinite(energy):
        bad = [] if per_atom is None else torch.nonzero(~torch.isfinite(per_atom.detach().reshape(-1)))
        bad = bad if isinstance(bad, list) else bad.reshape(-1).tolist()
        if bad:
            detail = f" (from the atoms {listed(bad)})"
        else:
            detail = f"; the forces on atoms {listed(rows)} are not finite either" if rows else ""
        return ValueError(f"EquimolCalculator: the model gave a non-finite energy ({energy}) for {where}{detail}{hint}")
    if rows:
        return ValueError(
            f"EquimolCalculator: the model gave non-finite forces on atoms {listed(rows)} of {where}{hint}"
        )
    return ValueError(f"EquimolCalculator: the model gave a non-finite stress ({stress.tolist()}) for {where}{hint}")


def _graph_cutoff(requested: float | None, model_cutoff: float) -> float:
    """The radius of the calculator's graphs, Å: ``requested`` (at least the model's cutoff)
    or the model's own; ValueError when ``requested`` is too short."""
    if requested is None:
        return float(model_cutoff)
    if float(requested) < float(model_cutoff):
        raise ValueError(
            f"cutoff={requested} Å is smaller than the model's cutoff of {float(model_cutoff)} Å: "
            "the graph would miss neighbours the model was trained with"
        )
    return float(requested)
