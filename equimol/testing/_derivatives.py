"""Forces and stress against finite differences of the energy.

Both checks use the fourth-order central difference
``f'(0) ~ (f(-2h) - 8 f(-h) + 8 f(h) - f(2h)) / (12 h)``, whose truncation error (order
``h^4``) lies far below the round-off of float64 energies at ``h = 1e-4``. The radius graph
is kept fixed while atoms move by ``h``, exactly as the model's autograd derivatives see it.
By default the model and the structures are cast to float64, where differences of energies
are meaningful; the model itself is not changed (a cast copy is used).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.testing._common import (
    Model,
    PreparedModel,
    Structures,
    as_structures,
    cast_structure,
    prepared,
    relative,
    structures_dtype,
)

__all__ = ["force_finite_difference_error", "stress_finite_difference_error"]

_STEPS = (-2.0, -1.0, 1.0, 2.0)
_WEIGHTS = (1.0, -8.0, 8.0, -1.0)


def _central_difference(energy_at, delta: float) -> float:
    """``dE/ds`` at s = 0 from ``energy_at(s)`` (fourth-order stencil)."""
    total = sum(w * energy_at(step * delta) for step, w in zip(_STEPS, _WEIGHTS))
    return total / (12.0 * delta)


def _prepare(data: Structures, dtype: torch.dtype | None) -> tuple[list[Data], torch.dtype]:
    structures = as_structures(data)
    dtype = structures_dtype(structures) if dtype is None else dtype
    return [cast_structure(s, dtype) for s in structures], dtype


def force_finite_difference_error(
    model: Model,
    data: Structures,
    delta: float = 1e-4,
    *,
    max_components: int | None = 30,
    seed: int | None = 0,
    dtype: torch.dtype | None = torch.float64,
) -> float:
    """Largest difference between the model's forces and ``-dE/dx`` by finite differences.

    Args:
        model: ``model(data, compute_forces=True) -> {"energy": [B], "forces": [N, 3]}``.
        data: a structure (``Data`` from ``atoms_to_graph``), a list of them, or a ``Batch``.
        delta: displacement step, Å.
        max_components: at most this many Cartesian components per structure, drawn at
            random without repetition (all ``3N`` when there are fewer; ``None``: all).
        seed: seed for choosing the components.
        dtype: dtype to evaluate in (``None``: the dtype of the data).

    Returns:
        ``max |F_model - F_fd| / max(max |F_model|, 1 eV/Å)`` over the checked components.

    Raises:
        ValueError: if the model returns no forces.
    """
    structures, dtype = _prepare(data, dtype)
    generator = np.random.default_rng(seed)
    error = 0.0
    with prepared(model, dtype) as evaluate:
        for structure in structures:
            forces = evaluate(structure, forces=True).get(K.FORCES)
            if forces is None:
                raise ValueError("force_finite_difference_error: the model returns no forces")
            n_components = forces.numel()
            components = np.arange(n_components)
            if max_components is not None and n_components > max_components:
                components = generator.choice(n_components, size=max_components, replace=False)
            for component in components:
                atom, axis = divmod(int(component), 3)
                derivative = _central_difference(
                    lambda s: _displaced_energy(evaluate, structure, atom, axis, s), delta
                )
                error = max(
                    error, relative(abs(forces[atom, axis] + derivative), forces.abs().max())
                )
    return error


def _displaced_energy(evaluate: PreparedModel, data: Data, atom: int, axis: int, step: float) -> float:
    data = copy.copy(data)
    pos = data[K.POS].clone()
    pos[atom, axis] += step
    data[K.POS] = pos
    return float(evaluate(data)[K.ENERGY][0])


def stress_finite_difference_error(
    model: Model,
    data: Structures,
    delta: float = 1e-4,
    *,
    dtype: torch.dtype | None = torch.float64,
) -> float:
    """Largest difference between the model's stress and ``(1/V) dE/dstrain`` by finite differences.

    The structure is strained homogeneously, ``pos -> pos (1 + e)``, ``cell -> cell (1 + e)``,
    with a symmetric strain ``e``, and ``sigma_ij = (1/V) dE/de_ij`` in eV/Å³ (ASE's sign
    convention). Structures that are not periodic along all three axes are skipped.

    Args:
        model: ``model(data, compute_stress=True) -> {"energy": [B], "stress": [B, 3, 3]}``.
        data: a structure, a list of them, or a ``Batch``; at least one fully periodic.
        delta: strain step (dimensionless).
        dtype: dtype to evaluate in (``None``: the dtype of the data).

    Returns:
        ``max |S_model - S_fd| / max(max |S_model|, 1 eV/Å³)`` over all components.

    Raises:
        ValueError: if no structure is fully periodic or the model returns no stress.
    """
    structures, dtype = _prepare(data, dtype)
    periodic = [s for s in structures if bool(s[K.PBC].reshape(-1).all())]
    if not periodic:
        raise ValueError("stress_finite_difference_error: no structure is periodic along all three axes")
    error = 0.0
    with prepared(model, dtype) as evaluate:
        for structure in periodic:
            stress = evaluate(structure, forces=False, stress=True).get(K.STRESS)
            if stress is None:
                raise ValueError("stress_finite_difference_error: the model returns no stress")
            stress = stress[0]
            volume = abs(float(torch.linalg.det(structure[K.CELL].reshape(3, 3).double())))
            for i in range(3):
                for j in range(i, 3):
                    direction = torch.zeros(3, 3, dtype=torch.float64)
                    direction[i, j] += 0.5
                    direction[j, i] += 0.5
                    derivative = _central_difference(
                        lambda s: _strained_energy(evaluate, structure, direction * s), delta
                    )
                    error = max(
                        error, relative(abs(stress[i, j] - derivative / volume), stress.abs().max())
                    )
    return error


def _strained_energy(evaluate: PreparedModel, data: Data, strain: torch.Tensor) -> float:
    data = copy.copy(data)
    pos, cell = data[K.POS], data[K.CELL]
    deformation = (torch.eye(3, dtype=torch.float64) + strain).to(dtype=pos.dtype, device=pos.device)
    data[K.POS] = pos @ deformation
    data[K.CELL] = cell @ deformation
    return float(evaluate(data)[K.ENERGY][0])
