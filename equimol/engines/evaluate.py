"""``equimol evaluate`` and ``equimol predict``: a trained model, or a committee of models, on
any structure file.

``equimol evaluate --ckpt C [--ckpt C2 ...] --data D [--out DIR]`` compares the model's
predictions with the labels of ``D`` and writes to ``DIR``:

- ``metrics.json``: MAE, RMSE (and R² of energies) as in :mod:`equimol.train.metrics`
  (``metrics``), the same per quantity with the largest error and the number of values
  (``per_quantity``) and, for a committee, ``uncertainty``: the Spearman rank correlation
  between the committee's spread and the actual error per structure, for the energy per atom
  and the forces;
- ``predictions.extxyz``: one frame per frame of ``D``, with the model's ``energy``,
  ``forces`` and ``stress`` as calculator results (``ase.io.read(...).get_forces()`` gives
  the prediction), the labels as ``REF_energy`` (info), ``REF_forces`` (arrays) and
  ``REF_stress`` (info, Voigt), the errors of the frame in its info (``energy_error`` eV,
  ``energy_per_atom_error`` eV/atom, ``forces_mae``, ``forces_rmse``, ``forces_max_error``
  eV/Å, ``stress_rmse`` eV/Å³) and, for a committee, ``energy_std`` (info), ``forces_std``
  (arrays) and ``stress_std`` (info);
- ``parity_energy_per_atom.png``, ``parity_forces.png``, ``parity_stress.png`` (those of the
  quantities labelled) and ``parity.png`` (all of them side by side), ``errors.png``
  (histograms of the errors) and, for a committee, ``uncertainty.png`` (spread against error
  per structure).

``equimol predict --ckpt C [--ckpt C2 ...] --data D [--out predictions.extxyz]`` needs no
labels and writes the predictions alone, the same file without the references and errors.

``D`` is a structure file (extended XYZ, ASE database, anything ASE reads; ``file.xyz@-100:``
selects frames), ``sample:NAME`` for a data file shipped with equimol, or a YAML config with a
``data`` section (such as the one the model was trained with), whose test split (or
validation split, without a test split) is used with the config's label keys. A config may
leave out the cutoff: the model's is taken.

Both commands stream: frames are read ``batch_size`` at a time (:func:`equimol.data.io.iter_frames`),
turned into graphs, computed and written before the next are read, so that memory does not
grow with the file. The metrics are exact over every frame; the figures and the rank
correlations use every value up to :data:`SAMPLE_SIZE` and a uniform random sample of that
size beyond.

A structure whose prediction (or label) is NaN or infinite is left out of the metrics and the
figures and named in ``metrics.json`` under ``non_finite``; the command then prints the metrics
of the others, one error line naming the frames, and exits with code 1. ``metrics.json`` is
always valid JSON: a metric that is not a finite number (R² of targets without spread) is
``null``.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, Optional

import ase
import ase.io
import numpy as np
import torch
import vesin
import yaml
from ase.calculators.calculator import all_properties
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress
from jsonargparse import ArgumentParser
from jsonargparse.typing import PositiveInt
from torch import nn
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from equimol import _cli_errors as errors
from equimol import _keys as K
from equimol.data.graph import atoms_to_graph
from equimol.data.io import frame_labels, iter_frames, parse_source
from equimol.engines.backends import InferenceBackend, load_backend
from equimol.engines.committee import ENERGY_STD, FORCES_STD, STRESS_STD, Committee

__all__ = [
    "evaluate",
    "predict",
    "predict_frames",
    "open_data",
    "DataSource",
    "FramePrediction",
    "evaluate_main",
    "predict_main",
    "build_evaluate_parser",
    "build_predict_parser",
    "SAMPLE_SIZE",
]

logger = logging.getLogger(__name__)

#: The most values (frames, or force and stress components) kept for figures and rank
#: correlations; beyond it a uniform random sample of this size is kept.
SAMPLE_SIZE = 100_000

#: Quantities compared, in the order of :class:`equimol.train.metrics.PotentialMetrics`, and their units.
QUANTITIES = {"energy_per_atom": "eV/atom", "energy": "eV", "forces": "eV/Å", "stress": "eV/Å³"}

Model = str | os.PathLike | nn.Module | InferenceBackend
LabelKeys = dict[str, Optional[str]]
DEFAULT_KEYS: LabelKeys = {K.ENERGY: "energy", K.FORCES: "forces", K.STRESS: "stress"}
NO_KEYS: LabelKeys = {K.ENERGY: None, K.FORCES: None, K.STRESS: None}


# ------------------------------------------------------------------------------------ data


@dataclass
class DataSource:
    """Frames to evaluate on, read when iterated.

    Attributes:
        description: where they come from (``"water.xyz"``, ``"run.yaml (test split)"``).
        frames: a function returning an iterator of ``(frame number in its file, ase.Atoms)``.
        keys: label name -> the key the frames store it under (None: not read).
        total: the number of frames, where it is known without reading them.
        name: a short description, for the titles of figures (default: ``description``).
    """

    description: str
    frames: Callable[[], Iterator[tuple[int, ase.Atoms]]]
    keys: LabelKeys = field(default_factory=lambda: dict(DEFAULT_KEYS))
    total: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.description


def open_data(data: str | os.PathLike, cutoff: float, keys: LabelKeys | None = None) -> DataSource:
    """The frames of ``data``: a structure file (``file.xyz@-100:`` selects frames), ``sample:NAME``,
    or a YAML config with a ``data`` section (its test split, or its validation split, read with
    the config's label keys; the config's cutoff, when given, must equal ``cutoff``, the model's).

    Args:
        keys: label name (``energy``, ``forces``, ``stress``) -> key in the frames, or None to
            leave it out; default ``energy``, ``forces``, ``stress``. Not used for a config.

    Raises:
        FileNotFoundError, ValueError: no such file, an unknown sample, a bad frame selection,
            or a config without a usable data section.
    """
    return _open(_locate(data), cutoff, keys)


def _locate(data: str | os.PathLike) -> tuple[Path, str | None, bool]:
    """``(path, frame selection, is a config)`` of ``data``, checked to exist (before any model
    is loaded, so that a wrong path is reported at once)."""
    text = os.fspath(data)
    if text.endswith((".yaml", ".yml")):
        if not Path(text).is_file():
            raise FileNotFoundError(f"{text}: no such config file")
        return Path(text), None, True
    if text.startswith("sample:"):
        from equimol.data.samples import sample_path

        path, index = sample_path(text.split(":", 1)[1]), None
    else:
        path, index = parse_source(text)
    iter_frames(path, index or ":")  # the path and the selection are checked now, the frames when read
    return path, index, False


def _open(located: tuple[Path, str | None, bool], cutoff: float, keys: LabelKeys | None) -> DataSource:
    path, index, is_config = located
    if is_config:
        return _config_source(path, cutoff)
    selection = f"@{index}" if index else ""
    return DataSource(
        description=f"{path}{selection}",
        frames=lambda: _numbered(iter_frames(path, index or ":"), index),
        keys=dict(DEFAULT_KEYS if keys is None else keys),
        name=f"{path.name}{selection}",
    )


def _numbered(frames: Iterator[ase.Atoms], index: str | None) -> Iterator[tuple[int, ase.Atoms]]:
    """``(frame number in the file, frame)``: the position in the file for a selection counted
    forwards from a known start, else the position in the selection."""
    from ase.io.formats import string2index

    selection = string2index(index) if index else slice(None)
    start, step = 0, 1
    if isinstance(selection, slice) and (selection.start or 0) >= 0 and (selection.step or 1) > 0:
        start, step = selection.start or 0, selection.step or 1
    elif isinstance(selection, int) and selection >= 0:
        start = selection
    for position, atoms in enumerate(frames):
        yield start + position * step, atoms


def _config_source(path: Path, cutoff: float) -> DataSource:
    """The test (or validation) split of the data section of the config ``path``."""
    from equimol.train.datamodule import AtomsDataModule
    from equimol.train.module import check_cutoffs

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    config = yaml.safe_load(path.read_text()) or {}
    section = config.get("data", config) if isinstance(config, dict) else None
    init_args = section.get("init_args", section) if isinstance(section, dict) else None
    if not isinstance(init_args, dict) or not ({"generator", "path", "sample"} & set(init_args)):
        raise ValueError(f"{path}: expected a 'data' section with init_args (generator, path or sample)")
    if init_args.get("cutoff") is not None:
        check_cutoffs(cutoff, init_args["cutoff"])
    init_args = {k: v for k, v in init_args.items() if k != "train_transforms"}
    init_args["cutoff"] = init_args.get("cutoff") or cutoff
    # the same seed and data cache as the training run of this config
    seed = config.get("seed_everything", 0)
    if isinstance(seed, int) and not isinstance(seed, bool) and init_args.get("seed") is None:
        init_args["seed"] = seed
    if init_args.get("cache_dir") is None:
        from equimol.train.cli import DEFAULT_ROOT_DIR

        root = (config.get("trainer") or {}).get("default_root_dir") or DEFAULT_ROOT_DIR
        init_args["cache_dir"] = str(Path(root) / "data")
    datamodule = AtomsDataModule(**init_args)
    datamodule.setup("test")
    name = "test" if datamodule.test_set is not None else "val"
    source, wanted = datamodule.sources[name], sorted(datamodule.split_indices[name])
    file, index = parse_source(source)

    def frames() -> Iterator[tuple[int, ase.Atoms]]:
        chosen = set(wanted)
        for position, atoms in enumerate(iter_frames(file, index or ":")):
            if position in chosen:
                yield position, atoms
            if position >= wanted[-1]:
                break

    keys = {K.ENERGY: datamodule.keys["energy_key"], K.FORCES: datamodule.keys["forces_key"],
            K.STRESS: datamodule.keys["stress_key"]}
    return DataSource(f"{path} ({name} split of {source})", frames, keys, total=len(wanted),
                      name=f"{path.name} ({name} split)")


# ----------------------------------------------------------------------------- predicting


@dataclass
class FramePrediction:
    """One frame with its predictions and labels.

    Attributes:
        position: its position among the frames read (from 0).
        frame: its number in its file.
        atoms: the frame as read.
        prediction: ``energy`` (eV), ``forces [N, 3]`` (eV/Å), for a cell periodic along all
            three axes ``stress [3, 3]`` (eV/Å³) and, for a committee, ``energy_std``,
            ``forces_std [N, 3]`` (and ``stress_std [3, 3]``); float64 NumPy.
        labels: ``energy``, ``forces [N, 3]``, ``stress [3, 3]``: those the frame has.
    """

    position: int
    frame: int
    atoms: ase.Atoms
    prediction: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]

    @property
    def periodic(self) -> bool:
        return bool(np.all(self.atoms.pbc))

    def non_finite(self) -> tuple[list[str], list[str]]:
        """The predicted and the label quantities (``energy``, ``forces``, ``stress``) that are
        not finite."""
        return ([key for key in (K.ENERGY, K.FORCES, K.STRESS)
                 if key in self.prediction and not np.isfinite(self.prediction[key]).all()],
                [key for key in (K.ENERGY, K.FORCES, K.STRESS)
                 if key in self.labels and not np.isfinite(self.labels[key]).all()])


def predict_frames(
    backend: InferenceBackend,
    source: DataSource,
    *,
    batch_size: int = 16,
    out: str | os.PathLike | None = None,
    progress: bool = True,
    read: Callable[[], Iterator[tuple[int, ase.Atoms]]] | None = None,
) -> Iterator[FramePrediction]:
    """Predictions of ``backend`` on the frames of ``source``, streamed: ``batch_size`` frames
    are read, turned into graphs, batched and computed, written to ``out`` (extended XYZ, see
    the module's docstring) and handed out before the next are read.

    The one loop of ``equimol evaluate`` and ``equimol predict``. Labels are read with
    ``source.keys`` (an energy key that is not None must be on every frame).

    Raises:
        FileNotFoundError, ValueError: a frame cannot be read or is not a valid structure
            (named by file and frame), a required label is missing (naming the keys the frame
            has), or an element is unknown to the model.
    """
    frames = (read or source.frames)()
    bar = tqdm(desc="frames", unit="frame", total=source.total, disable=None if progress else True)
    handle = _open_output(out)
    neighbours = vesin.NeighborList(cutoff=backend.cutoff, full_list=True) if backend.cutoff > 0 else None
    position = 0
    try:
        while chunk := list(itertools.islice(frames, batch_size)):
            batch = _predict_batch(backend, chunk, source, position, neighbours)
            if handle is not None:
                for item in batch:
                    write_prediction(handle, item, source.keys)
                handle.flush()
            position += len(batch)
            bar.update(len(batch))
            yield from batch
    finally:
        bar.close()
        if handle is not None:
            handle.close()


def _open_output(out: str | os.PathLike | None) -> IO[str] | None:
    if out is None:
        return None
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "w")


def _predict_batch(
    backend: InferenceBackend, chunk: list[tuple[int, ase.Atoms]], source: DataSource, start: int,
    neighbours: vesin.NeighborList | None,
) -> list[FramePrediction]:
    """Graphs, one batched model call and the per-frame predictions of ``chunk``."""
    graphs, labels = [], []
    for frame, atoms in chunk:
        where = f"{source.description}, frame {frame}"
        labels.append(_labels(atoms, source.keys, where))
        graphs.append(atoms_to_graph(atoms, backend.cutoff, dtype=backend.dtype, on_isolated="ignore",
                                     source=where, neighbour_list=neighbours))
    batch = Batch.from_data_list(graphs)
    if backend.device.type != "cpu":
        batch = batch.to(backend.device)
    periodic = [bool(np.all(atoms.pbc)) for _, atoms in chunk]
    out = backend.compute(batch, compute_stress=any(periodic))
    out = {key: value.detach().double().cpu().numpy() for key, value in out.items()}
    ptr = batch.ptr.cpu().numpy()
    result = []
    for k, (frame, atoms) in enumerate(chunk):
        atoms_of = slice(int(ptr[k]), int(ptr[k + 1]))
        prediction = {K.ENERGY: out[K.ENERGY][k], K.FORCES: out[K.FORCES][atoms_of]}
        if ENERGY_STD in out:
            prediction[ENERGY_STD] = out[ENERGY_STD][k]
            prediction[FORCES_STD] = out[FORCES_STD][atoms_of]
        if periodic[k] and K.STRESS in out:
            prediction[K.STRESS] = out[K.STRESS][k].reshape(3, 3)
            if STRESS_STD in out:
                prediction[STRESS_STD] = out[STRESS_STD][k].reshape(3, 3)
        result.append(FramePrediction(start + k, frame, atoms, prediction, labels[k]))
    return result


def _labels(atoms: ase.Atoms, keys: LabelKeys, where: str) -> dict[str, np.ndarray]:
    """The frame's labels (stress as ``[3, 3]``); the energy is required when its key is set."""
    require = (K.ENERGY,) if keys.get(K.ENERGY) is not None else ()
    labels = frame_labels(atoms, keys, require=require, source=where)
    if K.FORCES in labels and labels[K.FORCES].shape != (len(atoms), 3):
        raise ValueError(f"{where}: forces (key {keys[K.FORCES]!r}) have shape {labels[K.FORCES].shape}, "
                         f"expected ({len(atoms)}, 3)")
    if K.STRESS in labels:
        stress = labels[K.STRESS]
        if stress.shape == (6,):
            stress = voigt_6_to_full_3x3_stress(stress)
        if stress.shape != (3, 3):
            raise ValueError(f"{where}: stress (key {keys[K.STRESS]!r}) has shape {labels[K.STRESS].shape}, "
                             "expected Voigt (6,) or (3, 3)")
        labels[K.STRESS] = stress
    if K.ENERGY in labels:
        labels[K.ENERGY] = np.asarray(labels[K.ENERGY], dtype=np.float64).reshape(())
    return labels


# -------------------------------------------------------------------------------- writing

#: Names the written frames carry; an input's info entry of the same name is not copied.
_WRITTEN = {
    "REF_energy", "REF_forces", "REF_stress", "energy_error", "energy_per_atom_error", "forces_mae",
    "forces_rmse", "forces_max_error", "stress_rmse", ENERGY_STD, FORCES_STD, STRESS_STD, "source_frame",
}


def write_prediction(handle: IO[str], item: FramePrediction, keys: LabelKeys) -> None:
    """Append ``item`` to ``handle`` as one extended-XYZ frame: the prediction as calculator
    results, the labels under ``REF_``, the frame's errors and, for a committee, the spread.
    Info entries of the input that are plain numbers or text are copied, except its labels."""
    atoms = item.atoms
    out = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    skip = set(all_properties) | _WRITTEN | {key for key in keys.values() if key is not None}
    for key, value in atoms.info.items():
        if key not in skip and isinstance(value, (str, int, float, bool, np.integer, np.floating, np.bool_)):
            out.info[key] = value
    out.info["source_frame"] = item.frame
    prediction, labels = item.prediction, item.labels
    results = {"energy": float(prediction[K.ENERGY]), "free_energy": float(prediction[K.ENERGY]),
               "forces": prediction[K.FORCES]}
    if K.STRESS in prediction:
        results["stress"] = full_3x3_to_voigt_6_stress(prediction[K.STRESS])
    if K.ENERGY in labels:
        out.info["REF_energy"] = float(labels[K.ENERGY])
    if K.FORCES in labels:
        out.arrays["REF_forces"] = labels[K.FORCES]
    if K.STRESS in labels:
        out.info["REF_stress"] = full_3x3_to_voigt_6_stress(labels[K.STRESS])
    out.info.update(frame_errors(item))
    if ENERGY_STD in prediction:
        out.info[ENERGY_STD] = float(prediction[ENERGY_STD])
        out.arrays[FORCES_STD] = prediction[FORCES_STD]
        if STRESS_STD in prediction:
            out.info[STRESS_STD] = full_3x3_to_voigt_6_stress(prediction[STRESS_STD])
    out.calc = SinglePointCalculator(out, **results)
    ase.io.write(handle, out, format="extxyz")


def frame_errors(item: FramePrediction) -> dict[str, float]:
    """The errors of one frame (prediction minus label): ``energy_error`` eV,
    ``energy_per_atom_error`` eV/atom, ``forces_mae``, ``forces_rmse``, ``forces_max_error``
    (the largest error vector) eV/Å, ``stress_rmse`` eV/Å³; those the labels allow."""
    prediction, labels, n = item.prediction, item.labels, len(item.atoms)
    found: dict[str, float] = {}
    if K.ENERGY in labels:
        error = float(prediction[K.ENERGY] - labels[K.ENERGY])
        found["energy_error"] = error
        found["energy_per_atom_error"] = error / n
    if K.FORCES in labels:
        error = prediction[K.FORCES] - labels[K.FORCES]
        found["forces_mae"] = float(np.abs(error).mean())
        found["forces_rmse"] = float(np.sqrt((error**2).mean()))
        found["forces_max_error"] = float(np.linalg.norm(error, axis=1).max())
    if K.STRESS in labels and K.STRESS in prediction:
        found["stress_rmse"] = float(np.sqrt(((prediction[K.STRESS] - labels[K.STRESS]) ** 2).mean()))
    return found


# -------------------------------------------------------------------------------- metrics


class _Errors:
    """Running sums of one quantity's errors: exact MAE, RMSE, largest error and R², in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.abs = self.squared = self.target = self.target_squared = 0.0
        self.largest = 0.0

    def add(self, predicted: np.ndarray, target: np.ndarray) -> None:
        error = (np.asarray(predicted, np.float64) - np.asarray(target, np.float64)).reshape(-1)
        target = np.asarray(target, np.float64).reshape(-1)
        self.count += error.size
        self.abs += float(np.abs(error).sum())
        self.squared += float((error**2).sum())
        self.target += float(target.sum())
        self.target_squared += float((target**2).sum())
        self.largest = max(self.largest, float(np.abs(error).max(initial=0.0)))

    def values(self, with_r2: bool) -> dict[str, float | None]:
        found = {"mae": self.abs / self.count, "rmse": math.sqrt(self.squared / self.count)}
        if with_r2:
            spread = self.target_squared - self.target**2 / self.count
            found["r2"] = 1.0 - self.squared / spread if spread > 0 else None
        return found


class _Sample:
    """Rows ``[k, columns]`` of everything added, up to ``size`` rows, and a uniform random sample
    of ``size`` rows beyond (reservoir sampling, seeded)."""

    def __init__(self, columns: int, size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        self.rows = np.empty((size, columns))
        self.seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float64).reshape(-1, self.rows.shape[1])
        size = len(self.rows)
        free = max(min(size - self.seen, len(rows)), 0)
        self.rows[self.seen : self.seen + free] = rows[:free]
        rest = rows[free:]
        if len(rest):  # row t (counted from 0) replaces a random slot with probability size / (t + 1)
            slots = self._rng.integers(0, self.seen + free + np.arange(len(rest)) + 1)
            keep = slots < size
            self.rows[slots[keep]] = rest[keep]
        self.seen += len(rows)

    def values(self) -> np.ndarray:
        return self.rows[: min(self.seen, len(self.rows))]


class _Accumulator:
    """Metrics, samples for the figures and the committee's spread against error, over frames."""

    def __init__(self) -> None:
        self.errors = {name: _Errors() for name in QUANTITIES}
        self.pairs = {name: _Sample(2, seed=k) for k, name in enumerate(("energy_per_atom", "forces", "stress"))}
        self.spread = {name: _Sample(2, seed=10 + k) for k, name in enumerate(("energy_per_atom", "forces"))}

    def add(self, item: FramePrediction) -> None:
        prediction, labels, n = item.prediction, item.labels, len(item.atoms)
        if K.ENERGY in labels:
            energy, target = prediction[K.ENERGY], labels[K.ENERGY]
            self.errors["energy"].add(energy, target)
            self.errors["energy_per_atom"].add(energy / n, target / n)
            self.pairs["energy_per_atom"].add([energy / n, target / n])
            if ENERGY_STD in prediction:
                self.spread["energy_per_atom"].add([prediction[ENERGY_STD] / n, abs(energy - target) / n])
        if K.FORCES in labels:
            self.errors["forces"].add(prediction[K.FORCES], labels[K.FORCES])
            self.pairs["forces"].add(np.stack([prediction[K.FORCES].reshape(-1), labels[K.FORCES].reshape(-1)], 1))
            if FORCES_STD in prediction:
                rmse = np.sqrt(((prediction[K.FORCES] - labels[K.FORCES]) ** 2).mean())
                self.spread["forces"].add([np.sqrt((prediction[FORCES_STD] ** 2).mean()), rmse])
        if K.STRESS in labels and K.STRESS in prediction:  # fully periodic cells only
            self.errors["stress"].add(prediction[K.STRESS], labels[K.STRESS])
            self.pairs["stress"].add(np.stack([prediction[K.STRESS].reshape(-1), labels[K.STRESS].reshape(-1)], 1))

    def metrics(self) -> tuple[dict[str, float | None], dict[str, dict[str, Any]]]:
        """``{energy_per_atom_mae: ...}`` as :class:`~equimol.train.metrics.PotentialMetrics`
        names them, and per quantity ``{mae, rmse, r2, max_abs_error, count, unit}``."""
        flat: dict[str, float | None] = {}
        per_quantity: dict[str, dict[str, Any]] = {}
        for name, errors_ in self.errors.items():
            if errors_.count == 0:
                continue
            values = errors_.values(with_r2=name.startswith("energy"))
            flat.update({f"{name}_{kind}": _finite(value) for kind, value in values.items()})
            per_quantity[name] = {**{kind: _finite(value) for kind, value in values.items()},
                                  "max_abs_error": _finite(errors_.largest), "count": errors_.count,
                                  "unit": QUANTITIES[name]}
        return flat, per_quantity

    def uncertainty(self, backend: InferenceBackend) -> dict[str, Any] | None:
        """The Spearman rank correlations between the committee's spread and the error per frame."""
        if not isinstance(backend, Committee):
            return None
        from scipy.stats import spearmanr

        found: dict[str, Any] = {
            "members": len(backend.members),
            "estimator": f"standard deviation over the members, ddof={backend.ddof}",
        }
        measures = {
            "energy_per_atom": "energy_std / atoms against |energy error| / atoms, per frame (eV/atom)",
            "forces": "RMS of forces_std over the frame's components against the frame's force RMSE (eV/Å)",
        }
        for name, sample in self.spread.items():
            values = sample.values()
            if len(values) == 0:
                continue
            spread = len(values) > 2 and np.ptp(values[:, 0]) > 0 and np.ptp(values[:, 1]) > 0
            rho = float(spearmanr(values[:, 0], values[:, 1]).statistic) if spread else float("nan")  # else undefined
            found[name] = {"spearman": _finite(rho), "num_frames": sample.seen, "mean_std": float(values[:, 0].mean()),
                           "mean_error": float(values[:, 1].mean()), "measure": measures[name]}
        return found


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


# ------------------------------------------------------------------------------ commands


def _backend(model: Model | Sequence[Model], device: str, dtype: torch.dtype | str | None) -> InferenceBackend:
    """The backend of a source or a committee of several (see :func:`equimol.engines.load_backend`)."""
    if isinstance(dtype, str):
        dtype = _DTYPES[dtype]
    return load_backend(list(model) if isinstance(model, (list, tuple)) else model, device=device, dtype=dtype)


def _describe(model: Model | Sequence[Model]) -> str | list[str]:
    if isinstance(model, (list, tuple)):
        return [str(_describe(m)) for m in model] if len(model) > 1 else _describe(model[0])
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__


def evaluate(
    model: Model | Sequence[Model],
    data: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    batch_size: int = 16,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Metrics of a model, or of a committee of models, on ``data``; with ``out``, writes
    ``metrics.json``, ``predictions.extxyz`` and the figures there (see the module's docstring).

    Args:
        model: a checkpoint (``.ckpt``), a package (``.pt2``), a model object or a backend; a
            list of several is a committee (:class:`~equimol.engines.Committee`).
        data: a structure file, ``sample:NAME`` or a YAML config (see :func:`open_data`).
        energy_key, forces_key, stress_key: where the frames store their labels; None leaves
            one out (not used for a config, whose own keys are).
        dtype: ``torch.float32``/``"float32"`` or ``float64``; default the model's own.
        plots: False writes no figures.

    Returns:
        ``{"metrics": {name: value}, "per_quantity": {...}, "uncertainty": {...} or None,
        "num_structures": int, "num_evaluated": int, "non_finite": [...], "data": str,
        "checkpoint": str or [str]}`` with metric names as in
        :class:`~equimol.train.metrics.PotentialMetrics` (``energy_per_atom_mae`` eV/atom,
        ``forces_rmse`` eV/Å, ...). The metrics are those of the ``num_evaluated`` structures
        whose predictions and labels are finite; each other structure is an entry of
        ``non_finite``: ``{"index": position in the data, "frame": frame in its file,
        "prediction": [quantities], "label": [quantities]}`` naming what is not finite. A metric
        that is not a finite number is None (``null`` in ``metrics.json``).
    """
    located = _locate(data)
    backend = _backend(model, device, dtype)
    source = _open(located, backend.cutoff, {K.ENERGY: energy_key, K.FORCES: forces_key, K.STRESS: stress_key})
    logger.info("evaluating %s on %s", _describe(model), source.description)
    out = None if out is None else Path(out)
    accumulator, non_finite, count = _Accumulator(), [], 0
    for item in predict_frames(backend, source, batch_size=batch_size, progress=progress,
                               out=None if out is None else out / "predictions.extxyz"):
        count += 1
        bad = item.non_finite()
        if bad[0] or bad[1]:  # one bad structure must not spoil the metrics of the others
            non_finite.append({"index": item.position, "frame": item.frame, "prediction": bad[0], "label": bad[1]})
        else:
            accumulator.add(item)
    metrics, per_quantity = accumulator.metrics()
    result = {
        "metrics": metrics,
        "per_quantity": per_quantity,
        "uncertainty": accumulator.uncertainty(backend),
        "num_structures": count,
        "num_evaluated": count - len(non_finite),
        "non_finite": non_finite,
        "data": source.description,
        "checkpoint": _describe(model),
    }
    if non_finite:
        warnings.warn(_non_finite_summary(result), RuntimeWarning, stacklevel=2)
    if out is not None:
        (out / "metrics.json").write_text(json.dumps(result, indent=2, allow_nan=False, ensure_ascii=False),
                                          encoding="utf-8")
        if plots:
            _figures(accumulator, result, out, source.name)
    return result


def _figures(accumulator: _Accumulator, result: dict[str, Any], out: Path, title: str) -> None:
    """``parity_<quantity>.png`` per quantity labelled, ``parity.png`` with all of them,
    ``errors.png`` and, for a committee, ``uncertainty.png``."""
    from equimol.train.plots import error_histogram_figure, parity_figure, save_figure, uncertainty_figure

    pairs = {name: sample.values() for name, sample in accumulator.pairs.items() if sample.seen}
    exact = {name: (result["per_quantity"][name]["mae"], result["per_quantity"][name]["rmse"]) for name in pairs}
    for name, values in pairs.items():
        save_figure(parity_figure({name: values}, title=title, errors=exact), out / f"parity_{name}.png")
    save_figure(parity_figure(pairs, title=title, errors=exact), out / "parity.png")  # all of them side by side
    save_figure(error_histogram_figure({name: v[:, 0] - v[:, 1] for name, v in pairs.items()}, title=title),
                out / "errors.png")
    if result["uncertainty"] is not None:
        spread = {name: sample.values() for name, sample in accumulator.spread.items() if sample.seen}
        rho = {name: (result["uncertainty"].get(name) or {}).get("spearman") for name in spread}
        save_figure(uncertainty_figure(spread, rho, title=title), out / "uncertainty.png")


def predict(
    model: Model | Sequence[Model],
    data: str | os.PathLike,
    out: str | os.PathLike = "predictions.extxyz",
    *,
    batch_size: int = 16,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the predictions of a model, or of a committee, on ``data`` to ``out`` (extended
    XYZ: energy, forces and stress as calculator results and, for a committee, ``energy_std``
    and ``forces_std``); no labels are read.

    Returns:
        ``{"out": str, "num_structures": int, "non_finite": [{"index", "frame", "prediction"}],
        "data": str, "checkpoint": str or [str]}``.
    """
    located = _locate(data)
    backend = _backend(model, device, dtype)
    source = _open(located, backend.cutoff, NO_KEYS)
    source.keys = dict(NO_KEYS)  # a config's test split too: predictions only
    logger.info("predicting with %s on %s", _describe(model), source.description)
    non_finite, count = [], 0
    for item in predict_frames(backend, source, batch_size=batch_size, out=out, progress=progress):
        count += 1
        bad = item.non_finite()[0]
        if bad:
            non_finite.append({"index": item.position, "frame": item.frame, "prediction": bad, "label": []})
    result = {"out": str(out), "num_structures": count, "non_finite": non_finite, "data": source.description,
              "checkpoint": _describe(model)}
    if non_finite:
        warnings.warn(_non_finite_summary(result), RuntimeWarning, stacklevel=2)
    return result


def _non_finite_summary(result: dict[str, Any]) -> str:
    """``2 of 40 structures gave non-finite values (frames 3, 7 of D): ...``, one line."""
    bad, total = result["non_finite"], result["num_structures"]
    frames = ", ".join(str(entry["frame"]) for entry in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10
                                                                        else "")
    what = sorted({key for entry in bad for key in entry["prediction"]}) or ["labels"]
    where = f"({'frame' if len(bad) == 1 else 'frames'} {frames} of {result['data']})"
    if "metrics" not in result:  # predict
        return (f"{len(bad)} of {total} structures gave non-finite {', '.join(what)} {where}; "
                f"they are written as NaN to {result['out']}")
    rest = (f"the metrics are those of the other {total - len(bad)}" if len(bad) < total
            else "no structure is left for the metrics")
    return (f"{len(bad)} of {total} structures gave non-finite {', '.join(what)} {where}; {rest}, and "
            "metrics.json lists the failed frames under 'non_finite'")


_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _common_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=str, action="append", required=True,
                        help="checkpoint of 'equimol fit' (.ckpt) or package of 'equimol compile' (.pt2); "
                        "give it several times for a committee (mean prediction and its spread)")
    parser.add_argument("--data", type=str, required=True,
                        help="structure file (file.xyz@-100: selects frames), sample:NAME, or a YAML config "
                        "whose test split is used")


def _run_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--batch_size", type=PositiveInt, default=16, help="structures per model call")
    parser.add_argument("--device", type=str, default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument("--dtype", type=Optional[Literal[tuple(sorted(_DTYPES))]], default=None,
                        help="compute in this dtype (default: the model's own)")


def build_evaluate_parser() -> ArgumentParser:
    """The parser of ``equimol evaluate``."""
    parser = ArgumentParser(
        prog="equimol evaluate",
        description="Metrics (JSON), per-frame predictions and errors (extxyz), parity plots and error histograms "
        "of a trained model, or of a committee of models, on a labelled structure file.",
        **errors.PARSER_KWARGS,
    )
    _common_arguments(parser)
    for name, default in DEFAULT_KEYS.items():
        parser.add_argument(f"--{name}_key", type=Optional[str], default=default,
                            help=f"where the frames store the {name} label (null or none: leave it out)")
    parser.add_argument("--out", type=Optional[str], default=None,
                        help="folder for metrics.json, predictions.extxyz and the figures (default: evaluation/ "
                        "beside the checkpoints/ folder of the first --ckpt)")
    _run_arguments(parser)
    return parser


def build_predict_parser() -> ArgumentParser:
    """The parser of ``equimol predict``."""
    parser = ArgumentParser(
        prog="equimol predict",
        description="Predictions (energy, forces, stress; for a committee their spread) of a trained model on any "
        "structure file, written as extended XYZ; no labels needed.",
        **errors.PARSER_KWARGS,
    )
    _common_arguments(parser)
    parser.add_argument("--out", type=str, default="predictions.extxyz", help="the extended-XYZ file to write")
    _run_arguments(parser)
    return parser


def _key(value: str | None) -> str | None:
    return None if value is None or value.strip().lower() in ("null", "none", "") else value


def _default_out(checkpoint: str) -> Path:
    """``evaluation/`` beside the ``checkpoints/`` folder of a run, else beside the file."""
    folder = Path(checkpoint).resolve().parent
    return (folder.parent if folder.name == "checkpoints" else folder) / "evaluation"


def evaluate_main(argv: list[str]) -> int:
    """``equimol evaluate``: parse ``argv`` (the arguments after ``evaluate``), run, and print
    the metrics to stdout; returns 1 when structures gave non-finite values."""
    args = build_evaluate_parser().parse_args(list(argv))
    out = Path(args.out) if args.out else _default_out(args.ckpt[0])
    with warnings.catch_warnings():  # reported below as the command's error line
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ structures gave non-finite", category=RuntimeWarning)
        result = evaluate(args.ckpt, args.data, out, energy_key=_key(args.energy_key),
                          forces_key=_key(args.forces_key), stress_key=_key(args.stress_key),
                          batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    width = max((len(name) for name in result["metrics"]), default=0)
    print(f"{result['num_structures']} structures from {result['data']}")
    for name, value in result["metrics"].items():
        print(f"  {name:<{width}}  {'null' if value is None else format(value, '.6g')}")
    for name, entry in (result["uncertainty"] or {}).items():
        if isinstance(entry, dict):
            rho = entry["spearman"]
            print(f"  spearman(std, error) {name}: {'null' if rho is None else format(rho, '.3f')}")
    print(f"wrote {out / 'metrics.json'}, {out / 'predictions.extxyz'} and the figures in {out}")
    if result["non_finite"]:  # the metrics of the others are written, but the run did not succeed
        print(f"equimol evaluate: error: {_non_finite_summary(result)}", file=sys.stderr)
        return 1
    return 0


def predict_main(argv: list[str]) -> int:
    """``equimol predict``: parse ``argv``, write the predictions and print where; returns 1 when
    structures gave non-finite values."""
    args = build_predict_parser().parse_args(list(argv))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"\d+ of \d+ structures gave non-finite", category=RuntimeWarning)
        result = predict(args.ckpt, args.data, args.out, batch_size=args.batch_size, device=args.device,
                         dtype=args.dtype)
    print(f"wrote the predictions on {result['num_structures']} structures from {result['data']} to {result['out']}")
    if result["non_finite"]:
        print(f"equimol predict: error: {_non_finite_summary(result)}", file=sys.stderr)
        return 1
    return 0
