"""Rattled configurations around a relaxed Lennard-Jones cluster.

Reduced units: epsilon = sigma = 1, so lengths are in sigma, energies in epsilon and forces
in epsilon/sigma (read by ASE as Å, eV and eV/Å). The potential is the untruncated
Lennard-Jones pair sum (:class:`~equimol.generate.potentials.LennardJonesExact`): ASE's own
``LennardJones`` shifts the energy at its cutoff, which this data set avoids.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.optimize import BFGS

from ._checks import check_non_negative, check_positive
from ._frames import frame_generator, label_frame
from .potentials import LennardJonesExact, lennard_jones_energy_forces

__all__ = ["lj_cluster", "relaxed_lj_cluster"]


def _random_start(n_atoms: int, rng: np.random.Generator) -> np.ndarray:
    """``[n_atoms, 3]`` random positions in a sphere, no two closer than 1.0 sigma."""
    radius = 0.75 * max(n_atoms, 2) ** (1.0 / 3.0) + 0.5
    pos: list[np.ndarray] = []
    while len(pos) < n_atoms:
        for _ in range(10_000):
            trial = rng.uniform(-radius, radius, size=3)
            if np.linalg.norm(trial) > radius:
                continue
            if all(np.linalg.norm(trial - p) >= 1.0 for p in pos):
                pos.append(trial)
                break
        else:
            radius *= 1.1
    return np.array(pos)


def relaxed_lj_cluster(
    n_atoms: int = 8, seed: int = 0, fmax: float = 1e-6, symbol: str = "Ar"
) -> Atoms:
    """A Lennard-Jones cluster relaxed with BFGS from a seeded random start.

    The result is a local (not necessarily the global) minimum of the untruncated LJ energy.

    Args:
        n_atoms: number of atoms.
        seed: seed of the random start.
        fmax: convergence threshold on the largest force component norm, epsilon/sigma.
        symbol: chemical symbol given to every atom.

    Returns:
        The relaxed cluster (non-periodic), with a :class:`LennardJonesExact` calculator.

    Raises:
        RuntimeError: if BFGS does not reach ``fmax`` within 10 000 steps.
    """
    check_positive("n_atoms", n_atoms)
    rng = np.random.default_rng(seed)
    atoms = Atoms([symbol] * n_atoms, positions=_random_start(n_atoms, rng))
    atoms.calc = LennardJonesExact()
    if n_atoms > 1:
        converged = BFGS(atoms, logfile=None).run(fmax=fmax, steps=10_000)
        if not converged:
            raise RuntimeError(f"BFGS did not converge to fmax={fmax} for {n_atoms} LJ atoms")
    atoms.center()
    return atoms


@frame_generator("lj-cluster")
def lj_cluster(
    n_atoms: int = 8,
    n_frames: int = 500,
    rattle_std: float = 0.05,
    seed: int = 0,
    progress: bool = False,
) -> list[Atoms]:
    """Rattled copies of a relaxed ``n_atoms`` Lennard-Jones cluster, with exact LJ labels.

    The cluster is relaxed once (:func:`relaxed_lj_cluster`, same seed), then every Cartesian
    coordinate of every frame is displaced by independent ``N(0, rattle_std^2)`` noise.

    Args:
        n_atoms: number of atoms (argon symbols).
        n_frames: number of frames.
        rattle_std: standard deviation of the displacement per coordinate, sigma.
        seed: seed for the start of the relaxation and the rattling.
        progress: unused (generation is fast); accepted for a uniform interface.

    Returns:
        Frames with ``energy`` (epsilon) and ``forces`` ``[n_atoms, 3]`` (epsilon/sigma), and
        ``info`` keys ``generator``, the arguments, ``epsilon``, ``sigma``,
        ``minimum_energy``, ``units`` and ``call``.
    """
    del progress
    check_positive("n_atoms", n_atoms)
    check_positive("n_frames", n_frames)
    check_non_negative("rattle_std", rattle_std)
    minimum = relaxed_lj_cluster(n_atoms, seed=seed)
    e_min = minimum.get_potential_energy()
    rng = np.random.default_rng([seed, 1])
    frames = []
    for _ in range(n_frames):
        pos = minimum.positions + rng.normal(0.0, rattle_std, size=minimum.positions.shape)
        energy, forces = lennard_jones_energy_forces(pos)
        atoms = Atoms(minimum.get_chemical_symbols(), positions=pos, pbc=False)
        info = {"epsilon": 1.0, "sigma": 1.0, "minimum_energy": e_min, "units": "reduced"}
        frames.append(label_frame(atoms, energy, forces, info=info))
    return frames
