"""The interface every inference backend offers (:class:`InferenceBackend`).

It lives apart from the backends themselves (:mod:`equimol.engines.backends`) so that a
backend built on other backends, such as :class:`~equimol.engines.committee.Committee`,
and the module that loads them can both import it.
"""

from __future__ import annotations

import abc

import torch
from torch_geometric.data import Data

from equimol.models.species import SpeciesIndex

__all__ = ["InferenceBackend"]


class InferenceBackend(abc.ABC):
    """A trained potential, ready to compute.

    Attributes:
        cutoff: radius of the graphs it needs, Å.
        atomic_numbers: the elements it knows (species ``k`` is ``atomic_numbers[k]``).
        dtype: floating dtype of its inputs and outputs.
        device: where it computes.
    """

    cutoff: float
    atomic_numbers: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def __init__(self, cutoff: float, atomic_numbers: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 name: str) -> None:
        self.cutoff = float(cutoff)
        self.atomic_numbers = tuple(atomic_numbers)
        self.dtype = dtype
        self.device = torch.device(device)
        self._species_index = SpeciesIndex(self.atomic_numbers, owner=name)

    def species_index(self, z: torch.Tensor) -> torch.Tensor:
        """Species indices ``[N]`` of atomic numbers ``z [N]``; ValueError for unknown elements."""
        return self._species_index(z)

    @abc.abstractmethod
    def compute(self, graph: Data, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        """Energies and forces of the structures in ``graph`` (on :attr:`device`, in :attr:`dtype`).

        Returns:
            ``energy [B]`` eV, ``forces [N, 3]`` eV/Å and, when ``compute_stress``,
            ``stress [B, 3, 3]`` eV/Å³ (ASE's sign; zeros for structures not periodic along
            all three axes). Nothing is differentiable. A backend may add outputs: a
            committee adds ``energy_std [B]``, ``forces_std [N, 3]`` (and ``stress_std``).
        """
