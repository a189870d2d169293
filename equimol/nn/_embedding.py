"""Embedding of the chemical species of each atom."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

__all__ = ["SpeciesEmbedding"]


class SpeciesEmbedding(nn.Module):
    """One-hot of the species index followed by a linear map to scalar features.

    Args:
        num_species: number of species; inputs are type indices in ``[0, num_species)``
            (not atomic numbers: the model maps those to indices).
        irreps_out: output irreps, scalars only, e.g. ``"32x0e"``.

    Shapes:
        ``types: [N]`` int64 -> ``[N, irreps_out.dim]``.
    """

    def __init__(self, num_species: int, irreps_out: o3.Irreps | str) -> None:
        super().__init__()
        if num_species < 1:
            raise ValueError(f"SpeciesEmbedding: num_species must be >= 1, got {num_species}")
        self.num_species = int(num_species)
        self.irreps_out = o3.Irreps(irreps_out)
        if self.irreps_out.lmax > 0:
            raise ValueError(f"SpeciesEmbedding: irreps_out must be scalars, got {self.irreps_out}")
        self.linear = o3.Linear(o3.Irreps(f"{num_species}x0e"), self.irreps_out)

    def forward(self, types: torch.Tensor) -> torch.Tensor:
        dtype = self.linear.weight.dtype
        one_hot = torch.nn.functional.one_hot(types, self.num_species).to(dtype)
        return self.linear(one_hot)
