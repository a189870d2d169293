"""Assembled models: the equivariant potential, the baselines and the VAEs.

Every potential subclasses :class:`Potential` (the contract: ``cutoff``, ``atomic_numbers``,
``species_index``, ``set_statistics``): ``forward(data)`` returns ``energy [B]`` eV,
``forces [N, 3]`` eV/Å as ``-dE/dpos`` from autograd, and ``stress [B, 3, 3]`` eV/Å³ when asked.
A config names a model by its import path (``equimol.models.EquivariantPotential``, or a
user's own ``my_package.MyPotential``).
"""

from equimol.models.base import Potential, num_structures, structure_index
from equimol.models.equivariant import EquivariantPotential
from equimol.models.feature_mlp import FeatureMLP
from equimol.models.linear import LinearModel
from equimol.models.pair import PairNN
from equimol.models.species import ALL_ELEMENTS, SpeciesIndex, species_to_atomic_numbers

__all__ = [
    "Potential",
    "num_structures",
    "structure_index",
    "EquivariantPotential",
    "FeatureMLP",
    "PairNN",
    "LinearModel",
    "SpeciesIndex",
    "species_to_atomic_numbers",
    "ALL_ELEMENTS",
]
