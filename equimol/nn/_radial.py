"""Radial bases: functions of the edge length ``r [E]`` Å to features ``[E, num_basis]``."""

from __future__ import annotations

import math

import torch
from torch import nn

from equimol.nn._cutoff import PolynomialCutoff

__all__ = ["BesselBasis", "GaussianBasis", "RadialEmbedding"]


class BesselBasis(nn.Module):
    r"""Bessel radial basis ``(2 / r_c) sin(n pi r / r_c) / r``, n = 1..num_basis.

    The frequencies ``n pi`` are trainable when ``trainable`` is True (NequIP's choice).

    Args:
        cutoff: r_c, Å.
        num_basis: number of functions.
        trainable: learn the frequencies.

    Shapes:
        ``r: [E]`` Å -> ``[E, num_basis]`` (1/Å).
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = True) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"BesselBasis: cutoff must be positive, got {cutoff}")
        if num_basis < 1:
            raise ValueError(f"BesselBasis: num_basis must be at least 1, got {num_basis}")
        self.cutoff = float(cutoff)
        self.num_basis = int(num_basis)
        self.prefactor = 2.0 / self.cutoff
        frequencies = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r.unsqueeze(-1) / self.cutoff
        return self.prefactor * torch.sin(self.frequencies * x) / r.unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}"


class GaussianBasis(nn.Module):
    r"""Gaussians ``exp(-(r - mu_k)^2 / (2 sigma^2))`` with centres evenly spaced in [start, cutoff].

    Args:
        cutoff: last centre, Å.
        num_basis: number of Gaussians.
        start: first centre, Å.
        width: sigma in Å; defaults to the spacing of the centres.
        trainable: learn the centres and width.

    Shapes:
        ``r: [E]`` Å -> ``[E, num_basis]`` (dimensionless).
    """

    def __init__(
        self,
        cutoff: float,
        num_basis: int = 8,
        start: float = 0.0,
        width: float | None = None,
        trainable: bool = False,
    ) -> None:
        super().__init__()
        if num_basis < 1:
            raise ValueError(f"GaussianBasis: num_basis must be at least 1, got {num_basis}")
        if cutoff <= start:
            raise ValueError(f"GaussianBasis: cutoff ({cutoff}) must exceed start ({start})")
        self.cutoff = float(cutoff)
        self.num_basis = int(num_basis)
        centres = torch.linspace(start, cutoff, num_basis, dtype=torch.get_default_dtype())
        if width is None:
            width = (cutoff - start) / max(num_basis - 1, 1)
        log_width = torch.tensor(math.log(width), dtype=torch.get_default_dtype())
        if trainable:
            self.centres = nn.Parameter(centres)
            self.log_width = nn.Parameter(log_width)
        else:
            self.register_buffer("centres", centres)
            self.register_buffer("log_width", log_width)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        diff = r.unsqueeze(-1) - self.centres
        return torch.exp(-0.5 * (diff / self.log_width.exp()) ** 2)

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}"


class RadialEmbedding(nn.Module):
    """Bessel basis times the polynomial cutoff envelope: NequIP's edge length embedding.

    Features and their derivatives vanish smoothly at the cutoff, so a network that uses
    them only through bias-free maps (as :class:`~equimol.nn.TensorProductConv` does) is
    smooth when a neighbour crosses the cutoff.

    Args:
        cutoff: r_c, Å.
        num_basis: number of Bessel functions.
        p: exponent of the polynomial envelope.
        trainable: learn the Bessel frequencies.

    Shapes:
        ``r: [E]`` Å -> ``[E, num_basis]``.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, p: int = 6, trainable: bool = True) -> None:
        super().__init__()
        self.num_basis = int(num_basis)
        self.basis = BesselBasis(cutoff, num_basis, trainable=trainable)
        self.envelope = PolynomialCutoff(cutoff, p=p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return self.basis(r) * self.envelope(r).unsqueeze(-1)
