"""Assembled models: the equivariant potential, the baselines and the VAEs."""

from equimol.models.base import Potential, num_structures, structure_index

__all__ = ["Potential", "num_structures", "structure_index"]
