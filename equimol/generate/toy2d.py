"""The classroom "molecule": four atoms in a plane with a Coulomb-like pair energy.

Reduced units: lengths in units of the bond length, energies in units of the pair constant
(``E = sum_{i<j} 1/r_ij``), forces in energy/length. Stored in extended XYZ, ASE reads them
as Å, eV and eV/Å.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from ._checks import check_non_negative, check_positive
from ._frames import frame_generator, label_frame
from .potentials import coulomb_energy_forces

__all__ = ["toy2d", "TOY2D_EQUILIBRIUM"]

#: Equilibrium structure ``[4, 3]``: a planar zig-zag chain, bond length 1, bond angle 120°.
TOY2D_EQUILIBRIUM = np.array(
    [
        [0.0, 0.0, 0.0],
        [1.0, 0.0, 0.0],
        [1.5, np.sqrt(3.0) / 2.0, 0.0],
        [2.5, np.sqrt(3.0) / 2.0, 0.0],
    ]
)


@frame_generator("toy2d")
def toy2d(
    n_samples: int = 500,
    noise_std: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> list[Atoms]:
    """Noisy copies of a planar four-atom chain with Coulomb-like energies and forces.

    Every ``x, y`` coordinate of :data:`TOY2D_EQUILIBRIUM` is displaced by independent
    ``N(0, noise_std^2)`` noise; ``z`` stays 0. The energy is ``E = sum_{i<j} 1/|r_i - r_j|``
    and the forces are its exact negative gradient (their ``z`` components are 0). All atoms
    are hydrogen; structures are not periodic.

    Args:
        n_samples: number of frames.
        noise_std: standard deviation of the coordinate noise, reduced length.
        seed: seed of the NumPy generator; the same seed gives the same frames.
        progress: unused (generation is instantaneous); accepted for a uniform interface.

    Returns:
        ``n_samples`` frames, each with ``energy`` (reduced energy) and ``forces`` ``[4, 3]``
        (reduced energy/length) labels and ``info`` keys ``generator``, the arguments,
        ``units`` and ``call``.
    """
    del progress
    check_positive("n_samples", n_samples)
    check_non_negative("noise_std", noise_std)
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_samples):
        pos = TOY2D_EQUILIBRIUM.copy()
        pos[:, :2] += rng.normal(0.0, noise_std, size=(len(pos), 2))
        energy, forces = coulomb_energy_forces(pos)
        atoms = Atoms("H4", positions=pos, pbc=False)
        frames.append(label_frame(atoms, energy, forces, info={"units": "reduced"}))
    return frames
