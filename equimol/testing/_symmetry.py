"""Symmetry checks: energies invariant and forces equivariant under E(3) and permutations.

Each check applies random symmetry operations from ``equimol.data.transforms`` to every
structure (the transforms keep the radius graph valid, so no neighbour list is rebuilt),
evaluates the model on the original and the transformed structure, and reports the largest
errors:

* energy: ``|E(g x) - E(x)| / max(|E(x)|, 1 eV)``;
* forces: ``max |F(g x) - g F(x)| / max(max |F(x)|, 1 eV/Å)``, where ``g F`` is the rotated
  (``F @ R^T``), unchanged (translation) or reordered (``F[perm]``) force field.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from equimol import _keys as K
from equimol.data.transforms import (
    RandomPermutation,
    RandomReflection,
    RandomRotation,
    RandomTranslation,
    Rotate,
)
from equimol.testing._common import (
    InvarianceReport,
    Model,
    Structures,
    as_structures,
    prepared,
    relative,
    structures_dtype,
)

__all__ = [
    "rotation_invariance_error",
    "translation_invariance_error",
    "permutation_invariance_error",
]

#: Maps a transform and the original forces [N, 3] to the forces expected after it.
_ForceMap = Callable[[BaseTransform, torch.Tensor], torch.Tensor]


def _invariance_error(
    model: Model,
    data: Structures,
    sample: Callable[[Data], BaseTransform],
    transform_forces: _ForceMap,
    n_trials: int,
) -> InvarianceReport:
    if n_trials < 1:
        raise ValueError(f"n_trials must be at least 1, got {n_trials}")
    structures = as_structures(data)
    energy_error, force_error, has_forces = 0.0, 0.0, True
    with prepared(model, structures_dtype(structures)) as evaluate:
        for structure in structures:
            reference = evaluate(structure, forces=True)
            has_forces = has_forces and K.FORCES in reference
            energy_scale = reference[K.ENERGY].abs().max()
            for _ in range(n_trials):
                transform = sample(structure)
                out = evaluate(transform(structure), forces=has_forces)
                energy_error = max(
                    energy_error,
                    relative((out[K.ENERGY] - reference[K.ENERGY]).abs().max(), energy_scale),
                )
                if has_forces and K.FORCES in out:
                    expected = transform_forces(transform, reference[K.FORCES])
                    force_error = max(
                        force_error,
                        relative((out[K.FORCES] - expected).abs().max(), reference[K.FORCES].abs().max()),
                    )
                else:
                    has_forces = False
    return InvarianceReport(energy_error, force_error if has_forces else None)


def rotation_invariance_error(
    model: Model,
    data: Structures,
    n_trials: int = 4,
    seed: int | None = 0,
    reflections: bool = False,
    planar: bool = False,
) -> InvarianceReport:
    """Largest energy change and force-equivariance error under random rotations.

    Args:
        model: ``model(data, compute_forces=True) -> {"energy": [B], "forces"?: [N, 3]}``.
        data: a structure (``Data`` from ``atoms_to_graph``), a list of them, or a ``Batch``.
        n_trials: random operations per structure.
        seed: seed of the random operations.
        reflections: use improper rotations (uniform over the det = -1 part of O(3)), which
            checks parity: an E(3)-invariant model passes, an SE(3)-only one may not.
        planar: operations about the z axis only (2D systems in the xy plane).

    Returns:
        :class:`InvarianceReport` with ``|E(Rx) - E(x)| / max(|E(x)|, 1 eV)`` and
        ``max |F(Rx) - F(x) R^T| / max(max |F(x)|, 1 eV/Å)``.
    """
    sampler = (RandomReflection if reflections else RandomRotation)(planar=planar, seed=seed)

    def rotate_forces(transform: BaseTransform, forces: torch.Tensor) -> torch.Tensor:
        assert isinstance(transform, Rotate)
        return forces @ transform.matrix.T

    return _invariance_error(model, data, sampler.sample, rotate_forces, n_trials)


def translation_invariance_error(
    model: Model,
    data: Structures,
    n_trials: int = 4,
    seed: int | None = 0,
    scale: float = 5.0,
    planar: bool = False,
) -> InvarianceReport:
    """Largest energy and force change under random translations.

    Args:
        model: the potential under test.
        data: one structure, or a list of them.
        n_trials: number of random transformations per structure.
        seed: seed of the random transformations.
        scale: translations are uniform in ``[-scale, scale]^3`` Å (periodic structures are
            not wrapped back into the cell).
        planar: translations within the xy plane.

    Returns:
        :class:`InvarianceReport` with ``|E(x + t) - E(x)| / max(|E(x)|, 1 eV)`` and
        ``max |F(x + t) - F(x)| / max(max |F(x)|, 1 eV/Å)``.
    """
    sampler = RandomTranslation(scale=scale, planar=planar, seed=seed)
    return _invariance_error(model, data, sampler.sample, lambda _, forces: forces, n_trials)


def permutation_invariance_error(
    model: Model,
    data: Structures,
    n_trials: int = 4,
    seed: int | None = 0,
    same_species_only: bool = True,
) -> InvarianceReport:
    """Largest energy change and force error when the atoms are listed in another order.

    Args:
        model: the potential under test.
        data: one structure, or a list of them.
        n_trials: number of random transformations per structure.
        seed: seed of the random transformations.
        same_species_only: reorder only among atoms of equal atomic number (the list of
            species stays the same), or reorder all atoms (species travel with their atoms).

    Returns:
        :class:`InvarianceReport` with ``|E(Px) - E(x)| / max(|E(x)|, 1 eV)`` and
        ``max |F(Px) - F(x)[perm]| / max(max |F(x)|, 1 eV/Å)``.
    """
    sampler = RandomPermutation(same_species_only=same_species_only, seed=seed)

    def permute_forces(transform: BaseTransform, forces: torch.Tensor) -> torch.Tensor:
        return forces[transform.permutation]

    return _invariance_error(model, data, sampler.sample, permute_forces, n_trials)
