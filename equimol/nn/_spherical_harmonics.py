"""Spherical-harmonic embedding of edge directions."""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

__all__ = ["SphericalHarmonicEdgeEmbedding"]


class SphericalHarmonicEdgeEmbedding(nn.Module):
    """Real spherical harmonics Y^l (l = 0..l_max) of the edge direction.

    Wraps ``e3nn.o3.SphericalHarmonics`` with ``normalize=True``: only the direction of the
    edge vector matters, its length enters through a radial basis.

    Args:
        l_max: highest degree.
        normalization: ``"component"`` (each component has mean square 1 on the sphere),
            ``"norm"`` or ``"integral"``, as in e3nn.
        parity: if True the harmonics carry their natural parity (-1)^l (irreps
            ``1x0e + 1x1o + 1x2e + ...``, O(3)); if False all are labelled even (SO(3) only).

    Shapes:
        ``edge_vec: [E, 3]`` Å -> ``[E, irreps_out.dim]``.
    """

    def __init__(self, l_max: int, normalization: str = "component", parity: bool = True) -> None:
        super().__init__()
        if l_max < 0:
            raise ValueError(f"SphericalHarmonicEdgeEmbedding: l_max must be >= 0, got {l_max}")
        self.l_max = int(l_max)
        self.irreps_in = o3.Irreps("1x1o" if parity else "1x1e")
        self.irreps_out = o3.Irreps.spherical_harmonics(l_max, p=-1 if parity else 1)
        self.sh = o3.SphericalHarmonics(self.irreps_out, normalize=True, normalization=normalization)

    def forward(self, edge_vec: torch.Tensor) -> torch.Tensor:
        return self.sh(edge_vec)
