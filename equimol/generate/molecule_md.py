"""Langevin molecular dynamics of a small molecule with GFN2-xTB labels (like rMD17).

Needs the optional ``tblite`` package: ``pip install "equimol[xtb]"``.
Units are ASE's: Å, eV, eV/Å, K, fs.
"""

from __future__ import annotations

from typing import Literal

from ase import Atoms
from ase.build import molecule as build_molecule
from ase.collections import g2

from ._frames import frame_generator
from ._md import langevin_frames

__all__ = ["molecule_md", "xtb_calculator", "MOLECULE_ALIASES"]

#: Common names accepted besides ASE's g2 names (``ase.collections.g2.names``).
MOLECULE_ALIASES = {
    "ethanol": "CH3CH2OH",
    "methanol": "CH3OH",
    "water": "H2O",
    "benzene": "C6H6",
    "ammonia": "NH3",
    "methane": "CH4",
    "acetaldehyde": "CH3CHO",
    "formaldehyde": "H2CO",
}


def xtb_calculator(method: str = "GFN2-xTB"):
    """tblite's ASE calculator, imported lazily.

    Raises:
        ImportError: if tblite is not installed, saying how to install it.
    """
    try:
        from tblite.ase import TBLite
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "molecule-md needs the tblite package for GFN2-xTB labels; "
            'install it with: pip install "equimol[xtb]"'
        ) from err
    return TBLite(method=method, verbosity=0)


@frame_generator("molecule-md")
def molecule_md(
    molecule: str = "ethanol",
    temperature_K: float = 500.0,
    n_frames: int = 300,
    stride: int = 10,
    n_equilibration_steps: int = 500,
    timestep_fs: float = 0.5,
    friction_per_fs: float = 0.01,
    method: Literal["GFN2-xTB", "GFN1-xTB"] = "GFN2-xTB",
    seed: int = 0,
    progress: bool = False,
) -> list[Atoms]:
    """Snapshots of a molecule from Langevin MD with tblite's xTB energies and forces.

    The start geometry is ``ase.build.molecule(name)``; velocities are drawn at
    ``temperature_K`` with centre-of-mass motion and rotation removed.

    Args:
        molecule: a name from ase.collections.g2 (e.g. CH3CH2OH) or a common name from
            MOLECULE_ALIASES (ethanol, methanol, water, benzene, ...).
        temperature_K: thermostat temperature, K.
        n_frames: number of frames.
        stride: MD steps between frames.
        n_equilibration_steps: MD steps discarded first.
        timestep_fs: time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        method: tblite method, GFN2-xTB or GFN1-xTB.
        seed: seed of the initial velocities and the thermostat noise.
        progress: show a progress bar.

    Returns:
        Non-periodic frames with ``energy`` (eV) and ``forces`` ``[N, 3]`` (eV/Å) labels and
        ``info`` keys ``generator``, the arguments (``molecule`` as its g2 name),
        ``md_step`` and ``call``.

    Raises:
        ImportError: if tblite is missing.
        ValueError: for an unknown molecule name.
    """
    name = MOLECULE_ALIASES.get(molecule, molecule)
    if name not in g2.names:
        raise ValueError(
            f"unknown molecule {molecule!r}: use a name from ase.collections.g2 "
            f"(e.g. CH3CH2OH) or one of {', '.join(sorted(MOLECULE_ALIASES))}"
        )
    return langevin_frames(
        build_molecule(name),
        lambda: xtb_calculator(method),
        temperature_K=temperature_K,
        timestep_fs=timestep_fs,
        friction_per_fs=friction_per_fs,
        n_frames=n_frames,
        stride=stride,
        n_equilibration_steps=n_equilibration_steps,
        seed=seed,
        info={"molecule": name},
        progress=progress,
        desc=f"molecule-md {name}",
    )
