"""The contract every equimol potential satisfies, and forces and stress from autograd.

A potential subclasses :class:`Potential`, declares the elements it knows and its cutoff by
calling ``super().__init__(atomic_numbers, cutoff)``, and implements :meth:`Potential.energy`,
the total energy of each structure as a differentiable function of positions and cell. The
base class turns it into ``forward(batch)``: ``energy [B]``, ``forces [N, 3] = -dE/dpos``, and
``stress [B, 3, 3] = (1/V) dE/dstrain`` for periodic structures, all by autograd.

The trainer, the engines and :mod:`equimol.testing` read only this contract:

============================  ===============================================================
``cutoff: float``             radius (Å) of the graphs the model reads; 0 for a model that
                              reads no edges (features of absolute positions)
``atomic_numbers``            ``tuple[int, ...]``: the elements it knows, species ``k`` is
                              ``atomic_numbers[k]``
``species_index(z)``          species indices ``[N]`` of atomic numbers ``[N]``; ValueError
                              for an element the model does not know
``set_statistics(stats)``     data-dependent initialisation from one
                              :class:`~equimol.data.DatasetStatistics`
``forward(data, ...)``        ``energy [B]``, ``forces [N, 3]``, ``stress [B, 3, 3]``
============================  ===============================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.data.statistics import DatasetStatistics
from equimol.models.species import SpeciesIndex, species_to_atomic_numbers

__all__ = ["Potential", "structure_index", "num_structures", "fully_periodic", "stress_from_virial"]


def structure_index(data: Data) -> torch.Tensor:
    """``batch [N]``: the structure of each atom (zeros for a single ``Data``)."""
    batch = getattr(data, K.BATCH, None)
    if batch is None:
        return torch.zeros(data.pos.shape[0], dtype=torch.long, device=data.pos.device)
    return batch


def num_structures(data: Data) -> int:
    """B, the number of structures in ``data`` (1 for a single ``Data``)."""
    return int(data.num_graphs) if getattr(data, K.BATCH, None) is not None else 1


def fully_periodic(data: Data) -> torch.Tensor:
    """``[B]`` bool: which structures are periodic along all three axes (the ones with a stress).

    Data without a ``pbc`` field counts as periodic, so its stress labels are used as given.
    """
    pbc = getattr(data, K.PBC, None)
    if pbc is None:
        return torch.ones(num_structures(data), dtype=torch.bool, device=data.pos.device)
    return pbc.reshape(-1, 3).all(dim=1)


class Potential(nn.Module):
    """Base class of equimol's potentials (see the module docstring for the contract).

    Args:
        atomic_numbers: the elements the model knows, as atomic numbers or symbols
            (``[1, 6, "O"]``); :data:`~equimol.models.species.ALL_ELEMENTS` for a model that
            treats every element alike.
        cutoff: radius of the graphs the model reads, Å (0: it reads no edges).

    Subclasses implement :meth:`energy`. ``forward`` adds forces (and stress when asked)
    by differentiating that energy, so no model has a separate force head.
    """

    cutoff: float
    atomic_numbers: tuple[int, ...]

    def __init__(self, atomic_numbers: Sequence[int | str], cutoff: float) -> None:
        super().__init__()
        cutoff = float(cutoff)
        if not (cutoff >= 0 and math.isfinite(cutoff)):
            raise ValueError(f"{type(self).__name__}: cutoff must be a finite number of Å >= 0, got {cutoff}")
        self.cutoff = cutoff
        self.atomic_numbers = species_to_atomic_numbers(atomic_numbers)
        self._species_index = SpeciesIndex(self.atomic_numbers, owner=type(self).__name__)

    def species_index(self, z: torch.Tensor) -> torch.Tensor:
        """Species indices ``[N]`` int64 of atomic numbers ``z [N]``.

        Raises:
            ValueError: an element the model was not built for (named in the message).
        """
        return self._species_index(z)

    def set_statistics(self, statistics: DatasetStatistics) -> None:
        """Initialise data-dependent parameters from training-set statistics.

        Called by the training code before the first step of a new run (not on resume) with
        the :class:`~equimol.data.DatasetStatistics` of the training split: per-species
        reference energies (eV), residual energy per atom mean and std (eV/atom), force RMS
        (eV/Å), mean number of neighbours. The base checks that the data hold only elements
        the model knows; models with shifts, scales or neighbour normalisation extend it
        (calling ``super().set_statistics``), so nobody copies numbers into a config by hand.

        Raises:
            TypeError: ``statistics`` is not a ``DatasetStatistics``.
            ValueError: the data contain elements the model does not know.
        """
        if not isinstance(statistics, DatasetStatistics):
            raise TypeError(
                f"{type(self).__name__}.set_statistics takes a DatasetStatistics, got {type(statistics).__name__}"
                " (DatasetStatistics.from_dict turns a mapping into one)"
            )
        named = set(statistics.species) | {int(z) for z in statistics.reference_energies}
        unknown = sorted(named - set(self.atomic_numbers))
        if unknown:
            raise ValueError(
                f"the training data contain atomic numbers {unknown} that are not in the species of "
                f"{type(self).__name__}: {list(self.atomic_numbers)}"
            )

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        """Energies of the structures in ``data``.

        Args:
            data: graph or batch with the fields of ``equimol._keys`` (``z``, ``edge_index``,
                ``edge_shift``, ``batch``...). Use ``pos`` and ``cell`` from the arguments,
                not from ``data``: they carry the gradient.
            pos: [N, 3] Å.
            cell: [B, 3, 3] Å.

        Returns:
            dict with ``energy [B]`` in eV, optionally ``per_atom_energy [N]``.
        """
        raise NotImplementedError

    def forward(
        self,
        data: Data,
        compute_forces: bool = True,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy, forces and (when asked, for periodic cells) stress.

        Args:
            data: a ``Data`` or PyG ``Batch``.
            compute_forces: add ``forces [N, 3]`` eV/Å as ``-dE/dpos``.
            compute_stress: add ``stress [B, 3, 3]`` eV/Å³, ``(1/V) dE/dstrain`` with ASE's sign.
                Structures that are not periodic along all three axes get zeros.

        Returns:
            dict with ``energy [B]`` and the requested derivatives. In training mode the
            derivatives are differentiable (a loss on forces can be back-propagated); in eval
            mode they are not, but the energy stays differentiable when gradients are enabled.

        Raises:
            RuntimeError: forces or stress asked inside ``torch.inference_mode()``, where
                autograd cannot run (Lightning's ``Trainer`` needs ``inference_mode=False``).
        """
        pos = data.pos
        cell = data.cell.reshape(-1, 3, 3)
        if not (compute_forces or compute_stress):
            return self.energy(data, pos, cell)
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                "forces and stress are derivatives of the energy and need autograd, which "
                "torch.inference_mode() switches off: use torch.no_grad() instead, or "
                "Trainer(inference_mode=False) with Lightning (equimol fit sets it)"
            )
        keep_energy_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            inputs = [pos]
            if compute_stress:
                # E(pos (1 + eps), cell (1 + eps)) with a symmetric strain eps at zero.
                displacement = torch.zeros_like(cell, requires_grad=True)
                strain = 0.5 * (displacement + displacement.transpose(-1, -2))
                atom_strain = strain.index_select(0, structure_index(data))  # [N, 3, 3]
                pos = pos + (pos.unsqueeze(2) * atom_strain).sum(1)
                cell = cell + torch.bmm(cell, strain)
                inputs.append(displacement)
            out = self.energy(data, pos, cell)
            grads = torch.autograd.grad(
                out[K.ENERGY].sum(),
                inputs,
                create_graph=self.training,
                retain_graph=self.training or keep_energy_graph,
                allow_unused=True,
            )
        if compute_forces:
            out[K.FORCES] = _zeros_if_none(grads[0], inputs[0]).neg()
        if compute_stress:
            out[K.STRESS] = stress_from_virial(_zeros_if_none(grads[1], inputs[1]), data)
        return out


def stress_from_virial(virial: torch.Tensor, data: Data) -> torch.Tensor:
    """``stress [B, 3, 3] = dE/dstrain / V`` eV/Å³ from ``virial = dE/dstrain [B, 3, 3]`` eV;
    zeros for structures that are not periodic along all three axes."""
    volume = torch.linalg.det(data.cell.reshape(-1, 3, 3)).abs()
    periodic = fully_periodic(data)
    volume = torch.where(periodic, volume, torch.ones_like(volume))
    return torch.where(periodic[:, None, None], virial / volume[:, None, None], torch.zeros_like(virial))


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad
