"""Data sets larger than memory: one file of raw arrays, memory-mapped and read one item at a time.

:func:`write_ondisk` streams labelled frames into one file; :class:`OnDiskAtomsDataset` serves
them as the same PyG ``Data`` items :class:`~equimol.data.AtomsDataset` builds, reading only the
frames asked for. ``equimol convert`` (:mod:`equimol.data._convert_cli`) writes such a file
from any structure file.

The file (suffix :data:`ONDISK_SUFFIX`) holds no code and no pickle: a fixed preamble, a JSON
header, then each array as raw little-endian bytes at a 64-byte aligned offset::

    bytes 0-7    MAGIC (b"\\x89EQD\\r\\n\\x1a\\n")
    bytes 8-11   format version, uint32
    bytes 12-19  header length in bytes, uint64
    bytes 20-23  CRC-32 of the header, uint32
    header       UTF-8 JSON: counts, labels, sources, checks, and for every array its
                 dtype, shape, offset (from the data section) and CRC-32
    data         the arrays, each aligned to 64 bytes

Per frame: ``numbers`` (uint8) and ``positions`` (float64, Å) of its atoms (the frame's atoms are
``atom_offset[k]:atom_offset[k + 1]``), ``cell`` (float64 [3, 3] Å), ``pbc`` (bool [3]),
the labels found (``energy`` float64 eV, ``forces`` float64 [n, 3] eV/Å, ``stress`` float64
[3, 3] eV/Å³, ASE sign), numeric ``info`` values, and where it came from (``source``: an
index into the header's list of source files, ``frame``: its frame number there). When written
with a ``cutoff``, the radius graph of that cutoff too (``edge_src``, ``edge_dst`` local atom
indices int32 and ``edge_shift`` int32 [E, 3] lattice shifts, frame ``k`` owning
``edge_offset[k]:edge_offset[k + 1]``): a data set of that cutoff reads its edges instead of
building them. Any other cutoff builds each graph with :func:`~equimol.data.atoms_to_graph`
when the item is read (in the DataLoader's workers), so one file serves every cutoff.

Every array is read through a read-only memory map of the whole file, opened afresh in each
process (every DataLoader worker has its own), so a data set costs memory for the frames being
read, not for the file. :class:`GraphLoader` is the DataLoader for it: its workers read, build
and batch the graphs, and hand each batch to the training process as one buffer.
"""

from __future__ import annotations

import io
import json
import logging
import math
import mmap
import numbers
import os
import pickle
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

import ase
import numpy as np
import torch
from ase.io.formats import string2index
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.loader.dataloader import Collater

from equimol import _keys as K
from equimol.data.dataset import check_graph_options
from equimol.data.graph import DEFAULT_MIN_DISTANCE, atoms_to_graph
from equimol.data.io import MissingKeyError, frame_info_values, frame_labels, parse_source

__all__ = [
    "OnDiskAtomsDataset",
    "GraphLoader",
    "OnDiskFormatError",
    "OnDiskSummary",
    "write_ondisk",
    "is_ondisk",
    "read_ondisk_header",
    "ONDISK_SUFFIX",
    "ONDISK_VERSION",
]

logger = logging.getLogger(__name__)

#: The suffix of equimol's on-disk data sets.
ONDISK_SUFFIX = ".eqd"
#: The version of the layout this equimol writes and reads.
ONDISK_VERSION = 1
#: The first 8 bytes of every such file (a PNG-style signature: a high byte, then CR LF, ^Z and
#: LF, so that a file passed through a text-mode transfer no longer matches).
MAGIC = b"\x89EQD\r\n\x1a\n"

_FORMAT_NAME = "equimol on-disk structures"
_PREAMBLE = struct.Struct("<8sIQI")  # magic, version, header length, header CRC-32
_ALIGN = 64
_MAX_HEADER = 1 << 30
_MAX_Z = 118
# A frame is checked when its graph is built from the stored edges only as far as these
# bounds: values beyond them come from a damaged file.
_LABEL_SHAPES = {K.ENERGY: (), K.FORCES: (3,), K.STRESS: (3, 3)}
_PER_ATOM = {"numbers", "positions", K.FORCES}
# Without a cutoff, frames are checked for close atoms on a graph of this radius, Å, or
# min_distance if larger (its edges are not stored): a search radius of min_distance itself
# (0.1 Å) would cut a molecule's box into tens of thousands of bins, and cost far more.
_CHECK_RADIUS = 1.0
_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}


class OnDiskFormatError(ValueError):
    """A file that is not an equimol on-disk data set, of another version, truncated or damaged;
    the message names the file and what is wrong."""


@dataclass(frozen=True)
class OnDiskSummary:
    """What an on-disk data set holds (from its header).

    Attributes:
        path: the file.
        num_frames: structures.
        num_atoms: atoms of all structures.
        num_edges: stored edges (0 without stored graphs).
        labels: the labels stored, in ``("energy", "forces", "stress")`` order.
        species: sorted atomic numbers present.
        cutoff: the radius, Å, of the stored graphs, or None.
        sources: the files the frames came from.
        size: bytes of the file.
    """

    path: Path
    num_frames: int
    num_atoms: int
    num_edges: int
    labels: tuple[str, ...]
    species: tuple[int, ...]
    cutoff: float | None
    sources: tuple[str, ...]
    size: int


# -- writing -------------------------------------------------------------------------------


class _Spool:
    """One array written in chunks to a file of its own, with its CRC-32 and row count."""

    def __init__(self, folder: Path, name: str, dtype: str, row_shape: tuple[int, ...]) -> None:
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.rows = 0
        self.crc = 0
        self.path = folder / f"{name}.bin"
        self._handle = open(self.path, "wb")
        self._pending: list[np.ndarray] = []

    def add(self, rows: np.ndarray) -> None:
        self._pending.append(np.ascontiguousarray(rows, dtype=self.dtype).reshape((-1, *self.row_shape)))

    def flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        raw = block.tobytes()
        self._handle.write(raw)
        self.crc = zlib.crc32(raw, self.crc)
        self.rows += len(block)
        self._pending = []

    def close(self) -> None:
        self.flush()
        self._handle.close()

    @property
    def nbytes(self) -> int:
        return self.rows * self.dtype.itemsize * math.prod(self.row_shape)


def write_ondisk(
    frames: Iterable[ase.Atoms | tuple[str, int, ase.Atoms]],
    path: str | os.PathLike,
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    require: Sequence[str] = (K.ENERGY,),
    info_keys: Sequence[str] = (),
    cutoff: float | None = None,
    on_isolated: Literal["error", "ignore"] = "error",
    min_distance: float = DEFAULT_MIN_DISTANCE,
    source: str = "frames",
    overwrite: bool = False,
    chunk_size: int = 4096,
) -> OnDiskSummary:
    """Write labelled frames into an on-disk data set, streaming (memory for ``chunk_size``
    frames at a time), and atomically: the file appears under ``path`` complete or not at all.

    Every frame is checked as :class:`~equimol.data.AtomsDataset` checks it (finite positions,
    a non-degenerate cell, no two atoms closer than ``min_distance``, labels of the right
    shape and finite, with ``cutoff`` no atom without neighbours unless ``on_isolated`` is
    ``"ignore"``); the first bad frame stops the writing with an error naming its source and
    frame, and leaves nothing under ``path``.

    Args:
        frames: ``ase.Atoms`` (their source is ``source``, their frame number their position),
            or ``(source, frame number, atoms)`` triples, for frames of several files.
        path: the file to write (conventionally with the suffix :data:`ONDISK_SUFFIX`).
        energy_key: where the energy (eV) is found on a frame (``info``, ``arrays`` or
            calculator results; see :func:`equimol.data.io.frame_labels`), or None to leave it
            out. A label is stored when the first frame has it, and then every frame must
            have it.
        forces_key: where the forces (eV/Å) are found, or None.
        stress_key: where the stress (eV/Å³, Voigt or 3 x 3) is found, or None.
        require: labels every frame must have.
        info_keys: numeric ``atoms.info`` entries to keep, as in ``AtomsDataset``.
        cutoff: also store the radius graph of this cutoff, Å, so that a data set of this
            cutoff reads its edges instead of building them (faster, at about 20 bytes per
            edge). None stores the structures only.
        on_isolated: with ``cutoff``: ``"error"`` on an atom without neighbours, or ``"ignore"``.
        min_distance: the smallest distance, Å, two atoms may have; 0 turns the check off.
        source: the name of the frames given as plain ``ase.Atoms``, for errors and the header.
        overwrite: replace an existing ``path`` (otherwise an existing file is an error).
        chunk_size: frames held in memory before they are written out.

    Returns:
        An :class:`OnDiskSummary` of the file written.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is False.
        ValueError, MissingKeyError: a bad frame or label, or no frames; the message names the
            source and the frame.
    """
    path = Path(path)
    keys = {K.ENERGY: energy_key, K.FORCES: forces_key, K.STRESS: stress_key}
    require = (require,) if isinstance(require, str) else tuple(require)
    for name in require:
        if name not in keys:
            raise ValueError(f"require: unknown label {name!r}; expected some of {K.LABEL_KEYS}")
        if keys[name] is None:
            raise ValueError(f"label {name!r} is required but {name}_key is None")
    info_keys = (info_keys,) if isinstance(info_keys, str) else tuple(info_keys)
    clash = sorted(set(info_keys) & ({K.POS, K.ATOMIC_NUMBERS, K.CELL, K.PBC, K.EDGE_INDEX, K.EDGE_SHIFT,
                                      K.BATCH, "ptr"} | set(K.LABEL_KEYS)))
    if clash:
        raise ValueError(f"info_keys {clash} clash with graph fields; rename them in the data")
    positive = isinstance(cutoff, numbers.Real) and not isinstance(cutoff, bool) and 0 < cutoff < np.inf
    if cutoff is not None and not positive:
        raise ValueError(f"cutoff must be a positive number of Å or None, got {cutoff!r}")
    if on_isolated not in ("error", "ignore"):
        raise ValueError(f"on_isolated must be 'error' or 'ignore', got {on_isolated!r}")
    if isinstance(min_distance, bool) or not (isinstance(min_distance, numbers.Real) and 0 <= min_distance < np.inf):
        raise ValueError(f"min_distance must be a number of Å >= 0 (0: no check), got {min_distance!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, expected the data set file to write")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists; choose another name or allow overwriting it")
    path.parent.mkdir(parents=True, exist_ok=True)

    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        header, spools = _write_spools(
            frames, folder, keys=keys, require=require, info_keys=info_keys, cutoff=cutoff,
            on_isolated=on_isolated, min_distance=float(min_distance), default_source=source,
            chunk_size=chunk_size,
        )
        partial = folder / "assembled"
        _assemble(partial, header, spools)
        os.replace(partial, path)  # atomic: a reader sees the whole file or none
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _summary(path, header)


def _write_spools(
    frames: Iterable[ase.Atoms | tuple[str, int, ase.Atoms]],
    folder: Path,
    *,
    keys: dict[str, str | None],
    require: tuple[str, ...],
    info_keys: tuple[str, ...],
    cutoff: float | None,
    on_isolated: str,
    min_distance: float,
    default_source: str,
    chunk_size: int,
) -> tuple[dict[str, Any], dict[str, _Spool]]:
    """Check every frame and write its arrays to one spool file per array; returns the header
    (without the array table) and the spools, closed."""
    spools: dict[str, _Spool] = {}

    def spool(name: str, dtype: str, row_shape: tuple[int, ...] = ()) -> _Spool:
        if name not in spools:
            spools[name] = _Spool(folder, name, dtype, row_shape)
        return spools[name]

    sources: dict[str, int] = {}
    labels: tuple[str, ...] | None = None
    species: set[int] = set()
    first_where = ""
    n_frames = n_atoms = n_edges = 0
    atom_offset = spool("atom_offset", "<i8")
    atom_offset.add(np.zeros(1))
    edge_offset = spool("edge_offset", "<i8") if cutoff is not None else None
    if edge_offset is not None:
        edge_offset.add(np.zeros(1))
    try:
        for item in frames:
            if isinstance(item, ase.Atoms):
                name, number, atoms = default_source, n_frames, item
            else:
                name, number, atoms = item
            if not isinstance(atoms, ase.Atoms):
                raise TypeError(f"{name}, frame {number}: expected ase.Atoms, got {type(atoms).__name__}")
            where = f"{name}, frame {number}"
            found = frame_labels(atoms, keys, require=require, source=where)
            if labels is None:
                labels, first_where = tuple(n for n in K.LABEL_KEYS if n in found), where
            _check_same_labels(found, labels, keys, where, first_where)
            graph = atoms_to_graph(
                atoms,
                cutoff if cutoff is not None else (max(min_distance, _CHECK_RADIUS) if min_distance else 0.0),
                found,
                dtype=torch.float64,
                on_isolated=on_isolated if cutoff is not None else "ignore",
                min_distance=min_distance,
                source=where,
            )
            z = graph[K.ATOMIC_NUMBERS].numpy()
            if z.min() < 0 or z.max() > _MAX_Z:
                raise ValueError(f"{where}: atomic numbers must lie in 0..{_MAX_Z}, got {sorted(set(z.tolist()))}")
            species.update(np.unique(z).tolist())
            n = len(z)
            n_atoms += n
            atom_offset.add(np.array([n_atoms]))
            spool("numbers", "|u1").add(z)
            spool("positions", "<f8", (3,)).add(graph[K.POS].numpy())
            spool("cell", "<f8", (3, 3)).add(graph[K.CELL].numpy())
            spool("pbc", "|b1", (3,)).add(graph[K.PBC].numpy())
            spool("source", "<i4").add(np.array([sources.setdefault(str(name), len(sources))]))
            spool("frame", "<i8").add(np.array([int(number)]))
            for label in labels:
                shape = _LABEL_SHAPES[label]
                spool(label, "<f8", shape).add(graph[label].numpy())
            for key, value in frame_info_values(atoms, info_keys, source=where).items():
                spool(f"info.{key}", "<f8").add(np.array([value]))
            if edge_offset is not None:
                edge_index = graph[K.EDGE_INDEX].numpy()
                shifts = graph[K.EDGE_SHIFT].numpy()
                if shifts.size and np.abs(shifts).max() >= 2**31:
                    raise ValueError(f"{where}: lattice shifts beyond int32; is an atom far out of place?")
                n_edges += edge_index.shape[1]
                edge_offset.add(np.array([n_edges]))
                spool("edge_src", "<i4").add(edge_index[0])
                spool("edge_dst", "<i4").add(edge_index[1])
                spool("edge_shift", "<i4", (3,)).add(shifts)
            n_frames += 1
            if n_frames % chunk_size == 0:
                for s in spools.values():
                    s.flush()
    finally:
        for s in spools.values():
            s.close()
    if n_frames == 0:
        raise ValueError(f"{default_source}: no structures to write")
    header = {
        "format": _FORMAT_NAME,
        "version": ONDISK_VERSION,
        "num_frames": n_frames,
        "num_atoms": n_atoms,
        "num_edges": n_edges,
        "labels": list(labels or ()),
        "label_keys": {name: keys[name] for name in labels or ()},
        "info_keys": list(info_keys),
        "species": sorted(species),
        "sources": list(sources),
        "min_distance": min_distance,
        "graph": None if cutoff is None else {"cutoff": float(cutoff), "on_isolated": on_isolated},
    }
    return header, spools


def _check_same_labels(found: dict, labels: tuple[str, ...], keys: dict, where: str, first: str) -> None:
    """Every frame carries the labels of the first frame, and no other (they are batched together)."""
    for name in K.LABEL_KEYS:
        if name in labels and name not in found:
            raise MissingKeyError(
                f"{where}: label {name!r} (key {keys[name]!r}) is missing, but {first} has it; every frame "
                f"needs the same labels: fix the data, or leave the label out ({name}_key None)"
            )
        if name in found and name not in labels:
            raise ValueError(
                f"{where}: label {name!r} (key {keys[name]!r}) is here but not on {first}; every frame "
                f"needs the same labels: fix the data, or leave the label out ({name}_key None)"
            )


def _assemble(partial: Path, header: dict[str, Any], spools: dict[str, _Spool]) -> None:
    """Write the preamble, the header and the spooled arrays into one file."""
    table, offset = {}, 0
    for name, s in spools.items():
        table[name] = {
            "dtype": s.dtype.str,
            "shape": [s.rows, *s.row_shape],
            "offset": offset,
            "crc32": s.crc,
        }
        offset = _aligned(offset + s.nbytes)
    header = {**header, "arrays": table, "data_size": offset}
    text = json.dumps(header, sort_keys=True).encode()
    start = _aligned(_PREAMBLE.size + len(text))
    with open(partial, "wb") as out:
        out.write(_PREAMBLE.pack(MAGIC, ONDISK_VERSION, len(text), zlib.crc32(text)))
        out.write(text)
        for name, s in spools.items():
            out.seek(start + table[name]["offset"])
            with open(s.path, "rb") as part:
                shutil.copyfileobj(part, out, 1 << 22)
        out.truncate(start + offset)
        out.flush()
        os.fsync(out.fileno())


def _aligned(offset: int) -> int:
    return -(-offset // _ALIGN) * _ALIGN


# -- reading -------------------------------------------------------------------------------


def is_ondisk(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an on-disk data set: its suffix is :data:`ONDISK_SUFFIX` (ASE's
    frame selection such as ``train.eqd@:100`` allowed), or the file starts with :data:`MAGIC`."""
    file, _ = parse_source(path)
    if file.suffix.lower() == ONDISK_SUFFIX:
        return True
    try:
        with open(file, "rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def read_ondisk_header(path: str | os.PathLike) -> dict[str, Any]:
    """The header of an on-disk data set, checked: the magic bytes, the version, the header's
    CRC-32, the file's size (a truncated file) and every array's type, shape and place.

    Raises:
        FileNotFoundError: no such file.
        OnDiskFormatError: (a ValueError) not an equimol on-disk data set, another version,
            truncated or damaged; the message names the file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such on-disk data set")
    if path.is_dir():
        raise OnDiskFormatError(f"{path}: is a directory, expected an on-disk data set ({ONDISK_SUFFIX} file)")
    size = path.stat().st_size
    convert = f"write one with 'equimol convert STRUCTURES {path.stem}{ONDISK_SUFFIX}'"
    with open(path, "rb") as handle:
        preamble = handle.read(_PREAMBLE.size)
        if len(preamble) < len(MAGIC) or preamble[: len(MAGIC)] != MAGIC:
            raise OnDiskFormatError(
                f"{path}: not an equimol on-disk data set (it starts with {preamble[:8]!r}, not {MAGIC!r}); {convert}"
            )
        if len(preamble) < _PREAMBLE.size:
            raise OnDiskFormatError(f"{path}: truncated: {size} bytes, too short for the header")
        _, version, length, crc = _PREAMBLE.unpack(preamble)
        if version != ONDISK_VERSION:
            hint = "a newer equimol wrote it: upgrade equimol" if version > ONDISK_VERSION else convert.replace(
                "write one", "convert the structures again")
            raise OnDiskFormatError(
                f"{path}: on-disk format version {version}, but this equimol reads version {ONDISK_VERSION}; {hint}"
            )
        if length > min(size - _PREAMBLE.size, _MAX_HEADER):
            raise OnDiskFormatError(
                f"{path}: truncated or damaged: the header claims {length} bytes, the file has {size}"
            )
        text = handle.read(length)
    if zlib.crc32(text) != crc:
        raise OnDiskFormatError(f"{path}: damaged: the header's checksum does not match")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise OnDiskFormatError(f"{path}: damaged: the header is not JSON ({error})") from None
    _check_header(path, header, size, _aligned(_PREAMBLE.size + length))
    header["data_start"] = _aligned(_PREAMBLE.size + length)
    return header


def _check_header(path: Path, header: Any, size: int, start: int) -> None:
    def bad(what: str) -> OnDiskFormatError:
        return OnDiskFormatError(f"{path}: damaged header: {what}")

    if not isinstance(header, dict) or header.get("format") != _FORMAT_NAME:
        raise bad(f"format is not {_FORMAT_NAME!r}")
    counts = {}
    for key in ("num_frames", "num_atoms", "num_edges", "data_size"):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad(f"{key} is {value!r}, not a count")
        counts[key] = value
    if counts["num_frames"] == 0:
        raise bad("it holds no frames")
    if start + counts["data_size"] != size:
        raise OnDiskFormatError(
            f"{path}: truncated or damaged: {size} bytes, but its header describes {start + counts['data_size']}; "
            "was the file copied only in part?"
        )
    labels = header.get("labels")
    if not isinstance(labels, list) or any(name not in K.LABEL_KEYS for name in labels):
        raise bad(f"labels {labels!r}")
    info_keys = header.get("info_keys")
    if not isinstance(info_keys, list) or not all(isinstance(k, str) for k in info_keys):
        raise bad(f"info_keys {info_keys!r}")
    sources = header.get("sources")
    if not isinstance(sources, list) or not sources or not all(isinstance(s, str) for s in sources):
        raise bad("sources")
    species = header.get("species")
    if not isinstance(species, list) or not all(isinstance(z, int) and 0 <= z <= _MAX_Z for z in species):
        raise bad(f"species {species!r}")
    graph = header.get("graph")
    if graph is not None and not (
        isinstance(graph, dict)
        and isinstance(graph.get("cutoff"), (int, float))
        and graph["cutoff"] > 0
        and graph.get("on_isolated") in ("error", "ignore")
    ):
        raise bad(f"graph {graph!r}")
    if not isinstance(header.get("min_distance"), (int, float)):
        raise bad("min_distance")

    n_frames, n_atoms, n_edges = counts["num_frames"], counts["num_atoms"], counts["num_edges"]
    expected = {
        "atom_offset": ("<i8", [n_frames + 1]),
        "numbers": ("|u1", [n_atoms]),
        "positions": ("<f8", [n_atoms, 3]),
        "cell": ("<f8", [n_frames, 3, 3]),
        "pbc": ("|b1", [n_frames, 3]),
        "source": ("<i4", [n_frames]),
        "frame": ("<i8", [n_frames]),
    }
    for name in labels:
        expected[name] = ("<f8", [n_atoms if name in _PER_ATOM else n_frames, *_LABEL_SHAPES[name]])
    for key in info_keys:
        expected[f"info.{key}"] = ("<f8", [n_frames])
    if graph is not None:
        expected |= {
            "edge_offset": ("<i8", [n_frames + 1]),
            "edge_src": ("<i4", [n_edges]),
            "edge_dst": ("<i4", [n_edges]),
            "edge_shift": ("<i4", [n_edges, 3]),
        }
    table = header.get("arrays")
    if not isinstance(table, dict) or set(table) != set(expected):
        found = sorted(table) if isinstance(table, dict) else table
        raise bad(f"arrays {found}, expected {sorted(expected)}")
    for name, (dtype, shape) in expected.items():
        entry = table[name]
        if not isinstance(entry, dict) or entry.get("dtype") != dtype or entry.get("shape") != shape:
            raise bad(f"array {name!r} is {entry!r}, expected dtype {dtype} and shape {shape}")
        offset = entry.get("offset")
        nbytes = np.dtype(dtype).itemsize * math.prod(shape)
        if not isinstance(offset, int) or offset < 0 or offset % _ALIGN or offset + nbytes > counts["data_size"]:
            raise bad(f"array {name!r} lies outside the file (offset {offset!r})")
        if not isinstance(entry.get("crc32"), int):
            raise bad(f"array {name!r} has no checksum")


class OnDiskAtomsDataset(Dataset):
    """An on-disk data set (see :mod:`equimol.data.ondisk`) as radius graphs, read lazily.

    Items are the ``Data`` of :class:`~equimol.data.AtomsDataset`: ``pos [N,3]`` Å, ``z [N]``,
    ``cell [1,3,3]`` Å, ``pbc [1,3]``, ``edge_index [2,E]``, ``edge_shift [E,3]``, the labels
    (``energy [1]`` eV, ``forces [N,3]`` eV/Å, ``stress [1,3,3]`` eV/Å³) and one ``[1]`` tensor per
    stored info key, equal to what ``AtomsDataset`` builds from the file that was converted.
    Only the header is read when the data set is made; each item is read from the file (and its
    graph built, unless the file stores the graph of this cutoff) when it is asked for, so the
    data set takes little memory in the main process and in each DataLoader worker.

    Args:
        path: the file, optionally with a frame selection: ``"train.eqd@:1000"``.
        cutoff: radius of the graphs, Å. When the file stores the graphs of this very cutoff
            (``equimol convert --cutoff``), and they were checked at least as strictly as asked
            (``min_distance``, ``on_isolated``), they are read; otherwise each graph is built with
            :func:`~equimol.data.atoms_to_graph`.
        labels: the stored labels to put on the items; None: all. Leaving one out is like
            setting its key to None in ``AtomsDataset``.
        require: labels the file must hold (an error names the file and the labels it has).
        index: frames to take, as in ``ase.io.read`` (``":"``, ``"-100:"``, ``5``).
        dtype: floating dtype of positions, cells, shifts and labels.
        transform: a callable ``Data -> Data`` applied to every item (for augmentation).
        on_isolated: ``"error"`` or ``"ignore"`` atoms with no neighbour within the cutoff.
        min_distance: the smallest distance, Å, two atoms of a frame may have; 0: no check.
        verify: check the CRC-32 of every array when the data set is made (reads the whole file once).

    Attributes:
        path: the file.
        cutoff: radius of the graphs, Å.
        header: the file's header (counts, labels, sources, the stored graph's cutoff).
        stored_graphs: whether items take their edges from the file.

    Raises:
        FileNotFoundError: no such file.
        OnDiskFormatError: (a ValueError) not an on-disk data set, another version, truncated
            or damaged; reading a damaged frame raises it too, naming the frame.
        MissingKeyError: a required label is not in the file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        cutoff: float,
        *,
        labels: Sequence[str] | None = None,
        require: Sequence[str] = (),
        index: str | int | slice = ":",
        dtype: torch.dtype = torch.float32,
        transform: Callable[[Data], Data] | None = None,
        on_isolated: Literal["error", "ignore"] = "error",
        min_distance: float = DEFAULT_MIN_DISTANCE,
        verify: bool = False,
    ) -> None:
        super().__init__()
        check_graph_options(cutoff, on_isolated, min_distance, dtype)
        self.path, suffix = parse_source(path)
        if suffix is not None:
            if index != ":":
                raise ValueError(f"{path}: give the frames either after '@' or as index, not both")
            index = suffix
        self.header = read_ondisk_header(self.path)
        stored = tuple(self.header["labels"])
        labels = stored if labels is None else tuple(labels)
        unknown = [name for name in labels if name not in K.LABEL_KEYS]
        if unknown:
            raise ValueError(f"labels: unknown {unknown}; expected some of {K.LABEL_KEYS}")
        require = (require,) if isinstance(require, str) else tuple(require)
        missing = [name for name in require if name not in stored or name not in labels]
        if missing:
            raise MissingKeyError(
                f"{self.path}: required labels {missing} are not in the file (it holds {list(stored)}, "
                f"converted from the keys {self.header['label_keys']}); convert it again with the right "
                "--energy_key/--forces_key/--stress_key"
            )
        self._labels = tuple(name for name in K.LABEL_KEYS if name in labels and name in stored)
        self.cutoff = float(cutoff)
        self.dtype = dtype
        self.transform = transform
        self._on_isolated = on_isolated
        self.min_distance = float(min_distance)
        graph = self.header["graph"]
        self.stored_graphs = bool(
            graph is not None
            and float(graph["cutoff"]) == self.cutoff
            and self.min_distance <= float(self.header["min_distance"])
            and (on_isolated == "ignore" or graph["on_isolated"] == "error")
        )
        if graph is not None and not self.stored_graphs:
            logger.info("%s: stores graphs of cutoff %g Å, asked for %g Å (min_distance %g, on_isolated %s): "
                        "building each graph when it is read", self.path, graph["cutoff"], self.cutoff,
                        self.min_distance, on_isolated)
        total = self.header["num_frames"]
        try:
            selection = string2index(index) if isinstance(index, str) else index
            frames = range(total)[selection]
        except (ValueError, IndexError, TypeError) as error:
            raise ValueError(f"{self.path}: cannot select frames {index!r} of {total} ({error})") from None
        self._frames = range(frames, frames + 1) if isinstance(frames, int) else frames
        if len(self._frames) == 0:
            raise ValueError(f"{self.path}: no structures selected (index {index!r} of {total} frames)")
        self._index = index
        self._pid: int | None = None
        self._arrays: dict[str, np.ndarray] = {}
        self._check_offsets()
        if verify:
            self.verify()

    # -- the file ----------------------------------------------------------------------

    def _open(self) -> dict[str, np.ndarray]:
        """The arrays of the file, memory-mapped once per process (each worker maps its own)."""
        if self._pid != os.getpid():
            try:
                with open(self.path, "rb") as handle:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as error:
                raise OnDiskFormatError(f"{self.path}: cannot be mapped ({error})") from None
            if len(mapped) != self.header["data_start"] + self.header["data_size"]:
                raise OnDiskFormatError(f"{self.path}: changed size since it was opened")
            whole = np.frombuffer(mapped, dtype=np.uint8)  # plain read-only arrays: fast to index
            start = self.header["data_start"]
            arrays = {}
            for name, entry in self.header["arrays"].items():
                dtype = np.dtype(entry["dtype"])
                begin = start + entry["offset"]
                count = math.prod(entry["shape"])
                arrays[name] = whole[begin : begin + count * dtype.itemsize].view(dtype).reshape(entry["shape"])
            self._arrays, self._pid = arrays, os.getpid()
        return self._arrays

    def _check_offsets(self) -> None:
        """The atom (and edge) offsets start at 0, never decrease (atoms: always increase) and end
        at the totals: checked in blocks, so a damaged file cannot send a read astray."""
        arrays = self._open()
        for name, total, least in (("atom_offset", self.header["num_atoms"], 1),
                                   ("edge_offset", self.header["num_edges"], 0)):
            if name not in arrays:
                continue
            offsets = arrays[name]
            if offsets[0] != 0 or offsets[-1] != total:
                raise OnDiskFormatError(f"{self.path}: damaged: {name} runs from {offsets[0]} to {offsets[-1]}, "
                                        f"expected 0 to {total}")
            block = 1 << 20
            for begin in range(0, len(offsets) - 1, block):
                steps = np.diff(offsets[begin : begin + block + 1])
                if steps.min() < least:
                    frame = begin + int(np.argmax(steps < least))
                    raise OnDiskFormatError(f"{self.path}: damaged: {name} of frame {frame} is out of order")

    def verify(self) -> None:
        """Check every array against its CRC-32 (reads the whole file once).

        Raises:
            OnDiskFormatError: naming the first array whose bytes changed.
        """
        arrays = self._open()
        for name, entry in self.header["arrays"].items():
            raw = arrays[name].reshape(-1).view(np.uint8)
            crc = 0
            for begin in range(0, len(raw), 1 << 24):
                crc = zlib.crc32(raw[begin : begin + (1 << 24)], crc)
            if crc != entry["crc32"]:
                raise OnDiskFormatError(f"{self.path}: damaged: the checksum of array {name!r} does not match")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"], state["_pid"] = {}, None  # a worker maps the file itself
        return state

    # -- access ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def species(self) -> list[int]:
        """Sorted atomic numbers present in the file."""
        return list(self.header["species"])

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels the items carry."""
        return self._labels

    def origin(self, index: int) -> tuple[str, int]:
        """``(source file, frame number)`` item ``index`` was converted from."""
        arrays, frame = self._open(), self._frames[int(index)]
        return self.header["sources"][int(arrays["source"][frame])], int(arrays["frame"][frame])

    def _where(self, frame: int) -> str:
        arrays = self._open()
        number = int(arrays["source"][frame])
        if not 0 <= number < len(self.header["sources"]):
            return f"{self.path}, frame {frame}"
        return f"{self.path}, frame {frame} ({self.header['sources'][number]}, frame {int(arrays['frame'][frame])})"

    def _read(self, frame: int) -> dict[str, np.ndarray]:
        """The stored arrays of ``frame`` (copies), checked as far as is cheap."""
        arrays = self._open()
        a, b = int(arrays["atom_offset"][frame]), int(arrays["atom_offset"][frame + 1])
        values = {
            "numbers": np.array(arrays["numbers"][a:b], dtype=np.int64),
            "positions": np.array(arrays["positions"][a:b]),
            "cell": np.array(arrays["cell"][frame]),
            "pbc": np.array(arrays["pbc"][frame]),
        }
        for name in self._labels:
            values[name] = np.array(arrays[name][a:b] if name in _PER_ATOM else arrays[name][frame])
        z = values["numbers"]
        if z.min() < 0 or z.max() > _MAX_Z:
            raise OnDiskFormatError(f"{self._where(frame)}: damaged: atomic numbers outside 0..{_MAX_Z}")
        return values

    def atoms(self, index: int) -> ase.Atoms:
        """Item ``index`` as ``ase.Atoms`` (float64 positions and cell as stored, labels in
        ``info`` (energy, stress) and ``arrays`` (forces) under their label names, the info
        values in ``info``)."""
        frame = self._frames[int(index)]
        values = self._read(frame)
        atoms = ase.Atoms(numbers=values["numbers"], positions=values["positions"], cell=values["cell"],
                          pbc=values["pbc"])
        for name in self._labels:
            if name in _PER_ATOM:
                atoms.arrays[name] = values[name]
            else:
                atoms.info[name] = float(values[name]) if name == K.ENERGY else values[name]
        for key in self.header["info_keys"]:
            atoms.info[key] = float(self._open()[f"info.{key}"][frame])
        return atoms

    def __getitem__(self, index: int) -> Data:
        """Graph ``index``, read from the file (a new ``Data`` every time), through ``transform``."""
        if isinstance(index, (np.integer, torch.Tensor)):
            index = int(index)
        frame = self._frames[index]
        values = self._read(frame)
        if self.stored_graphs:
            data = self._stored_graph(frame, values)
        else:
            atoms = ase.Atoms(numbers=values["numbers"], positions=values["positions"], cell=values["cell"],
                              pbc=values["pbc"])
            labels = {name: values[name] for name in self._labels}
            data = atoms_to_graph(atoms, self.cutoff, labels, dtype=self.dtype, on_isolated=self._on_isolated,
                                  min_distance=self.min_distance, source=self._where(frame))
        arrays = self._open()
        for key in self.header["info_keys"]:
            data[key] = torch.tensor([float(arrays[f"info.{key}"][frame])], dtype=self.dtype)
        return data if self.transform is None else self.transform(data)

    def _stored_graph(self, frame: int, values: dict[str, np.ndarray]) -> Data:
        """The graph of the stored edges: the tensors ``atoms_to_graph`` builds, bit for bit."""
        arrays = self._open()
        a, b = int(arrays["edge_offset"][frame]), int(arrays["edge_offset"][frame + 1])
        edge_index = np.stack([arrays["edge_src"][a:b], arrays["edge_dst"][a:b]]).astype(np.int64)
        n = len(values["numbers"])
        if edge_index.size and (edge_index.min() < 0 or edge_index.max() >= n):
            raise OnDiskFormatError(f"{self._where(frame)}: damaged: edges name atoms beyond the frame's {n}")
        for name in ("positions", "cell", *self._labels):
            if not np.isfinite(values[name]).all():
                raise OnDiskFormatError(f"{self._where(frame)}: damaged: non-finite {name}")
        real = _NUMPY_DTYPES.get(self.dtype)

        def floats(array: np.ndarray) -> torch.Tensor:  # as torch.tensor(array, dtype), without its overhead
            if real is None:
                return torch.tensor(array, dtype=self.dtype)
            return torch.from_numpy(np.ascontiguousarray(array, dtype=real))

        shapes = {K.ENERGY: (1,), K.FORCES: (n, 3), K.STRESS: (1, 3, 3)}
        data = Data(
            pos=floats(values["positions"]),
            z=torch.from_numpy(values["numbers"]),
            cell=floats(values["cell"].reshape(1, 3, 3)),
            pbc=torch.from_numpy(values["pbc"].reshape(1, 3)),
            edge_index=torch.from_numpy(edge_index),
            edge_shift=floats(arrays["edge_shift"][a:b]),
            **{name: floats(values[name].reshape(shapes[name])) for name in self._labels},
        )
        return data

    def summary(self) -> OnDiskSummary:
        """What the file holds (all of it, whatever frames were selected)."""
        return _summary(self.path, self.header)

    def __repr__(self) -> str:
        graphs = "stored graphs" if self.stored_graphs else "graphs built when read"
        return (
            f"{type(self).__name__}({str(self.path)!r}, {len(self)} structures, cutoff={self.cutoff} Å, "
            f"labels={list(self._labels)}, species={self.species}, {graphs})"
        )


def _summary(path: Path, header: dict[str, Any]) -> OnDiskSummary:
    graph = header.get("graph")
    return OnDiskSummary(
        path=Path(path),
        num_frames=header["num_frames"],
        num_atoms=header["num_atoms"],
        num_edges=header["num_edges"],
        labels=tuple(header["labels"]),
        species=tuple(header["species"]),
        cutoff=None if graph is None else float(graph["cutoff"]),
        sources=tuple(header["sources"]),
        size=Path(path).stat().st_size,
    )


# -- loading with workers ----------------------------------------------------------------------


class _NumpyPickler(pickle.Pickler):
    """Pickles CPU tensors as NumPy arrays (their bytes in the stream), everything else as usual."""

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad:
            try:
                return torch.from_numpy, (obj.numpy(),)
            except TypeError:  # a dtype NumPy lacks (bfloat16): the usual way
                return NotImplemented
        return NotImplemented


class _Packed:
    """A collate function whose batch leaves the worker as one ``bytes`` buffer.

    A DataLoader worker hands every tensor of a batch over through shared memory of its own;
    a PyG batch has about thirty (its fields and their slice and increment tables), and
    receiving them costs the training process more than collating the batch itself. One
    buffer costs a fraction of a millisecond. The buffer is made in the worker by equimol's
    own code and read back only by the process that started the worker (as the DataLoader
    pickles every batch anyway); no file is ever unpickled.
    """

    def __init__(self, collate: Callable[[list], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list) -> bytes:
        buffer = io.BytesIO()
        _NumpyPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(self.collate(items))
        return buffer.getvalue()


def _as_list(items: list) -> list:
    return list(items)


class GraphLoader(torch.utils.data.DataLoader):
    """A DataLoader of graphs (PyG ``Batch`` objects, or lists of ``Data`` with ``as_list``)
    whose worker processes collate each batch and hand it over as one buffer, its tensors as
    NumPy arrays: the training process then spends well under a millisecond on a batch
    instead of the several that receiving a batch tensor by tensor (about thirty of them,
    each through shared memory of its own) takes. Without workers it is PyG's ``DataLoader``.

    Args:
        dataset: a data set of ``Data`` (an :class:`OnDiskAtomsDataset` above all).
        batch_size: structures per batch.
        shuffle: draw the structures in a new random order every epoch.
        as_list: give each batch as a list of ``Data`` instead of a ``Batch``.
        **kwargs: the other arguments of ``torch.utils.data.DataLoader`` (``num_workers``,
            ``sampler``, ``persistent_workers``...); a ``collate_fn`` is ignored.
    """

    def __init__(self, dataset: Dataset, batch_size: int = 1, shuffle: bool = False, *, as_list: bool = False,
                 **kwargs: Any) -> None:
        kwargs.pop("collate_fn", None)  # Lightning passes it back when it rebuilds the loader
        collate = _as_list if as_list else Collater(dataset)
        self.as_list = as_list
        self._packed = kwargs.get("num_workers", 0) > 0
        super().__init__(dataset, batch_size, shuffle, collate_fn=_Packed(collate) if self._packed else collate,
                         **kwargs)

    def __iter__(self):
        batches = super().__iter__()
        return map(pickle.loads, batches) if self._packed else batches
