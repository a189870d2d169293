"""Langevin molecular dynamics of fcc metals with ASE's EMT potential.

Units are ASE's: Å, eV, eV/Å, eV/Å³, K, fs.
"""

from __future__ import annotations

from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from ._frames import frame_generator
from ._md import langevin_frames

__all__ = ["emt_md", "EMT_ELEMENTS"]

#: The fcc metals that ASE's EMT parametrises.
EMT_ELEMENTS = ("Cu", "Ni", "Al", "Ag", "Au", "Pd", "Pt")


@frame_generator("emt-md")
def emt_md(
    element: str = "Cu",
    size: int | tuple[int, int, int] = 2,
    temperature_K: float = 500.0,
    n_frames: int = 500,
    stride: int = 10,
    n_equilibration_steps: int = 200,
    timestep_fs: float = 2.0,
    friction_per_fs: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> list[Atoms]:
    """Periodic fcc supercells sampled from Langevin MD with the EMT calculator.

    The cell is the conventional cubic fcc cell (4 atoms) with ASE's ``bulk`` default lattice
    constant, repeated ``size`` times (``size=2``: 32 atoms).

    Args:
        element: one of Cu, Ni, Al, Ag, Au, Pd, Pt.
        size: repetitions of the cubic cell, one integer for all axes or three.
        temperature_K: thermostat temperature, K.
        n_frames: number of frames.
        stride: MD steps between frames.
        n_equilibration_steps: MD steps discarded first.
        timestep_fs: time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        seed: seed of the initial velocities and the thermostat noise.
        progress: show a progress bar.

    Returns:
        Frames with ``energy`` (eV), ``forces`` ``[N, 3]`` (eV/Å) and ``stress`` (Voigt, eV/Å³)
        labels, periodic in all directions, and ``info`` keys ``generator``, the arguments
        (``size`` as three repetitions), ``lattice_constant``, ``md_step`` and ``call``.
    """
    if element not in EMT_ELEMENTS:
        raise ValueError(
            f"element {element!r} is not available for EMT; choose one of {', '.join(EMT_ELEMENTS)}"
        )
    reps = (size,) * 3 if isinstance(size, int) else tuple(size)
    if len(reps) != 3 or any(int(r) != r or r < 1 for r in reps):
        raise ValueError(f"size must be a positive integer or three positive integers, got {size!r}")
    unit = bulk(element, "fcc", cubic=True)
    info = {"size": list(reps), "lattice_constant": float(unit.cell[0, 0])}
    return langevin_frames(
        unit.repeat(reps),
        EMT,
        temperature_K=temperature_K,
        timestep_fs=timestep_fs,
        friction_per_fs=friction_per_fs,
        n_frames=n_frames,
        stride=stride,
        n_equilibration_steps=n_equilibration_steps,
        seed=seed,
        info=info,
        progress=progress,
        desc=f"emt-md {element}",
    )
