"""Assembled models: the equivariant potential, the baselines and the VAEs.

Every potential subclasses :class:`Potential`: ``forward(data)`` returns ``energy [B]`` eV,
``forces [N, 3]`` eV/Å as ``-dE/dpos`` from autograd, and ``stress [B, 3, 3]`` eV/Å³ when asked.
"""

from equimol.models.base import Potential, num_structures, structure_index
from equimol.models.equivariant import EquivariantPotential
from equimol.models.export import export_potential, load_exported
from equimol.models.feature_mlp import FeatureMLP
from equimol.models.linear import LinearModel
from equimol.models.pair import PairNN
from equimol.models.registry import MODELS, ModelRegistry, resolve_model_class

__all__ = [
    "Potential",
    "num_structures",
    "structure_index",
    "EquivariantPotential",
    "FeatureMLP",
    "PairNN",
    "LinearModel",
    "export_potential",
    "load_exported",
    "MODELS",
    "ModelRegistry",
    "resolve_model_class",
]
