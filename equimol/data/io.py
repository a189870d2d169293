"""Reading structures and their labels from files, with errors that name the file and frame.

Frames come from anything ``ase.io.read`` reads (extxyz above all) or from an ASE database
(``.db``, through ``ase.db``). Labels are looked up by key, first in ``atoms.info``, then in
``atoms.arrays``, then in the results of an attached calculator: extended-XYZ files written
with a calculator attached store ``energy``/``forces``/``stress`` as a ``SinglePointCalculator``,
files written from plain arrays store them under names such as ``REF_energy`` (info) and
``REF_forces`` (arrays), and a database row carries its stored results.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import ase
import ase.db
import ase.io
import numpy as np
from ase.io.formats import string2index

from equimol import _keys as K

__all__ = [
    "read_frames",
    "parse_source",
    "frame_labels",
    "frame_info_values",
    "available_keys",
    "MissingKeyError",
]


class MissingKeyError(KeyError):
    """A label or info key is not on a frame; the message lists the keys that are."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


# Per-atom arrays every Atoms carries; not labels.
_STRUCTURE_ARRAYS = ("numbers", "positions")


def read_frames(path: str | os.PathLike, index: str | int | slice = ":") -> list[ase.Atoms]:
    """Read the frames of a structure file or an ASE database.

    Args:
        path: an extended-XYZ file or any other format ``ase.io.read`` knows, or an ASE
            database (suffix ``.db``, ``.json`` databases are read by ``ase.io.read``).
        index: which frames, as in ``ase.io.read``: ``":"`` (all), ``"-10:"``, ``3``,
            or a ``slice``.

    Returns:
        The frames, each with its labels in ``info``/``arrays`` or an attached
        ``SinglePointCalculator``. Database rows also get their key-value pairs in
        ``info`` and their ``data`` entries in ``arrays`` (per-atom) or ``info``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, malformed or of an unknown format, or the
            selection holds no frame; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a structure file or an ASE database")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    selection = string2index(index) if isinstance(index, str) else index
    try:
        if path.suffix == ".db":
            frames = _read_database(path, selection)
        else:
            frames = ase.io.read(path, index=selection)
    except Exception as error:  # ASE raises many types (XYZError, UnknownFileTypeError, ...)
        raise ValueError(f"{path}: could not read structures ({type(error).__name__}: {error})") from error
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    if len(frames) == 0:
        raise ValueError(f"{path}: no structures found (index {index!r})")
    return list(frames)


def parse_source(source: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``"train.xyz@-100:"`` into the path and ASE's index string (``None`` without one).

    A path that exists as written is taken whole, so a file name may itself contain ``@``.
    """
    text = os.fspath(source)
    if "@" in text and not Path(text).exists():
        name, index = text.rsplit("@", 1)
        return Path(name), index
    return Path(text), None


def _read_database(path: Path, selection: int | slice) -> list[ase.Atoms]:
    with ase.db.connect(path) as database:
        rows = list(database.select())
    if isinstance(selection, int):
        rows = [rows[selection]]
    else:
        rows = rows[selection]
    return [_row_to_atoms(row) for row in rows]


def _row_to_atoms(row) -> ase.Atoms:
    atoms = row.toatoms()  # attaches a SinglePointCalculator with the stored results
    atoms.info.update(row.key_value_pairs)
    for name, value in row.data.items():
        array = np.asarray(value)
        if array.ndim >= 1 and array.shape[0] == len(atoms):
            atoms.arrays[name] = array
        else:
            atoms.info[name] = value
    return atoms


def available_keys(atoms: ase.Atoms) -> list[str]:
    """Sorted names a label could be read from: ``info`` keys, per-atom ``arrays`` other
    than numbers and positions, and calculator results."""
    keys = set(atoms.info) | (set(atoms.arrays) - set(_STRUCTURE_ARRAYS))
    calc = atoms.calc
    if calc is not None:
        keys |= set(getattr(calc, "results", {}) or {})
    return sorted(str(key) for key in keys)


def _lookup(atoms: ase.Atoms, key: str):
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays and key not in _STRUCTURE_ARRAYS:
        return atoms.arrays[key]
    calc = atoms.calc
    results = getattr(calc, "results", None) if calc is not None else None
    if results and key in results:
        return results[key]
    return None


def frame_labels(
    atoms: ase.Atoms,
    keys: Mapping[str, str | None],
    *,
    require: Sequence[str] = (),
    source: str = "structure",
) -> dict[str, np.ndarray]:
    """The labels of one frame, by the names under which it stores them.

    Args:
        atoms: the frame.
        keys: label name (``"energy"``, ``"forces"``, ``"stress"``) to the key the frame
            stores it under (``"REF_energy"``), or None to skip that label.
        require: label names that must be present.
        source: where the frame came from, for error messages (``"train.xyz, frame 12"``).

    Returns:
        ``{label name: float64 array}`` for every label found: energy in eV, forces
        [N, 3] eV/Å, stress [6] Voigt or [3, 3] eV/Å³ (a flat [9] is reshaped to [3, 3]).

    Raises:
        MissingKeyError: a required label is missing; the message lists the keys the frame has.
    """
    labels: dict[str, np.ndarray] = {}
    for name, key in keys.items():
        if name not in K.LABEL_KEYS:
            raise ValueError(f"unknown label {name!r}; expected one of {K.LABEL_KEYS}")
        value = None if key is None else _lookup(atoms, key)
        if value is None:
            if name in require:
                if key is None:
                    raise ValueError(f"label {name!r} is required but its key is set to None")
                raise MissingKeyError(
                    f"{source}: required label {name!r} not found under key {key!r}; "
                    f"keys on this frame: {available_keys(atoms)}"
                )
            continue
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: label {name!r} (key {key!r}) is not numeric: {value!r}") from error
        if name == K.STRESS and array.shape == (9,):
            array = array.reshape(3, 3)
        labels[name] = array
    return labels


def frame_info_values(
    atoms: ase.Atoms, info_keys: Sequence[str], *, source: str = "structure"
) -> dict[str, float]:
    """Numeric scalars from ``atoms.info`` (for example a temperature ``T`` or a mixing
    parameter ``gamma``).

    Raises:
        MissingKeyError: a key is missing (the message lists the keys present).
        ValueError: a value is not one finite number.
    """
    values = {}
    for key in info_keys:
        if key not in atoms.info:
            raise MissingKeyError(
                f"{source}: info key {key!r} not found; info keys on this frame: "
                f"{sorted(map(str, atoms.info))}"
            )
        try:
            value = float(np.asarray(atoms.info[key], dtype=np.float64).item())
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{source}: info key {key!r} must be one number, got {atoms.info[key]!r}"
            ) from error
        if not np.isfinite(value):
            raise ValueError(f"{source}: info key {key!r} is not finite ({value})")
        values[key] = value
    return values
