"""Continuity at the cutoff: no jump in energy or forces when a neighbour enters the graph."""

from __future__ import annotations

import itertools
from typing import Sequence

import ase
import torch

from equimol import _keys as K
from equimol.data.graph import atoms_to_graph
from equimol.testing._common import InvarianceReport, Model, prepared, relative

__all__ = ["cutoff_smoothness_error"]

#: Default half-width of the step across the cutoff, Å, per dtype: small enough that a
#: smooth (C1) envelope changes by far less than the tolerance, large enough to be resolved
#: at a distance of a few Å.
_DEFAULT_EPS = {torch.float64: 1e-10, torch.float32: 1e-5}


def cutoff_smoothness_error(
    model: Model,
    cutoff: float,
    species: Sequence[int],
    *,
    eps: float | None = None,
    dtype: torch.dtype = torch.float64,
) -> InvarianceReport:
    """Jump of energy and forces as a pair of atoms crosses the cutoff.

    For every pair of species (``species`` taken two at a time, repetitions included), a
    dimer in open boundaries is evaluated at distances ``cutoff - eps`` (one edge each way)
    and ``cutoff + eps`` (no edges; graph rebuilt with ``atoms_to_graph``). A model whose
    energy goes smoothly to zero at the cutoff shows no jump; a hard cutoff, or a
    normalisation by the number of neighbours, does.

    Args:
        model: ``model(data, compute_forces=True) -> {"energy": [B], "forces"?: [N, 3]}``.
        cutoff: the radius of the model's graph, Å.
        species: atomic numbers to pair up (e.g. the species of the training set).
        eps: half-width of the step, Å (default 1e-10 in float64, 1e-5 in float32).
        dtype: dtype of the structures and the model.

    Returns:
        :class:`InvarianceReport` with ``|E(r_c - eps) - E(r_c + eps)| / max(|E|, 1 eV)`` and
        ``max |F(r_c - eps) - F(r_c + eps)| / max(max |F|, 1 eV/Å)``, the largest over pairs.
    """
    if not cutoff > 0:
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff!r}")
    if eps is None:
        if dtype not in _DEFAULT_EPS:
            raise ValueError(f"no default eps for dtype {dtype}; pass eps explicitly")
        eps = _DEFAULT_EPS[dtype]
    if not 0 < eps < cutoff:
        raise ValueError(f"eps must lie between 0 and the cutoff, got {eps!r}")
    numbers = sorted({int(z) for z in species})
    if not numbers:
        raise ValueError("species is empty: give at least one atomic number")
    energy_error, force_error, has_forces = 0.0, 0.0, True
    with prepared(model, dtype) as evaluate:
        for first, second in itertools.combinations_with_replacement(numbers, 2):
            inside, outside = (
                evaluate(_dimer(first, second, distance, cutoff, dtype), forces=has_forces)
                for distance in (cutoff - eps, cutoff + eps)
            )
            energy_error = max(
                energy_error,
                relative(
                    abs(inside[K.ENERGY][0] - outside[K.ENERGY][0]),
                    max(abs(inside[K.ENERGY][0]), abs(outside[K.ENERGY][0])),
                ),
            )
            if has_forces and K.FORCES in inside and K.FORCES in outside:
                scale = max(inside[K.FORCES].abs().max(), outside[K.FORCES].abs().max())
                jump = (inside[K.FORCES] - outside[K.FORCES]).abs().max()
                force_error = max(force_error, relative(jump, scale))
            else:
                has_forces = False
    return InvarianceReport(energy_error, force_error if has_forces else None)


def _dimer(first: int, second: int, distance: float, cutoff: float, dtype: torch.dtype):
    atoms = ase.Atoms(numbers=[first, second], positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])
    return atoms_to_graph(
        atoms, cutoff, dtype=dtype, on_isolated="ignore", source=f"dimer {first}-{second} at {distance} Å"
    )
