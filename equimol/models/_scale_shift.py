"""Per-species scales and shifts from training-set statistics, for the baselines.

Every potential turns its network output into energies with one module,
:class:`equimol.nn.PerSpeciesScaleShift` (``e_i = scale[type_i] * y_i + shift[type_i]``).
This module computes its values from a :class:`~equimol.data.DatasetStatistics` and reads
checkpoints of the baselines written before they used it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from equimol.data.statistics import DatasetStatistics
from equimol.nn import PerSpeciesScaleShift

__all__ = ["fixed_scale_shift", "set_energy_scale_shift"]


def fixed_scale_shift(owner: torch.nn.Module, atomic_numbers: tuple[int, ...]) -> PerSpeciesScaleShift:
    """A :class:`PerSpeciesScaleShift` of buffers (scale 1 eV, shift 0) for ``atomic_numbers``,
    which also loads the ``energy_scale.{reference_energies, shift, scale}`` entries of older
    checkpoints of ``owner`` (it must assign the result to ``owner.scale_shift``)."""

    def convert_older_keys(state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        old = f"{prefix}energy_scale."
        if f"{old}scale" not in state_dict:
            return
        references = state_dict.pop(f"{old}reference_energies")
        shift = state_dict.pop(f"{old}shift")
        scale = state_dict.pop(f"{old}scale")
        index = torch.tensor(atomic_numbers, device=references.device)
        state_dict[f"{prefix}scale_shift.shifts"] = references.index_select(0, index) + shift
        state_dict[f"{prefix}scale_shift.scales"] = scale.expand(len(atomic_numbers)).clone()

    owner._register_load_state_dict_pre_hook(convert_older_keys)
    return PerSpeciesScaleShift(len(atomic_numbers), trainable=False)


@torch.no_grad()
def set_energy_scale_shift(
    scale_shift: PerSpeciesScaleShift,
    statistics: DatasetStatistics,
    atomic_numbers: tuple[int, ...],
    scale_multiplier: float = 1.0,
) -> None:
    """Shift of species ``k``: its reference energy plus the mean residual energy per atom
    (eV); one scale for all: ``scale_multiplier * energy_per_atom_std`` (eV), or 1 eV where
    that is missing or not positive. The multiplier turns a per-atom spread into the spread
    of what the network predicts (N for the total energy of N-atom structures)."""
    mean = statistics.energy_per_atom_mean or 0.0
    references = statistics.reference_energies
    shifts = [float(references.get(z, 0.0)) + mean for z in atomic_numbers]
    std = statistics.energy_per_atom_std
    scale = scale_multiplier * float(std) if std is not None else 0.0
    scale_shift.set_values(scales=scale if scale > 0 and math.isfinite(scale) else 1.0, shifts=shifts)
