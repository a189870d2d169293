"""Attaching labels and metadata to frames, and writing frames to extended XYZ."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = ["label_frame", "write_frames", "call_string"]


def label_frame(
    atoms: Atoms,
    energy: float,
    forces: np.ndarray,
    stress: np.ndarray | None = None,
    info: Mapping[str, Any] | None = None,
) -> Atoms:
    """Attach labels to ``atoms`` as an ASE ``SinglePointCalculator`` and merge ``info``.

    Args:
        atoms: the structure; it is modified in place and returned.
        energy: total energy, eV (or the generator's reduced energy unit).
        forces: ``[N, 3]`` forces, eV/Å (or reduced units).
        stress: ``[6]`` Voigt or ``[3, 3]`` stress, eV/Å³, for periodic structures only.
        info: metadata stored in ``atoms.info`` (generator name, seed, physical parameters).

    Returns:
        ``atoms``, so that ``ase.io.write(..., format="extxyz")`` stores the labels under the
        standard keys ``energy``, ``forces`` and ``stress``.
    """
    forces = np.asarray(forces, dtype=float)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"forces must have shape ({len(atoms)}, 3), got {forces.shape}")
    results: dict[str, Any] = {"energy": float(energy), "forces": forces.copy()}
    if stress is not None:
        results["stress"] = np.asarray(stress, dtype=float).copy()
    if info:
        reserved = set(results) | {"free_energy"}
        clash = reserved.intersection(info)
        if clash:
            raise ValueError(f"info keys {sorted(clash)} clash with label names")
        atoms.info.update(info)
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def write_frames(frames: Sequence[Atoms], path: str | os.PathLike[str]) -> None:
    """Write labelled frames to ``path`` as extended XYZ (energy, forces, stress, info).

    Read them back with ``ase.io.read(path, ":")``.
    """
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {os.fspath(path)!r}")
    import ase.io

    ase.io.write(os.fspath(path), list(frames), format="extxyz")


def call_string(function_name: str, arguments: Mapping[str, Any]) -> str:
    """The Python call that reproduces a data set, e.g. ``"toy2d(n_samples=500, seed=0)"``."""

    def fmt(value: Any) -> str:
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, tuple):
            value = list(value)
        return repr(value)

    args = ", ".join(f"{key}={fmt(value)}" for key, value in arguments.items())
    return f"{function_name}({args})"
