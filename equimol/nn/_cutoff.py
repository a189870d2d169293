"""Smooth cutoff envelopes: ``r [E]`` Å -> weights ``[E]`` in [0, 1], zero at and beyond r_c.

Both the value and the first derivative vanish at the cutoff, so energies stay continuous
and forces stay continuous when a neighbour enters or leaves the cutoff sphere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["PolynomialCutoff", "CosineCutoff"]


class PolynomialCutoff(nn.Module):
    r"""The polynomial envelope of DimeNet and NequIP, with x = r / r_c:

    .. math::
        f(x) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2) x^{p+1} - \frac{p(p+1)}{2} x^{p+2}

    for x < 1 and 0 beyond. Its value and its first and second derivatives vanish at x = 1.

    Args:
        cutoff: r_c, Å.
        p: exponent (NequIP uses 6).
    """

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"PolynomialCutoff: cutoff must be positive, got {cutoff}")
        if p < 2:
            raise ValueError(f"PolynomialCutoff: p must be at least 2, got {p}")
        self.cutoff = float(cutoff)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = float(self.p)
        x = r / self.cutoff
        out = (
            1.0
            - 0.5 * (p + 1.0) * (p + 2.0) * torch.pow(x, self.p)
            + p * (p + 2.0) * torch.pow(x, self.p + 1)
            - 0.5 * p * (p + 1.0) * torch.pow(x, self.p + 2)
        )
        return out * (x < 1.0).to(out.dtype)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"


class CosineCutoff(nn.Module):
    r"""Behler's cosine envelope ``0.5 (cos(pi r / r_c) + 1)`` for r < r_c, 0 beyond.

    Value and first derivative vanish at r_c (the second derivative does not).

    Args:
        cutoff: r_c, Å.
    """

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"CosineCutoff: cutoff must be positive, got {cutoff}")
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        out = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        return out * (r < self.cutoff).to(out.dtype)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}"
