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
from typing import Iterator, Mapping, Sequence

import ase
import ase.db
import ase.io
import numpy as np
from ase.io.formats import string2index

from equimol import _keys as K

__all__ = [
    "read_frames",
    "iter_frames",
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
        ValueError: the file is empty, malformed or of an unknown format, a frame has
            non-finite positions or cell, or the selection holds no frame; the message names
            the file and, where known, the frame. Whatever ASE raises on a malformed file
            (``IndexError``, ``UnicodeDecodeError``...) comes as this ValueError.
    """
    return list(iter_frames(path, index))


def iter_frames(path: str | os.PathLike, index: str | int | slice = ":") -> Iterator[ase.Atoms]:
    """The frames of a structure file or an ASE database, one at a time (``ase.io.iread``).

    The streaming form of :func:`read_frames`, for files too large to hold: the same files,
    the same frame selection, the same checks and error messages, but each frame is read
    when it is asked for and can be dropped before the next one is read.

    The path and the index are checked at once (a missing file raises here); the frames
    are read, and a damaged frame raises, only while iterating. A frame is checked (finite
    positions and cell) before it is handed out, so the frames before a bad one arrive
    before its error.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_frames`.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, expected a structure file or an ASE database")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: the file is empty")
    try:
        selection = string2index(index) if isinstance(index, str) else index
    except ValueError:
        selection = None
    if isinstance(selection, bool) or not isinstance(selection, (int, slice)):  # ASE hands back other text as it is
        raise ValueError(f"{path}: cannot read frames {index!r}: not an index or a slice such as ':' or '-10:'")
    return _frames_of(path, index, selection)


def _frames_of(path: Path, index: str | int | slice, selection: int | slice) -> Iterator[ase.Atoms]:
    """The checked frames ``selection`` of ``path`` (see :func:`iter_frames`)."""
    count = 0
    frames = _database_frames(path, selection) if path.suffix == ".db" else _file_frames(path, selection)
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except _LayoutError as error:
            raise ValueError(str(error)) from None
        except Exception as error:  # ASE raises many types (XYZError, IndexError, UnicodeDecodeError, ...)
            where = "" if path.suffix == ".db" else _frame_in_file(selection, count)
            raise ValueError(f"{path}{where}: could not read structures ({type(error).__name__}: {error})") from error
        _check_frame(atoms, f"{path}{_frame_in_file(selection, count)}")
        count += 1
        yield atoms
    if count == 0:
        raise ValueError(f"{path}: no structures found (index {index!r})")


def _file_frames(path: Path, selection: int | slice) -> Iterator[ase.Atoms]:
    if path.suffix.lower() in _XYZ_SUFFIXES:
        _check_xyz_layout(path, selection)
    # one frame at a time, so that an error can say which frame it is in
    yield from ase.io.iread(str(path), index=selection, do_not_split_by_at_sign=True)


_XYZ_SUFFIXES = (".xyz", ".extxyz")


class _LayoutError(ValueError):
    """A malformed (extended) XYZ file, found before ASE reads it; the message is complete."""


def _check_xyz_layout(path: Path, selection: int | slice) -> None:
    """Check the frame headers of an (extended) XYZ file the way ASE walks them, and raise a
    :class:`_LayoutError` naming the file, frame and line where ASE would go wrong: a header
    that is not a number of atoms (ASE's message names neither), a number of atoms larger
    than the lines that follow (ASE would count through them one by one, for as long as the
    number says), a blank line with frames after it (ASE stops there and drops them without
    a word), or bytes that are not UTF-8 text. Only the frames up to the last one selected
    are checked, as ASE only reads those.

    The file is read in blocks (:class:`_Lines`), so the check takes the same memory for a
    file of any size."""
    last = None  # the frames ASE scans: up to the last one selected, where that is known
    if isinstance(selection, int) and selection >= 0:
        last = selection + 1
    elif isinstance(selection, slice) and selection.stop is not None and selection.stop >= 0:
        last = selection.stop
    with open(path, "rb") as handle:
        lines = _Lines(handle, path)
        frames = 0
        while last is None or frames < last:
            k = lines.number
            header = lines.read()
            if header is None:
                break
            if not header.strip():
                if lines.text_follows():
                    after = f"after frame {frames - 1}, " if frames else ""
                    raise _LayoutError(
                        f"{path}, {after}line {k + 1}: could not read structures: a blank line where a frame's "
                        "number of atoms should be, with more text after it (ASE would stop reading here "
                        "and drop the rest without a word)"
                    )
                break
            where = f"{path}, frame {frames} (line {k + 1})"
            try:
                natoms = int(header)
            except ValueError:
                text = header[:60].decode("utf-8", errors="replace")
                raise _LayoutError(
                    f"{where}: could not read structures: expected the number of atoms, got {text!r}"
                ) from None
            lines.start_frame(k)
            skipped = lines.skip(1 + natoms if natoms >= 0 else _ALL)
            if natoms < 0 or skipped < 1 + natoms:
                left = max(skipped - 1, 0)
                raise _LayoutError(
                    f"{where}: could not read structures: the header says {natoms} atoms, but "
                    f"{left} line{'' if left == 1 else 's'} follow the comment line"
                )
            frames += 1
            while (following := lines.peek()) is not None and following.lstrip().startswith(b"VEC"):
                lines.read()  # lattice vectors of plain XYZ
        lines.check_text()


_ALL = 1 << 62  # more lines than any file has


class _Lines:
    """The lines of a binary file, read in blocks of ``block`` bytes: read or look at the next
    line, or skip lines, holding only one block (and the line that crosses its end) at a time.

    Lines end at ``\n``; a last line without one counts when it is not empty. The bytes read
    past are checked to be UTF-8 text block by block; :meth:`check_text` checks the rest and
    raises for the first bad byte, naming its line and frame (:meth:`start_frame`). (It is
    raised only then, so that an error in the layout, found while walking, comes first, as
    it would for any size of block.)
    """

    def __init__(self, handle, path: Path, block: int = 1 << 20) -> None:
        self._handle, self._path, self._block = handle, path, block
        self._buffer = b""
        self._ends = np.empty(0, dtype=np.int64)  # positions of the newlines in the buffer
        self._next = 0  # first entry of _ends at or after _pos
        self._pos = 0  # where the next line starts in the buffer
        self._offset = 0  # file offset of the buffer's first byte
        self._eof = False
        self.number = 0  # line number (from 0) of the next line
        self._checked_line = 0  # line number at the first byte not yet checked as text
        self._frames: list[tuple[int, int]] = []  # (frame, first line) of the frames not yet checked
        self._frames_started = 0
        self._bad_text: str | None = None  # the message of the first byte that is not UTF-8

    def start_frame(self, line: int) -> None:
        """Record that a frame's header is ``line`` (for naming the frame of a bad byte)."""
        self._frames.append((self._frames_started, line))
        self._frames_started += 1

    def _fill(self) -> bool:
        """Read the next block after the unread part of the buffer; False at the end of the file."""
        if self._eof:
            return False
        data = self._handle.read(self._block)
        if not data:
            self._eof = True
            return False
        self._check(self._buffer[: self._pos])
        self._offset += self._pos
        self._buffer = self._buffer[self._pos :] + data
        self._pos = 0
        self._ends = np.flatnonzero(np.frombuffer(self._buffer, dtype=np.uint8) == ord("\n"))
        self._next = 0
        return True

    def _line_end(self) -> int | None:
        """Buffer position of the next line's end (its newline, or the end of the file), or None
        when no line is left."""
        while self._next >= len(self._ends):
            if not self._fill():
                return len(self._buffer) if self._pos < len(self._buffer) else None
        return int(self._ends[self._next])

    def peek(self) -> bytes | None:
        """The next line without its newline, not consumed; None at the end of the file."""
        end = self._line_end()
        return None if end is None else self._buffer[self._pos : end]

    def read(self) -> bytes | None:
        """The next line without its newline; None at the end of the file."""
        end = self._line_end()
        if end is None:
            return None
        line = self._buffer[self._pos : end]
        self._pos = end + 1
        self._next += 1
        self.number += 1
        return line

    def skip(self, count: int) -> int:
        """Skip ``count`` lines; returns how many there were (fewer at the end of the file)."""
        done = 0
        while done < count:
            available = len(self._ends) - self._next
            if available > 0:
                take = min(available, count - done)
                self._pos = int(self._ends[self._next + take - 1]) + 1
                self._next += take
                self.number += take
                done += take
            elif not self._fill():
                if self._pos < len(self._buffer):  # a last line without a newline
                    self._pos = len(self._buffer)
                    self.number += 1
                    done += 1
                break
        return done

    def text_follows(self) -> bool:
        """True when anything but white space follows the lines read so far."""
        if self._buffer[self._pos :].strip():
            return True
        while data := self._handle.read(self._block):  # read on without keeping what was read
            if data.strip():
                return True
        return False

    def check_text(self) -> None:
        """Raise a :class:`_LayoutError` for the first byte of the lines read so far that is
        not UTF-8 text."""
        self._check(self._buffer[: self._pos])
        if self._bad_text is not None:
            raise _LayoutError(self._bad_text)

    def _check(self, data: bytes) -> None:
        """Check ``data`` (the buffer's bytes up to a line start, not checked before) as UTF-8,
        then count its lines as checked."""
        start = self._checked_line
        try:
            if self._bad_text is None:
                data.decode("utf-8")
        except UnicodeDecodeError as error:
            bad_line = start + data.count(b"\n", 0, error.start) + 1
            frame = 0
            for number, first in self._frames:
                if first <= bad_line - 1:
                    frame = number
            self._bad_text = (
                f"{self._path}, frame {frame} (line {bad_line}): could not read structures: not UTF-8 text "
                f"(byte {data[error.start]:#04x} at offset {self._offset + error.start})"
            )
        self._checked_line = start + data.count(b"\n")
        self._frames = self._frames[-1:]  # the frame the next bytes start in is the last one begun


def _frame_in_file(selection: int | slice, number: int) -> str:
    """``", frame 12"``: the frame of the file that is ``number``-th of ``selection``, where it
    is known without counting the file's frames (a selection from the end is not)."""
    if isinstance(selection, int):
        return f", frame {selection}" if selection >= 0 else f", frame {selection} (from the end)"
    start, step = selection.start or 0, selection.step or 1
    if start >= 0 and step > 0:
        return f", frame {start + number * step}"
    return f", frame {number} of the selection {_slice_text(selection)}"


def _slice_text(selection: slice) -> str:
    parts = ["" if value is None else str(value) for value in (selection.start, selection.stop, selection.step)]
    return ":".join(parts[:2]) + (f":{parts[2]}" if parts[2] else "")


def _check_frame(atoms: ase.Atoms, where: str) -> None:
    """ValueError naming ``where`` for positions or a cell that are not finite numbers."""
    positions = atoms.arrays.get("positions")
    if positions is None or positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"{where}: no [N, 3] positions")
    if not np.isfinite(positions).all():
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"{where}: non-finite positions (NaN or inf) at atom indices {bad[:10].tolist()}")
    if not np.isfinite(atoms.cell.array).all():
        raise ValueError(f"{where}: the cell has non-finite (NaN or inf) entries")


def parse_source(source: str | os.PathLike) -> tuple[Path, str | None]:
    """Split ``"train.xyz@-100:"`` into the path and ASE's index string (``None`` without one).

    A path that exists as written is taken whole, so a file name may itself contain ``@``.
    """
    text = os.fspath(source)
    if "@" in text and not Path(text).exists():
        name, index = text.rsplit("@", 1)
        return Path(name), index
    return Path(text), None


def _database_frames(path: Path, selection: int | slice) -> Iterator[ase.Atoms]:
    """The rows ``selection`` of an ASE database as frames, read one at a time."""
    with ase.db.connect(path) as database:
        count = database.count()
        wanted = range(count)[selection]
        if isinstance(wanted, int):
            wanted = range(wanted, wanted + 1)
        if not wanted:
            return
        step, first, last = wanted.step, min(wanted[0], wanted[-1]), max(wanted[0], wanted[-1])
        if step > 0:
            for position, row in enumerate(database.select()):
                if position > last:
                    break
                if position >= first and (position - first) % step == 0:
                    yield _row_to_atoms(row)
        else:  # backwards: the rows of the selection are read, then handed out in its order
            rows = [row for position, row in enumerate(database.select())
                    if first <= position <= last and (position - first) % -step == 0]
            yield from (_row_to_atoms(row) for row in reversed(rows))


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
