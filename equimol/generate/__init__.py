"""Label and data generators: analytic potentials, Metropolis Monte Carlo and ASE dynamics.

Every generator is a seeded function returning ``list[ase.Atoms]``; each frame carries its
labels in an ASE ``SinglePointCalculator`` (``energy``, ``forces``, and ``stress`` where
periodic) and its provenance in ``atoms.info`` (``generator``, the arguments of the call,
derived parameters and the ``call`` that reproduces it, all derived from the generator's
signature). :func:`write_frames` stores them as extended XYZ; :func:`generator_call` checks
the arguments of a generator named in a config.

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

import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from ase import Atoms

from ._frames import call_string, frame_arguments, label_frame, write_frames
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
    {generator.generator_name: generator for generator in (toy2d, lj_cluster, lj_gravity_mc, emt_md, molecule_md)}
)


def generator_call(
    name: str, arguments: Mapping[str, Any], where: str = "generator"
) -> tuple[Callable[..., list[Atoms]], dict[str, Any]]:
    """The generator called ``name`` and every argument a call with ``arguments`` runs with.

    Args:
        name: a key of :data:`GENERATORS`.
        arguments: keyword arguments of the call.
        where: where the name and arguments come from (for example ``"data.generator"``),
            the start of the error messages.

    Returns:
        ``(function, bound)``: ``bound`` is :func:`frame_arguments` of the call (defaults
        applied, ``progress`` left out), the arguments that decide the frames.

    Raises:
        ValueError: for an unknown generator, naming the known ones, or for arguments the
            generator does not take, naming those it takes.
    """
    if name not in GENERATORS:
        raise ValueError(f"{where}: unknown generator {name!r}; available: {sorted(GENERATORS)}")
    function = GENERATORS[name]
    parameters = list(inspect.signature(function).parameters)
    unknown = [key for key in arguments if key not in parameters]
    if unknown:
        raise ValueError(f"{where}: {name!r} takes no argument(s) {unknown}; it takes {parameters}")
    try:
        return function, frame_arguments(function, **arguments)
    except TypeError as error:
        raise ValueError(f"{where}: {name!r} cannot be called with {dict(arguments)}: {error}") from None


def cli_main(argv: Sequence[str]) -> int:
    """Entry of ``equimol generate``: ``argv`` are the arguments after ``generate``."""
    from ._cli import generate_main

    return generate_main(argv, GENERATORS)


__all__ = [
    "GENERATORS",
    "generator_call",
    "cli_main",
    "write_frames",
    "label_frame",
    "call_string",
    "frame_arguments",
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
