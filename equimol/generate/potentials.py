"""Analytic pair potentials with exact forces, as NumPy functions and as ASE calculators.

All functions here work in *reduced units*: lengths in units of sigma (or of the toy
molecule's bond length), energies in units of epsilon (or of the Coulomb-like constant),
forces in energy/length. Stored in extended XYZ they are read by ASE as Å, eV and eV/Å.

Positions may be ``[N, 3]`` or ``[N, d]`` arrays; forces have the same shape.
"""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

__all__ = [
    "coulomb_energy_forces",
    "lennard_jones_energy_forces",
    "lj_gravity_energy_forces",
    "LennardJonesExact",
]


def _pair_geometry(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair displacements ``d[i, j] = pos[i] - pos[j]`` ``[N, N, d]``, distances ``[N, N]``
    (inf on the diagonal), and the upper-triangle mask ``[N, N]``."""
    pos = np.asarray(pos, dtype=float)
    if pos.ndim != 2:
        raise ValueError(f"positions must be a [N, d] array, got shape {pos.shape}")
    diff = pos[:, None, :] - pos[None, :, :]
    r = np.sqrt(np.einsum("ijk,ijk->ij", diff, diff))
    np.fill_diagonal(r, np.inf)
    upper = np.triu(np.ones(r.shape, dtype=bool), k=1)
    return diff, r, upper


def coulomb_energy_forces(pos: np.ndarray) -> tuple[float, np.ndarray]:
    """Coulomb-like pair energy ``E = sum_{i<j} 1 / |r_i - r_j|`` and its forces.

    Args:
        pos: ``[N, d]`` positions, reduced length units.

    Returns:
        ``(E, F)``: energy (reduced units) and ``[N, d]`` forces ``F = -dE/dpos``.
    """
    diff, r, upper = _pair_geometry(pos)
    energy = float(np.sum(1.0 / r[upper]))
    # dE/dr = -1/r^2, force on i: -dE/dr * (r_i - r_j)/r = (r_i - r_j) / r^3
    forces = np.einsum("ij,ijk->ik", 1.0 / r**3, diff)
    return energy, forces


def lennard_jones_energy_forces(
    pos: np.ndarray, epsilon: float = 1.0, sigma: float = 1.0
) -> tuple[float, np.ndarray]:
    """Untruncated Lennard-Jones energy ``4 eps sum_{i<j} [(s/r)^12 - (s/r)^6]`` and forces.

    No cutoff and no shift: the energy is the exact pair sum.

    Args:
        pos: ``[N, d]`` positions, units of length (sigma in reduced units).
        epsilon: well depth, energy units.
        sigma: zero-crossing distance, length units.

    Returns:
        ``(E, F)``: energy and ``[N, d]`` forces ``-dE/dpos``.
    """
    diff, r, upper = _pair_geometry(pos)
    inv6 = (sigma / r) ** 6
    energy = float(4.0 * epsilon * np.sum((inv6 * (inv6 - 1.0))[upper]))
    # dE/dr = 4 eps (-12 s^12/r^13 + 6 s^6/r^7); force on i = -dE/dr * diff/r
    coeff = 24.0 * epsilon * inv6 * (2.0 * inv6 - 1.0) / r**2
    forces = np.einsum("ij,ijk->ik", coeff, diff)
    return energy, forces


def lj_gravity_energy_forces(
    pos: np.ndarray, gamma: float, dim: int, lj: bool = True
) -> tuple[float, np.ndarray]:
    """Reduced potential of the Lennard-Jones fluid under gravity, and its forces.

    ``U = 4 sum_{i<j} [r_ij^-12 - r_ij^-6] + 4 gamma sum_i h_i``, with the height ``h`` the
    last active axis: ``y`` (column 1) for ``dim=2``, ``z`` (column 2) for ``dim=3``.
    The hard walls of the box are not part of ``U`` (zero inside the box).

    Args:
        pos: ``[N, 3]`` positions in units of sigma (``z = 0`` when ``dim=2``).
        gamma: gravity strength, epsilon/sigma.
        dim: 2 or 3.
        lj: include the Lennard-Jones term; ``False`` leaves the ideal gas in gravity.

    Returns:
        ``(U, F)``: energy in units of epsilon and ``[N, 3]`` forces in epsilon/sigma.
    """
    pos = np.asarray(pos, dtype=float)
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    active = pos[:, :dim]
    energy = 4.0 * gamma * float(np.sum(active[:, -1]))
    forces = np.zeros_like(pos)
    if lj and len(pos) > 1:
        e_lj, f_lj = lennard_jones_energy_forces(active)
        energy += e_lj
        forces[:, :dim] = f_lj
    forces[:, dim - 1] -= 4.0 * gamma
    return energy, forces


class LennardJonesExact(Calculator):
    """ASE calculator for the untruncated Lennard-Jones potential (no cutoff, no shift).

    Unlike ``ase.calculators.lj.LennardJones`` it has no cutoff radius, so energies are the
    exact pair sum and forces are exactly ``-dE/dpos``. Non-periodic systems only.

    Args:
        epsilon: well depth, eV (or reduced energy).
        sigma: zero-crossing distance, Å (or reduced length).
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, epsilon: float = 1.0, sigma: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.sigma = float(sigma)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise ValueError("LennardJonesExact supports non-periodic systems only (pbc=False)")
        energy, forces = lennard_jones_energy_forces(
            self.atoms.positions, self.epsilon, self.sigma
        )
        self.results = {"energy": energy, "free_energy": energy, "forces": forces}
