"""Shift and scale of a network's output into total energies, from training-set statistics."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

__all__ = ["EnergyScale"]

_MAX_Z = 118


def _statistic(statistics: Any, name: str) -> Any:
    """``statistics.name`` or ``statistics[name]``; None when absent."""
    if isinstance(statistics, Mapping):
        return statistics.get(name)
    return getattr(statistics, name, None)


class EnergyScale(nn.Module):
    """``E = sum_i (e_ref[z_i] + shift) + scale * y`` for a raw network output ``y``.

    ``e_ref`` are per-species reference energies (eV), ``shift`` the mean residual energy
    per atom (eV/atom), ``scale`` an energy unit (eV). All are buffers (saved with the
    model, not trained); the defaults (zeros and 1 eV) leave ``y`` as the energy.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("reference_energies", torch.zeros(_MAX_Z + 1))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("scale", torch.ones(()))

    def set_from_statistics(self, statistics: Any, scale_multiplier: float = 1.0) -> None:
        """Read ``reference_energies`` (dict Z -> eV), ``energy_per_atom_mean`` (eV/atom)
        and ``energy_per_atom_std`` (eV/atom) from a statistics object or mapping.

        ``scale = scale_multiplier * energy_per_atom_std`` (the multiplier turns a per-atom
        spread into the spread of what the network predicts, for example N for the total
        energy of N-atom structures). Missing or non-positive values leave the defaults.
        """
        references = _statistic(statistics, "reference_energies")
        table = torch.zeros_like(self.reference_energies)
        for z, energy in dict(references or {}).items():
            z = int(z)
            if not 0 < z <= _MAX_Z:
                raise ValueError(f"reference_energies: atomic number {z} is not in 1..{_MAX_Z}")
            table[z] = float(energy)
        self.reference_energies.copy_(table)
        mean = _statistic(statistics, "energy_per_atom_mean")
        self.shift.fill_(float(mean) if mean is not None else 0.0)
        std = _statistic(statistics, "energy_per_atom_std")
        std = float(std) if std is not None else 0.0
        scale = scale_multiplier * std
        self.scale.fill_(scale if scale > 0 and math.isfinite(scale) else 1.0)

    def per_atom_offset(self, z: torch.Tensor) -> torch.Tensor:
        """[N] eV: ``e_ref[z_i] + shift``."""
        return self.reference_energies[z] + self.shift

    def forward(self, y: torch.Tensor, z: torch.Tensor, batch: torch.Tensor, num_structures: int) -> torch.Tensor:
        """Total energies [B] eV from raw outputs ``y [B]``, ``z [N]`` and ``batch [N]``."""
        offset = torch.zeros(num_structures, dtype=y.dtype, device=y.device)
        offset = offset.index_add(0, batch, self.per_atom_offset(z).to(y.dtype))
        return offset + self.scale.to(y.dtype) * y
