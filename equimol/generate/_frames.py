"""Attaching labels and metadata to frames, and writing frames to extended XYZ.

A generator's provenance comes from its signature: :func:`frame_generator` binds each call
(:func:`frame_arguments`, defaults applied) and records the arguments and the reproducing
call (:func:`call_string`) in every frame, so a new argument needs no second edit.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = ["label_frame", "write_frames", "call_string", "frame_arguments", "frame_generator"]

#: Generator arguments that change no frame: left out of the recorded call and of cache keys.
NON_FRAME_ARGUMENTS = frozenset({"progress"})

GeneratorFunction = TypeVar("GeneratorFunction", bound=Callable[..., list[Atoms]])


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


def frame_arguments(function: Callable, /, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The arguments the call ``function(*args, **kwargs)`` runs with, by name.

    Bound with ``inspect.signature``, defaults applied, in the order of the signature, and
    without the arguments that change no frame (``progress``).

    Raises:
        TypeError: for an argument ``function`` does not take or a missing one, as the call
            itself would.
    """
    bound = inspect.signature(function).bind(*args, **kwargs)
    bound.apply_defaults()
    return {key: value for key, value in bound.arguments.items() if key not in NON_FRAME_ARGUMENTS}


def frame_generator(name: str) -> Callable[[GeneratorFunction], GeneratorFunction]:
    """Decorator of a generator: every frame it returns records where it came from.

    Each frame's ``info`` gets ``generator`` (``name``, the CLI name), every argument of the
    call from :func:`frame_arguments` (``seed`` among them; arguments left at ``None`` appear
    in ``call`` only, since extended XYZ cannot store ``None``), then the keys the generator
    set itself (a normalised or derived value wins over the argument of the same name), and
    last ``call``, the Python call that reproduces the frames. The decorated function keeps
    its name, signature and docstring (the CLI is built from them) and gets the attribute
    ``generator_name``.
    """

    def decorate(function: GeneratorFunction) -> GeneratorFunction:
        @functools.wraps(function)
        def generate(*args: Any, **kwargs: Any) -> list[Atoms]:
            arguments = frame_arguments(function, *args, **kwargs)
            frames = function(*args, **kwargs)
            recorded = {key: value for key, value in arguments.items() if value is not None}
            call = call_string(function.__name__, arguments)
            for atoms in frames:
                info = {"generator": name, **recorded, **atoms.info, "call": call}
                atoms.info.clear()
                atoms.info.update(info)
            return frames

        generate.generator_name = name  # type: ignore[attr-defined]
        return generate  # type: ignore[return-value]

    return decorate
