"""A data set of radius graphs built from labelled structures.

:class:`AtomsDataset` turns frames (a list of ``ase.Atoms``, an extended-XYZ file or an ASE
database) into PyG ``Data`` graphs once, optionally caches them on disk, and serves them to
``torch_geometric.loader.DataLoader``.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import warnings
from pathlib import Path
from typing import Callable, Literal, Sequence

import ase
import numpy as np
import torch
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.formats import string2index
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.data.collate import collate
from torch_geometric.data.separate import separate

from equimol import _keys as K
from equimol.data.graph import DEFAULT_MIN_DISTANCE, atoms_to_graph
from equimol.data.io import (
    MissingKeyError,
    _frame_in_file,
    frame_info_values,
    frame_labels,
    parse_source,
    read_frames,
)

__all__ = ["AtomsDataset", "check_graph_options"]

# Bump when the graphs or the cache layout change, so old cache files are not reused.
_CACHE_FORMAT = 1
_RESERVED = {K.POS, K.ATOMIC_NUMBERS, K.CELL, K.PBC, K.EDGE_INDEX, K.EDGE_SHIFT, K.BATCH, "ptr"}



def check_graph_options(cutoff: float, on_isolated: str, min_distance: float, dtype: torch.dtype) -> None:
    """ValueError naming the option unless the graph options of a data set are sound: a
    positive finite ``cutoff`` (Å), ``on_isolated`` ``error`` or ``ignore``, a finite
    ``min_distance`` >= 0 (Å) and a floating ``dtype``."""
    if isinstance(cutoff, bool) or not (isinstance(cutoff, numbers.Real) and 0 < cutoff < np.inf):
        raise ValueError(f"cutoff must be a positive number of Å, got {cutoff!r}")
    if on_isolated not in ("error", "ignore"):
        raise ValueError(f"on_isolated must be 'error' or 'ignore', got {on_isolated!r}")
    if isinstance(min_distance, bool) or not (
        isinstance(min_distance, numbers.Real) and 0 <= min_distance < np.inf
    ):
        raise ValueError(f"min_distance must be a number of Å >= 0 (0: no check), got {min_distance!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating dtype, got {dtype}")


class AtomsDataset(Dataset):
    """Labelled structures as radius graphs (a ``torch.utils.data.Dataset`` of PyG ``Data``).

    Each item has the fields of ``equimol._keys``: ``pos [N,3]`` Å, ``z [N]``,
    ``cell [1,3,3]`` Å, ``pbc [1,3]``, ``edge_index [2,E]``, ``edge_shift [E,3]``, and the
    labels found: ``energy [1]`` eV, ``forces [N,3]`` eV/Å, ``stress [1,3,3]`` eV/Å³, plus
    one ``[1]`` tensor per entry of ``info_keys``.

    Labels are read by key from ``atoms.info``, then ``atoms.arrays``, then the results of
    an attached calculator (see :mod:`equimol.data.io`). A label that is not required is
    kept when every frame has it; a label present on some frames only is an error, since
    the frames could not be batched together.

    Args:
        source: a list of ``ase.Atoms``, or the path of a structure file (anything
            ``ase.io.read`` reads, extended XYZ above all) or an ASE database (``.db``),
            optionally with ASE's frame selection: ``"train.xyz@-100:"``.
        cutoff: radius of the graph, Å.
        energy_key: key of the total energy (eV), or None to skip energies.
        forces_key: key of the forces (eV/Å), or None.
        stress_key: key of the stress (eV/Å³, ASE sign, Voigt or 3x3), or None.
        require: labels (``"energy"``, ``"forces"``, ``"stress"``) every frame must have.
        info_keys: numeric ``atoms.info`` entries to keep, such as ``("gamma", "T")``.
        index: frames to take from a file, as in ``ase.io.read`` (``":"``, ``"-100:"``).
        dtype: floating dtype of positions, cells, shifts and labels.
        cache_dir: if given, the graphs are saved there and loaded on the next construction
            with the same file content (or frames), cutoff, keys, index and dtype.
        transform: a callable ``Data -> Data`` applied to a copy of the graph on every
            ``__getitem__`` (for augmentation); the stored graphs are never modified.
        on_isolated: ``"error"`` or ``"ignore"`` atoms with no neighbour within the cutoff
            (see :func:`equimol.data.atoms_to_graph`).
        min_distance: the smallest distance, Å, two atoms of a frame may have (periodic
            images included); a closer pair is an error naming the file, the frame, both
            atoms and their distance. 0 turns the check off. Default 0.1 Å.

    Attributes:
        cutoff: radius of the graphs, Å.
        min_distance: the smallest interatomic distance the frames were checked for, Å.
        cache_file: the file the graphs were loaded from or saved to (None without
            ``cache_dir``).

    Raises:
        FileNotFoundError, ValueError: the file is missing, empty or malformed, or a frame
            is not a valid structure (atoms closer than ``min_distance``, a degenerate cell,
            non-finite positions or labels); the message names the file and the frame.
        MissingKeyError: (a ``KeyError``) a required label or an info key is missing on a
            frame; the message names the file, the frame and the keys that frame does have.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[ase.Atoms] | ase.Atoms,
        cutoff: float,
        *,
        energy_key: str | None = "energy",
        forces_key: str | None = "forces",
        stress_key: str | None = "stress",
        require: Sequence[str] = (K.ENERGY,),
        info_keys: Sequence[str] = (),
        index: str | int | slice = ":",
        dtype: torch.dtype = torch.float32,
        cache_dir: str | os.PathLike | None = None,
        transform: Callable[[Data], Data] | None = None,
        on_isolated: Literal["error", "ignore"] = "error",
        min_distance: float = DEFAULT_MIN_DISTANCE,
    ) -> None:
        super().__init__()
        check_graph_options(cutoff, on_isolated, min_distance, dtype)
        self._keys = {K.ENERGY: energy_key, K.FORCES: forces_key, K.STRESS: stress_key}
        require = (require,) if isinstance(require, str) else tuple(require)
        for name in require:
            if name not in self._keys:
                raise ValueError(f"require: unknown label {name!r}; expected some of {K.LABEL_KEYS}")
            if self._keys[name] is None:
                raise ValueError(f"label {name!r} is required but {name}_key is None")
        info_keys = (info_keys,) if isinstance(info_keys, str) else tuple(info_keys)
        clash = sorted(set(info_keys) & (_RESERVED | set(K.LABEL_KEYS)))
        if clash:
            raise ValueError(f"info_keys {clash} clash with graph fields; rename them in the data")

        self.cutoff = float(cutoff)
        self.dtype = dtype
        self.transform = transform
        self._require = require
        self._info_keys = info_keys
        self._on_isolated = on_isolated
        self.min_distance = float(min_distance)
        self._index = index
        self._path: Path | None = None
        self._frames: list[ase.Atoms] | None = None
        self.cache_file: Path | None = None

        if isinstance(source, ase.Atoms):
            source = [source]
        if isinstance(source, (str, os.PathLike)):
            self._path, suffix = parse_source(source)
            if suffix is not None:
                if index != ":":
                    raise ValueError(f"{source}: give the frames either after '@' or as index, not both")
                self._index = suffix
            self._name = str(self._path)
            content = _file_digest(self._path) if cache_dir is not None else ""
        else:
            self._frames = list(source)
            self._name = "frames"
            if not self._frames:
                raise ValueError("AtomsDataset got an empty list of structures")
            bad = [k for k, a in enumerate(self._frames) if not isinstance(a, ase.Atoms)]
            if bad:
                raise TypeError(f"source items {bad[:5]} are not ase.Atoms")
            content = _frames_digest(self._frames, self._keys, info_keys) if cache_dir is not None else ""

        if cache_dir is not None:
            self.cache_file = Path(cache_dir) / f"{self._cache_stem()}-{self._cache_key(content)}.pt"
        graphs = _load_cache(self.cache_file) if self.cache_file is not None else None
        if graphs is None:
            graphs = self._build(self._read())
            if self.cache_file is not None:
                _save_cache(self.cache_file, graphs)
        self._graphs = graphs
        self._species = sorted({int(z) for g in graphs for z in g[K.ATOMIC_NUMBERS].unique().tolist()})

    # -- construction ------------------------------------------------------------------

    def _read(self) -> list[ase.Atoms]:
        if self._frames is None:
            self._frames = read_frames(self._path, self._index)
        return self._frames

    def _build(self, frames: list[ase.Atoms]) -> list[Data]:
        graphs = []
        for number, atoms in enumerate(frames):
            where = self._name + self._frame_name(number)
            labels = frame_labels(atoms, self._keys, require=self._require, source=where)
            data = atoms_to_graph(
                atoms,
                self.cutoff,
                labels,
                dtype=self.dtype,
                on_isolated=self._on_isolated,
                min_distance=self.min_distance,
                source=where,
            )
            for key, value in frame_info_values(atoms, self._info_keys, source=where).items():
                data[key] = torch.tensor([value], dtype=self.dtype)
            graphs.append(data)
        for name in K.LABEL_KEYS:
            missing = [k for k, g in enumerate(graphs) if name not in g]
            if 0 < len(missing) < len(graphs):
                raise MissingKeyError(
                    f"{self._name}: label {name!r} (key {self._keys[name]!r}) is on "
                    f"{len(graphs) - len(missing)} of {len(graphs)} frames, missing on frames "
                    f"{missing[:10]}{'...' if len(missing) > 10 else ''}; fix the data or set "
                    f"{name}_key=None to leave it out"
                )
        return graphs

    def _frame_name(self, number: int) -> str:
        """``", frame 12"``: frame ``number`` of the list, or of the file where the frame
        selection tells which (``"-100:"`` does not: then the number within the selection)."""
        if self._path is None:
            return f", frame {number}"
        selection = string2index(self._index) if isinstance(self._index, str) else self._index
        return _frame_in_file(selection, number)

    def _cache_stem(self) -> str:
        return self._path.stem if self._path is not None else "frames"

    def _cache_key(self, content: str) -> str:
        settings = {
            "format": _CACHE_FORMAT,
            "content": content,
            "index": str(self._index),
            "cutoff": self.cutoff,
            "keys": self._keys,
            "require": list(self._require),
            "info_keys": list(self._info_keys),
            "dtype": str(self.dtype),
            "on_isolated": self._on_isolated,
            "min_distance": self.min_distance,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]

    # -- access ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._graphs)

    def __getitem__(self, index: int) -> Data:
        """Graph ``index``: the stored graph itself (do not modify it in place), or
        ``transform`` applied to a copy of it."""
        if isinstance(index, (np.integer, torch.Tensor)):
            index = int(index)
        data = self._graphs[index]
        if self.transform is None:
            return data
        return self.transform(data.clone())

    @property
    def species(self) -> list[int]:
        """Sorted atomic numbers present in the data set."""
        return list(self._species)

    def atoms(self, index: int) -> ase.Atoms:
        """A copy of frame ``index`` as read (full precision, with its ``info`` and labels).

        When the graphs came from the cache, the file is read on the first call.
        """
        frames = self._read()
        if len(frames) != len(self._graphs):  # the file changed since the cache was written
            raise RuntimeError(f"{self._name}: has {len(frames)} frames now, the graphs {len(self._graphs)}")
        atoms = frames[index]
        copy = atoms.copy()
        if atoms.calc is not None and hasattr(atoms.calc, "results"):
            copy.calc = SinglePointCalculator(copy, **atoms.calc.results)
        return copy

    def __repr__(self) -> str:
        labels = [name for name in K.LABEL_KEYS if self._graphs and name in self._graphs[0]]
        return (
            f"{type(self).__name__}({self._name!r}, {len(self)} structures, cutoff={self.cutoff} Å, "
            f"labels={labels}, species={self.species})"
        )


# -- cache -------------------------------------------------------------------------------


def _file_digest(path: Path) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _frames_digest(frames: Sequence[ase.Atoms], keys: dict, info_keys: Sequence[str]) -> str:
    """A hash of everything the graphs depend on: structures, labels and info values."""
    digest = hashlib.sha256()
    for atoms in frames:
        for array in (atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc):
            digest.update(np.ascontiguousarray(array).tobytes())
        for name, value in frame_labels(atoms, keys).items():
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(value, dtype=np.float64).tobytes())
        for key in info_keys:
            digest.update(repr(atoms.info.get(key)).encode())
    return digest.hexdigest()


def _save_cache(path: Path, graphs: list[Data]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    batch, slices, _ = collate(Data, data_list=graphs, increment=False, add_batch=False)
    payload = {
        "format": _CACHE_FORMAT,
        "num_graphs": len(graphs),
        "data": batch.to_dict(),
        "slices": dict(slices),
    }
    temporary = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(payload, temporary)
    os.replace(temporary, path)


def _load_cache(path: Path) -> list[Data] | None:
    if not path.exists():
        return None
    try:
        payload = torch.load(path, weights_only=True)
        if payload.get("format") != _CACHE_FORMAT:
            return None
        batch = Data.from_dict(payload["data"])
        slices = payload["slices"]
        return [
            separate(Data, batch=batch, idx=k, slice_dict=slices, decrement=False)
            for k in range(payload["num_graphs"])
        ]
    except Exception as error:  # a truncated or foreign file: rebuild rather than fail
        warnings.warn(f"{path}: unreadable graph cache ({error}); rebuilding it", stacklevel=3)
        return None
