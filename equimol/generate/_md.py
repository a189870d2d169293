"""Seeded Langevin molecular dynamics with ASE, sampled into labelled frames."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation
from tqdm.auto import tqdm

from ._checks import check_non_negative, check_positive
from ._frames import label_frame

__all__ = ["langevin_frames"]


def langevin_frames(
    atoms: Atoms,
    calculator: Callable[[], Calculator],
    *,
    temperature_K: float,
    timestep_fs: float,
    friction_per_fs: float,
    n_frames: int,
    stride: int,
    n_equilibration_steps: int,
    seed: int,
    info: Mapping[str, Any],
    progress: bool,
    desc: str,
) -> list[Atoms]:
    """Run Langevin MD on ``atoms`` with a new ``calculator()`` and return labelled snapshots.

    The arguments are checked first (errors name them), then the calculator is made.
    Velocities start from a Maxwell-Boltzmann distribution at ``temperature_K`` (centre of
    mass at rest and held fixed with ``FixCom``; rotation removed for molecules). After
    ``n_equilibration_steps`` steps, one frame is taken every ``stride`` steps until
    ``n_frames`` are taken. Force labels are the calculator's raw forces (``FixCom`` only
    constrains the dynamics).

    Args:
        atoms: start structure; it gets the calculator and is propagated in place.
        calculator: makes the ASE calculator of the labels.
        temperature_K: thermostat temperature, K.
        timestep_fs: time step, fs.
        friction_per_fs: Langevin friction, 1/fs.
        n_frames, stride, n_equilibration_steps: sampling schedule, in MD steps.
        seed: seed of the initial velocities and of the Langevin noise.
        info: metadata copied into every frame's ``info`` (``md_step`` is added).
        progress: show a progress bar.
        desc: label of the progress bar.

    Returns:
        ``n_frames`` copies of the structure with ``energy`` (eV) and ``forces`` (eV/Å) labels,
        and ``stress`` (eV/Å³, Voigt) when the structure is periodic in all directions.
    """
    check_positive("temperature_K", temperature_K)
    check_positive("n_frames", n_frames)
    check_positive("stride", stride)
    check_non_negative("n_equilibration_steps", n_equilibration_steps)
    check_positive("timestep_fs", timestep_fs)
    check_non_negative("friction_per_fs", friction_per_fs)
    atoms.calc = calculator()
    with_stress = bool(atoms.pbc.all())
    rng = np.random.RandomState(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    total = n_equilibration_steps + n_frames * stride
    frames: list[Atoms] = []
    with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
        if n_equilibration_steps:
            dyn.run(n_equilibration_steps)
            bar.update(n_equilibration_steps)
        for _ in range(n_frames):
            dyn.run(stride)
            bar.update(stride)
            frame = Atoms(
                atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc
            )
            stress = atoms.get_stress(voigt=True) if with_stress else None
            frame_info = dict(info, md_step=dyn.nsteps)
            frames.append(
                label_frame(
                    frame,
                    atoms.get_potential_energy(),
                    atoms.get_forces(apply_constraint=False),
                    stress=stress,
                    info=frame_info,
                )
            )
    return frames
