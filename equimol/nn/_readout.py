"""Readouts: from equivariant features to per-atom energies, and their scale and shift."""

from __future__ import annotations

from typing import Sequence

import torch
from e3nn import o3
from torch import nn

__all__ = ["AtomwiseLinear", "ScalarReadout", "PerSpeciesScaleShift"]


class AtomwiseLinear(nn.Module):
    """``o3.Linear`` applied to each atom's features.

    Shapes:
        ``[N, irreps_in.dim]`` -> ``[N, irreps_out.dim]``.
    """

    def __init__(self, irreps_in: o3.Irreps | str, irreps_out: o3.Irreps | str) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_out = o3.Irreps(irreps_out)
        self.linear = o3.Linear(self.irreps_in, self.irreps_out)

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        return self.linear(node_features)


class ScalarReadout(nn.Module):
    """One invariant number per atom from its features (the ``0e`` part only).

    With ``hidden = 0`` it is a linear map of the even scalars; with ``hidden > 0`` a linear
    map to ``hidden`` scalars, SiLU, and a linear map to one.

    Args:
        irreps_in: node feature irreps (must contain ``0e``).
        hidden: width of the hidden layer, 0 for none.

    Shapes:
        ``[N, irreps_in.dim]`` -> ``[N]``.
    """

    def __init__(self, irreps_in: o3.Irreps | str, hidden: int = 0) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        if not any(ir == o3.Irrep("0e") for _, ir in self.irreps_in):
            raise ValueError(f"ScalarReadout: irreps_in {self.irreps_in} has no even scalars (0e)")
        self.irreps_out = o3.Irreps("0e")
        if hidden > 0:
            self.first = o3.Linear(self.irreps_in, o3.Irreps(f"{hidden}x0e"))
            self.second = o3.Linear(o3.Irreps(f"{hidden}x0e"), self.irreps_out)
        else:
            self.first = o3.Linear(self.irreps_in, self.irreps_out)
            self.second = None

    def forward(self, node_features: torch.Tensor) -> torch.Tensor:
        out = self.first(node_features)
        if self.second is not None:
            out = self.second(torch.nn.functional.silu(out))
        return out.squeeze(-1)


class PerSpeciesScaleShift(nn.Module):
    """``y = scale[type] * x + shift[type]``: per-atom energies in eV from a network output.

    Initialise ``scales`` with a typical energy or force scale (eV) and ``shifts`` with the
    per-species reference energies plus the mean residual per atom (eV), so that the network
    itself only learns numbers of order one.

    Args:
        num_species: number of species.
        scales: one value for all species or one per species.
        shifts: one value for all species or one per species.
        trainable: learn the scales and shifts (otherwise they are buffers).

    Shapes:
        ``x: [N]``, ``types: [N]`` int64 in ``[0, num_species)`` -> ``[N]``.
    """

    def __init__(
        self,
        num_species: int,
        scales: float | Sequence[float] = 1.0,
        shifts: float | Sequence[float] = 0.0,
        trainable: bool = True,
    ) -> None:
        super().__init__()
        self.num_species = int(num_species)
        scales_t = self._per_species(scales, "scales")
        shifts_t = self._per_species(shifts, "shifts")
        if trainable:
            self.scales = nn.Parameter(scales_t)
            self.shifts = nn.Parameter(shifts_t)
        else:
            self.register_buffer("scales", scales_t)
            self.register_buffer("shifts", shifts_t)

    def _per_species(
        self, values: float | Sequence[float], name: str, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        tensor = torch.as_tensor(values, dtype=dtype or torch.get_default_dtype()).flatten()
        if tensor.numel() == 1:
            tensor = tensor.expand(self.num_species).clone()
        if tensor.numel() != self.num_species:
            raise ValueError(
                f"PerSpeciesScaleShift: {name} has {tensor.numel()} values, expected 1 or {self.num_species}"
            )
        if not torch.isfinite(tensor).all():
            raise ValueError(f"PerSpeciesScaleShift: {name} must be finite, got {tensor.tolist()}")
        return tensor

    @torch.no_grad()
    def set_values(
        self, scales: float | Sequence[float] | None = None, shifts: float | Sequence[float] | None = None
    ) -> None:
        """Overwrite scales and/or shifts in place (for example from training-set statistics)."""
        if scales is not None:
            self.scales.copy_(self._per_species(scales, "scales", self.scales.dtype))
        if shifts is not None:
            self.shifts.copy_(self._per_species(shifts, "shifts", self.shifts.dtype))

    def forward(self, x: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        return self.scales[types] * x + self.shifts[types]
