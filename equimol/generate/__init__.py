"""Label and data generators: analytic potentials, Metropolis Monte Carlo and ASE dynamics.

Every generator is a seeded function returning ``list[ase.Atoms]``; each frame carries its
labels in an ASE ``SinglePointCalculator`` (``energy``, ``forces``, and ``stress`` where
periodic) and its provenance in ``atoms.info`` (``generator``, ``seed``, physical parameters
and the ``call`` that reproduces it). :func:`write_frames` stores them as extended XYZ.

==================  =========================  ==============================================
CLI name            function                   system and units
==================  =========================  ==============================================
``toy2d``           :func:`toy2d`              planar 4-atom chain, ``E = sum 1/r``; reduced
``lj-cluster``      :func:`lj_cluster`         rattled relaxed LJ cluster; reduced (eps, sigma)
``lj-gravity-mc``   :func:`lj_gravity_mc`      LJ fluid in gravity, Metropolis MC; reduced
``emt-md``          :func:`emt_md`             fcc metal, Langevin MD, EMT; eV, Å
``molecule-md``     :func:`molecule_md`        molecule, Langevin MD, GFN2-xTB; eV, Å
==================  =========================  ==============================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

from ase import Atoms

from ._frames import label_frame, write_frames
from .emt_md import EMT_ELEMENTS, emt_md
from .lj_cluster import lj_cluster, relaxed_lj_cluster
from .molecule_md import MOLECULE_ALIASES, molecule_md, xtb_calculator
from .monte_carlo import (
    LJGravityMetropolis,
    integrated_autocorrelation_time,
    lj_gravity_mc,
    metropolis_log_acceptance,
)
from .potentials import (
    LennardJonesExact,
    coulomb_energy_forces,
    lennard_jones_energy_forces,
    lj_gravity_energy_forces,
)
from .toy2d import TOY2D_EQUILIBRIUM, toy2d

#: CLI name -> generator function (read-only).
GENERATORS: Mapping[str, Callable[..., list[Atoms]]] = MappingProxyType(
    {
        "toy2d": toy2d,
        "lj-cluster": lj_cluster,
        "lj-gravity-mc": lj_gravity_mc,
        "emt-md": emt_md,
        "molecule-md": molecule_md,
    }
)


def cli_main(argv: Sequence[str]) -> int:
    """Entry of ``equimol generate``: ``argv`` are the arguments after ``generate``."""
    from ._cli import generate_main

    return generate_main(argv, GENERATORS)


__all__ = [
    "GENERATORS",
    "cli_main",
    "write_frames",
    "label_frame",
    "toy2d",
    "TOY2D_EQUILIBRIUM",
    "lj_cluster",
    "relaxed_lj_cluster",
    "lj_gravity_mc",
    "LJGravityMetropolis",
    "metropolis_log_acceptance",
    "integrated_autocorrelation_time",
    "emt_md",
    "EMT_ELEMENTS",
    "molecule_md",
    "xtb_calculator",
    "MOLECULE_ALIASES",
    "coulomb_energy_forces",
    "lennard_jones_energy_forces",
    "lj_gravity_energy_forces",
    "LennardJonesExact",
]
