"""Export an :class:`~equimol.models.equivariant.EquivariantPotential` for use outside Python.

The exported file is a TorchScript module (``torch.jit.save``) whose ``forward`` takes plain
tensors and computes forces with autograd inside, so it runs from C++ (``torch::jit::load``,
for example in a LAMMPS or ASE-like driver) or from Python without equimol::

    energy, forces = module(pos, z, edge_index, edge_shift, cell, batch)

with ``pos [N, 3]`` Å, ``z [N]`` int64 atomic numbers, ``edge_index [2, E]`` int64 (row 0
neighbour j, row 1 centre i), ``edge_shift [E, 3]`` lattice shifts (float, same dtype as
``pos``), ``cell [B, 3, 3]`` Å and ``batch [N]`` int64 structure index; it returns
``energy [B]`` eV and ``forces [N, 3]`` eV/Å. The graph size is free (scripted, not traced).
Inputs must have the dtype and device of the model when it was exported. Forces need autograd,
so do not call the module inside ``torch.no_grad()`` or ``torch.inference_mode()``
(TorchScript cannot switch gradient mode back on inside the module).

TorchScript is deprecated from PyTorch 2.10 on (it warns) but still works in 2.13. For fast
inference from Python (ASE), :func:`equimol.models.aot.export_aot` writes an ahead-of-time
compiled package instead.
"""

from __future__ import annotations

import copy
import os
from typing import Tuple

import torch
from e3nn.util import jit as e3nn_jit
from e3nn.util.jit import compile_mode
from torch import nn

from equimol.models.equivariant import EquivariantPotential

__all__ = ["ExportablePotential", "export_potential", "load_exported"]


@compile_mode("script")
class ExportablePotential(nn.Module):
    """Tensor-only inference wrapper: ``(pos, z, edge_index, edge_shift, cell, batch) -> (energy, forces)``."""

    def __init__(self, model: EquivariantPotential) -> None:
        super().__init__()
        self.network = model.network
        self.register_buffer("z_to_type", model.z_to_type.clone())
        self.cutoff = float(model.cutoff)
        self.known_species = str(model.atomic_numbers)

    def forward(
        self,
        pos: torch.Tensor,
        z: torch.Tensor,
        edge_index: torch.Tensor,
        edge_shift: torch.Tensor,
        cell: torch.Tensor,
        batch: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Energies ``[B]`` eV and forces ``[N, 3]`` eV/Å; see the module docstring for the inputs."""
        outside = (z < 0) | (z >= self.z_to_type.shape[0])
        types = self.z_to_type[z.clamp(0, self.z_to_type.shape[0] - 1)]
        if bool((outside | (types < 0)).any()):
            raise ValueError("atomic number not known to this model; it knows " + self.known_species)
        pos = pos.detach().requires_grad_(True)
        j = edge_index[0]
        i = edge_index[1]
        shifts = torch.einsum("ek,ekl->el", edge_shift.to(pos.dtype), cell[batch[i]])
        per_atom = self.network(types, pos[j] - pos[i] + shifts, edge_index)
        energy = torch.zeros(cell.shape[0], dtype=per_atom.dtype, device=per_atom.device)
        energy = energy.index_add(0, batch, per_atom)
        grads = torch.autograd.grad([energy.sum()], [pos])
        forces = grads[0]
        if forces is None:
            forces = torch.zeros_like(pos)
        return energy.detach(), -forces


def export_potential(model: EquivariantPotential, path: str | os.PathLike) -> torch.jit.ScriptModule:
    """Script ``model`` for inference (a copy; ``model`` is untouched) and save it to ``path``.

    Uses ``e3nn.util.jit.compile``, which scripts or traces each e3nn module as it declares.
    Returns the scripted module.
    """
    wrapper = ExportablePotential(copy.deepcopy(model).eval())
    for parameter in wrapper.parameters():
        parameter.requires_grad_(False)
    scripted = e3nn_jit.compile(wrapper)
    torch.jit.save(scripted, str(path))
    return scripted


def load_exported(path: str | os.PathLike, map_location: str | torch.device | None = None) -> torch.jit.ScriptModule:
    """Load a module saved by :func:`export_potential` (needs only PyTorch)."""
    return torch.jit.load(str(path), map_location=map_location)
