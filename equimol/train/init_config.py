"""``equimol init TRAIN``: a commented training config for a structure file of one's own.

From the frames of the training file (and of ``--val``/``--test`` files) this command finds
the elements, the keys the labels are stored under (``energy``, ``REF_energy``, ``dft_energy``,
... in ``atoms.info``, ``atoms.arrays`` or the results of an attached calculator), whether the
cells are periodic, the number of atoms per frame and the smallest interatomic distance; it
prints one line per finding and writes a config for ``equimol fit`` in which every choice is
explained in a comment:

- an :class:`~equimol.models.equivariant.EquivariantPotential` sized for the data (l_max 1,
  16 or 32 channels, 2 or 3 layers by the number of labels), with the cutoff written once, in
  the model (5.0 Å for periodic cells, 4.0 or 5.0 Å for molecules, or ``--cutoff``);
- the data (:class:`~equimol.train.datamodule.AtomsDataModule`): the file(s), the label keys,
  the labels every frame must have, a split or the validation and test files;
- loss weights (stress only when every frame has a stress label and a periodic cell), AdamW
  with a plateau scheduler, EMA of the weights, early stopping, an offline W&B logger and the
  run folder ``trainer.default_root_dir``.

::

    equimol init train.xyz --val val.xyz --out my.yaml
    equimol fit --config my.yaml

Errors name the file and the key (a file without energy labels lists the keys it has); an
existing ``--out`` is kept unless ``--overwrite`` is given.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import ase
import numpy as np
import yaml
from ase.data import chemical_symbols
from jsonargparse import ActionYesNo, ArgumentParser

from equimol import _cli_errors as errors
from equimol.data.graph import DEFAULT_MIN_DISTANCE
from equimol.data.io import available_keys, frame_labels, parse_source, read_frames

__all__ = [
    "init_main",
    "build_init_parser",
    "LABEL_CANDIDATES",
    "KeyFinding",
    "find_label_key",
    "Geometry",
    "scan_geometry",
    "choose_cutoff",
    "render_yaml",
]

#: Keys a label is looked for under, in this order (exact names, case-sensitive); after them,
#: any key that is the label's name behind a prefix (``PBE_energy``, ``xtb-forces``).
LABEL_CANDIDATES: dict[str, tuple[str, ...]] = {
    "energy": ("energy", "REF_energy", "ref_energy", "dft_energy", "DFT_energy", "total_energy",
               "free_energy", "potential_energy", "Energy", "energies", "E"),
    "forces": ("forces", "REF_forces", "ref_forces", "dft_forces", "DFT_forces", "force", "REF_force",
               "dft_force", "DFT_force", "Forces", "F"),
    "stress": ("stress", "REF_stress", "ref_stress", "dft_stress", "DFT_stress", "stresses", "Stress"),
}
_SUFFIXES = {
    "energy": re.compile(r"^(?:.+[_-])?(?:total_|free_|potential_)?energy$", re.IGNORECASE),
    "forces": re.compile(r"^(?:.+[_-])?forces?$", re.IGNORECASE),
    "stress": re.compile(r"^(?:.+[_-])?stress(?:es)?$", re.IGNORECASE),
}
_VIRIAL = re.compile(r"^(?:.+[_-])?virials?$", re.IGNORECASE)
_OFF = ("none", "null")  # a key given as this leaves the label out

#: Cutoffs, Å: periodic solids and liquids; molecules; small molecules (every pair within it).
PERIODIC_CUTOFF = 5.0
MOLECULE_CUTOFF = 5.0
SMALL_MOLECULE_CUTOFF = 4.0
#: Stress weight when stress is trained: a stress MSE in (eV/Å³)² is about 1e-5 of a force MSE.
STRESS_WEIGHT = 1000.0
#: Frames examined for the size of molecules (spread over the file).
_DIAMETER_FRAMES = 1000


# ------------------------------------------------------------------------------ label keys
@dataclass
class KeyFinding:
    """Where a label is stored in a file's frames.

    ``key`` is None when none was found (or it was switched off); ``frames`` is the number of
    frames that carry it out of ``total``; ``where`` is ``info``, ``arrays`` or ``calculator
    results``; ``others`` are further candidate keys present on every frame.
    """

    name: str
    key: str | None
    frames: int = 0
    total: int = 0
    where: str = ""
    given: bool = False
    others: list[str] = field(default_factory=list)


def _where(atoms: ase.Atoms, key: str) -> str:
    if key in atoms.info:
        return "info"
    if key in atoms.arrays:
        return "arrays"
    return "calculator results"


def _shape_ok(name: str, atoms: ase.Atoms, key: str, source: str) -> bool:
    """Whether the value under ``key`` has the shape of label ``name`` (scalar energy, [N, 3]
    forces, [6], [9] or [3, 3] stress)."""
    try:
        value = frame_labels(atoms, {name: key}, source=source).get(name)
    except ValueError:  # not numeric
        return False
    if value is None:
        return False
    if name == "energy":
        return value.size == 1
    if name == "forces":
        return value.shape == (len(atoms), 3)
    return value.shape in ((6,), (3, 3))


def find_label_key(
    frames: Sequence[ase.Atoms], name: str, given: str | None, source: str | Path
) -> KeyFinding:
    """The key label ``name`` (``energy``, ``forces``, ``stress``) is stored under in ``frames``.

    With ``given`` (``--energy_key`` ...): that key, which must be on the frames (``none``
    leaves the label out). Otherwise the first of :data:`LABEL_CANDIDATES` (then any key named
    ``*_energy``, ``*_forces``, ``*_stress``) present on every frame with the label's shape, or
    failing that the one on most frames.

    Raises:
        ValueError: a given key that no frame has, or has with the wrong shape; the message
            names the file and the key and lists the keys the frames have.
    """
    total = len(frames)
    if given is not None and given.lower() in _OFF:
        return KeyFinding(name, None, total=total, given=True)
    counts: dict[str, int] = {}
    for atoms in frames:
        for key in available_keys(atoms):
            counts[key] = counts.get(key, 0) + 1
    if given is not None:
        if given not in counts:
            raise ValueError(
                f"{source}: no frame has the key {given!r} (--{name}_key); keys on the frames: {sorted(counts)}"
            )
        first = next(atoms for atoms in frames if given in available_keys(atoms))
        if not _shape_ok(name, first, given, str(source)):
            raise ValueError(f"{source}: the values under {given!r} (--{name}_key) are not {_SHAPE[name]}")
        return KeyFinding(name, given, counts[given], total, _where(first, given), given=True)
    exact = [key for key in LABEL_CANDIDATES[name] if key in counts]
    pattern = sorted(key for key in counts if _SUFFIXES[name].match(key) and key not in exact)
    found = []
    for key in exact + pattern:
        first = next(atoms for atoms in frames if key in available_keys(atoms))
        if _shape_ok(name, first, key, str(source)):
            found.append((key, first))
    if not found:
        return KeyFinding(name, None, total=total)
    complete = [item for item in found if counts[item[0]] == total]
    key, first = complete[0] if complete else max(found, key=lambda item: counts[item[0]])
    others = [other for other, _ in complete if other != key]
    return KeyFinding(name, key, counts[key], total, _where(first, key), others=others)


_SHAPE = {"energy": "one number per frame", "forces": "[N, 3] per frame",
          "stress": "[6] (Voigt), [9] or [3, 3] per frame"}


def _virial_keys(frames: Sequence[ase.Atoms]) -> list[str]:
    keys = set()
    for atoms in frames[:10]:
        keys |= {key for key in available_keys(atoms) if _VIRIAL.match(key)}
    return sorted(keys)


def _check_keys_in(frames: Sequence[ase.Atoms], source: str, findings: dict[str, KeyFinding], flag: str) -> None:
    """Every frame of a validation or test file has the labels found in the training file."""
    for finding in findings.values():
        if finding.key is None:
            continue
        for number, atoms in enumerate(frames):
            if finding.key not in available_keys(atoms):
                raise ValueError(
                    f"{source} ({flag}), frame {number}: no {finding.name!r} label under key {finding.key!r}, "
                    f"which the training file has; keys on this frame: {available_keys(atoms)}"
                )


# ---------------------------------------------------------------------------- geometry
@dataclass
class Geometry:
    """What the frames look like at a cutoff.

    ``min_distance`` Å (None: no two atoms within the cutoff) at ``closest`` (source, atoms
    i and j); ``isolated`` holds the first frame of several atoms that has atoms without a
    neighbour within the cutoff (its source and those atoms), ``isolated_frames`` counts such
    frames; ``single_atom_frames`` counts frames of one atom.
    """

    cutoff: float
    min_distance: float | None = None
    closest: tuple[str, int, int] | None = None
    isolated: tuple[str, list[int]] | None = None
    isolated_frames: int = 0
    single_atom_frames: int = 0


def scan_geometry(files: Sequence[tuple[str, Sequence[ase.Atoms]]], cutoff: float) -> Geometry:
    """Build the radius graph of every frame at ``cutoff`` Å (vesin, periodic images included)
    and record the smallest distance and the atoms without a neighbour.

    Raises:
        ValueError: a frame whose cell or positions cannot be searched (names file and frame).
    """
    from equimol.data.graph import radius_graph, structure_arrays

    geometry = Geometry(cutoff)
    for name, frames in files:
        for number, atoms in enumerate(frames):
            source = f"{name}, frame {number}"
            positions, cell, pbc = structure_arrays(atoms, source)
            if len(atoms) == 1 and not pbc.any():
                geometry.single_atom_frames += 1
                continue
            edge_index, shifts = radius_graph(positions, cell, pbc, cutoff, source=source)
            if edge_index.shape[1]:
                j, i = edge_index
                lengths = np.linalg.norm(positions[j] - positions[i] + shifts @ cell, axis=1)
                k = int(np.argmin(lengths))
                if geometry.min_distance is None or lengths[k] < geometry.min_distance:
                    geometry.min_distance = float(lengths[k])
                    geometry.closest = (source, int(i[k]), int(j[k]))
            lonely = np.setdiff1d(np.arange(len(atoms)), edge_index[1])
            if len(lonely):
                if len(atoms) == 1:
                    geometry.single_atom_frames += 1
                    continue
                geometry.isolated_frames += 1
                if geometry.isolated is None:
                    geometry.isolated = (source, lonely.tolist())
    return geometry


def _largest_diameter(frames: Sequence[ase.Atoms]) -> float:
    """The largest distance between two atoms of one frame, Å, over (up to
    ``_DIAMETER_FRAMES`` evenly spread) frames of open molecules."""
    from scipy.spatial.distance import pdist

    step = max(1, len(frames) // _DIAMETER_FRAMES)
    largest = 0.0
    for atoms in frames[::step]:
        if len(atoms) > 500:
            return math.inf
        if len(atoms) > 1:
            largest = max(largest, float(pdist(atoms.positions).max()))
    return largest


def choose_cutoff(periodic: bool, diameter: float) -> tuple[float, str]:
    """The cutoff, Å, and why: :data:`PERIODIC_CUTOFF` for periodic cells; for molecules
    :data:`SMALL_MOLECULE_CUTOFF` when every molecule spans less (its graph is complete),
    else :data:`MOLECULE_CUTOFF`."""
    if periodic:
        return PERIODIC_CUTOFF, "periodic cells: the first two or three neighbour shells"
    if diameter < SMALL_MOLECULE_CUTOFF:
        return SMALL_MOLECULE_CUTOFF, f"small molecules (at most {diameter:.2f} Å across): every pair of atoms"
    return MOLECULE_CUTOFF, "molecules: neighbours up to 3-4 bonds away"


# ------------------------------------------------------------------------------- config
@dataclass
class _Model:
    channels: int
    num_layers: int
    why: str


def _size_model(labels: int) -> _Model:
    """Width and depth by the number of labels (energies plus force components)."""
    if labels < 20_000:
        return _Model(16, 2, f"{labels:,} labels (energies, force components): small and quick")
    if labels < 500_000:
        return _Model(32, 2, f"{labels:,} labels (energies, force components)")
    return _Model(32, 3, f"{labels:,} labels (energies, force components): deep enough to use them")


def _split_sizes(n: int, split: list[float]) -> list[int]:
    from equimol.data.split import split_indices

    return [len(part) for part in split_indices(n, split, 0)]


def _choose_split(data: _Data) -> list[float] | None:
    """The split of the training file: none with ``--val``; train and val with ``--test``;
    else train, val and test, or train and val when the file is too small for a test set.

    Raises:
        ValueError: too few frames to split off a validation set (names the file).
    """
    if data.val is not None:
        return None
    choices = [[0.9, 0.1]] if data.test is not None else [[0.8, 0.1, 0.1], [0.8, 0.2]]
    for split in choices:
        try:
            _split_sizes(data.frames, split)
        except ValueError:  # a set would be empty
            continue
        return split
    raise ValueError(f"{data.train}: {data.frames} frames are too few to split off a validation set; "
                     "give more frames, or a validation file with --val")


def _yaml_scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") or text.endswith("...") else text


def render_yaml(config: dict[str, Any], comments: dict[str, str], above: dict[str, list[str]],
                width: int = 110) -> str:
    """YAML text of ``config`` (nested dicts; lists and scalars in flow style) with a comment
    after the line of each dotted key in ``comments`` (above it when the line would be longer
    than ``width``) and comment lines before the keys of ``above``."""
    lines: list[str] = []

    def emit(mapping: dict[str, Any], indent: int, prefix: str) -> None:
        for key, value in mapping.items():
            dotted = f"{prefix}{key}"
            pad = " " * indent
            for text in above.get(dotted, []):
                lines.append(f"{pad}# {text}".rstrip() if text else "")
            comment = comments.get(dotted)
            if isinstance(value, dict) and value:
                head = f"{pad}{key}:"
                lines.append(head if comment is None else _with_comment(head, comment, pad, width, lines))
                emit(value, indent + 2, dotted + ".")
                continue
            line = f"{pad}{key}: {_yaml_scalar(value)}"
            lines.append(line if comment is None else _with_comment(line, comment, pad, width, lines))

    emit(config, 0, "")
    return "\n".join(lines) + "\n"


def _with_comment(line: str, comment: str, pad: str, width: int, lines: list[str]) -> str:
    column = max(len(line) + 2, 32)
    if column + 2 + len(comment) <= width:
        return f"{line:<{column}}# {comment}"
    lines.append(f"{pad}# {comment}")
    return line


@dataclass
class _Data:
    """What ``equimol init`` found in the files."""

    train: str
    frames: int
    atoms: list[int]
    species: list[str]
    periodic: str  # "yes", "no" or "mixed"
    keys: dict[str, KeyFinding]
    val: str | None
    test: str | None
    val_frames: int = 0
    test_frames: int = 0


def _build_config(data: _Data, cutoff: float, cutoff_why: str, geometry: Geometry, root_dir: str,
                  name: str, out: str) -> tuple[dict[str, Any], dict[str, str], dict[str, list[str]]]:
    """The config, its end-of-line comments and its comment blocks."""
    energy, forces, stress = (data.keys[label] for label in ("energy", "forces", "stress"))
    labels = data.frames + (3 * sum(data.atoms) if forces.key else 0)
    model = _size_model(labels)
    train_stress = stress.key is not None and data.periodic == "yes"
    mean_atoms = sum(data.atoms) / len(data.atoms)

    split = _choose_split(data)
    n_train = data.frames if split is None else _split_sizes(data.frames, split)[0]
    batch_size = int(min(16, max(1, round(160 / mean_atoms)), max(1, n_train // 10)))
    steps = math.ceil(n_train / batch_size)
    max_epochs = int(min(1000, max(30, math.ceil(10_000 / steps))))
    lr = 0.005 if model.channels <= 16 else 0.003
    require = [label for label, finding in (("energy", energy), ("forces", forces), ("stress", stress))
               if finding.key is not None and (label != "stress" or train_stress)]

    data_args: dict[str, Any] = {"path": data.train}
    if data.val is not None:
        data_args["val_path"] = data.val
    if data.test is not None:
        data_args["test_path"] = data.test
    data_args["energy_key"] = energy.key
    data_args["forces_key"] = forces.key
    data_args["stress_key"] = stress.key if train_stress else None
    data_args["require"] = require
    if split is not None:
        data_args["split"] = split
    data_args["batch_size"] = batch_size
    if geometry.single_atom_frames and geometry.isolated is None:
        data_args["on_isolated"] = "ignore"

    config: dict[str, Any] = {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": max_epochs,
            "default_root_dir": root_dir,
            "gradient_clip_val": 10.0,
            "log_every_n_steps": max(1, min(50, steps)),
            "logger": {
                "class_path": "pytorch_lightning.loggers.WandbLogger",
                "init_args": {"project": "equimol", "name": name, "offline": True},
            },
        },
        "model": {
            "class_path": "equimol.train.PotentialModule",
            "init_args": {
                "model": {
                    "class_path": "equimol.models.equivariant.EquivariantPotential",
                    "init_args": {
                        "species": data.species,
                        "cutoff": cutoff,
                        "l_max": 1,
                        "channels": model.channels,
                        "num_layers": model.num_layers,
                    },
                },
                "energy_weight": 1.0,
                "forces_weight": 10.0 if forces.key else 0.0,
                "stress_weight": STRESS_WEIGHT if train_stress else 0.0,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": lr, "weight_decay": 0.0}},
                "lr_scheduler": {
                    "class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                    "init_args": {"factor": 0.5, "patience": 10},
                },
            },
        },
        "data": {"class_path": "equimol.train.AtomsDataModule", "init_args": data_args},
        "ema": {"decay": 0.99 if steps < 20 else 0.999},
        "early_stopping": {"patience": 30},
    }

    if stress.key is None:
        stress_why = "no stress labels"
    elif not train_stress:
        stress_why = f"stress labels under {stress.key!r}, but not every cell is periodic: not trained"
    else:
        stress_why = "(eV/Å³)²: a stress MSE is ~1e-5 of a force MSE, a large weight balances it"
    sizes = ""
    if split is not None:
        parts = _split_sizes(data.frames, split)
        sizes = " = " + " + ".join(f"{size} {part}" for size, part in zip(parts, ("train", "val", "test")))
    comments = {
        "seed_everything": "seeds the split, the initial weights and the batch order",
        "trainer.max_epochs": f"at most ~10,000 steps ({steps} per epoch); early stopping ends sooner",
        "trainer.default_root_dir": "run folder: checkpoints/, config.yaml, split.json, wandb/",
        "trainer.gradient_clip_val": "clip the gradient norm: one bad batch cannot throw the weights far",
        "trainer.logger.init_args.offline": "in the run folder (`wandb sync` uploads it); false: live",
        "model.init_args.model.init_args.species": "every element in the files; another element is an error",
        "model.init_args.model.init_args.cutoff": f"Å, for the data's graphs too; {cutoff_why}",
        "model.init_args.model.init_args.l_max": "features up to vectors: fast; 2 is more accurate, slower",
        "model.init_args.model.init_args.channels": f"width: {model.why}",
        "model.init_args.model.init_args.num_layers": "message-passing layers: receptive field = layers x cutoff",
        "model.init_args.energy_weight": "energy per atom, (eV/atom)²",
        "model.init_args.forces_weight": "(eV/Å)²; forces carry 3N labels per frame" if forces.key
        else "no force labels: energies only",
        "model.init_args.stress_weight": stress_why,
        "model.init_args.optimizer.init_args.lr": "a higher rate diverges more often; the plateau scheduler lowers it",
        "model.init_args.lr_scheduler.init_args.patience": "halve the rate after 10 epochs without a better val/loss",
        "data.init_args.path": f"{data.frames} frames; paths are relative to where equimol fit runs",
        "data.init_args.energy_key": f"found in {energy.where}",
        "data.init_args.require": "labels every frame must have (a frame without one is an error)",
        "data.init_args.batch_size": f"structures per batch ({mean_atoms:.0f} atoms each on average)",
        "ema.decay": "checkpoints hold a moving average of the weights",
        "early_stopping.patience": "stop after 30 epochs without a better val/loss",
    }
    if forces.key:
        comments["data.init_args.forces_key"] = f"found in {forces.where}"
    else:
        comments["data.init_args.forces_key"] = "no force labels found; give --forces_key KEY if they exist"
    if stress.key is not None and train_stress:
        comments["data.init_args.stress_key"] = f"found in {stress.where}"
    elif stress.key is not None:
        comments["data.init_args.stress_key"] = f"{stress.key!r} left out: stress needs periodic cells"
    else:
        comments["data.init_args.stress_key"] = "no stress labels"
    if split is not None:
        third = ", test" if len(split) == 3 else ""
        comments["data.init_args.split"] = f"fractions of {data.train}: train, val{third}{sizes}"
    if data.val is not None:
        comments["data.init_args.val_path"] = f"{data.val_frames} frames: the validation set (no split)"
    if data.test is not None:
        comments["data.init_args.test_path"] = f"{data.test_frames} frames: the test set"
    if "on_isolated" in data_args:
        comments["data.init_args.on_isolated"] = (f"{geometry.single_atom_frames} frames of one atom (no neighbour): "
                                                  "they teach the isolated atom's energy")
    source_line = f"{data.frames} frames of {_atoms_text(data.atoms)} ({', '.join(data.species)})"
    label_line = ", ".join(f"{f.name} under {f.key!r}" for f in (energy, forces, stress) if f.key is not None)
    above = {
        "seed_everything": [
            f"Training config for {data.train}, written by `equimol init`.",
            f"  equimol fit --config {out}                   train (run folder: {root_dir})",
            f"  equimol fit --config {out} --ckpt_path last  resume an interrupted run",
            "Any key can be changed here or on the command line (--trainer.max_epochs 10).",
            f"Data: {source_line}; {_periodic_text(data.periodic)}.",
            f"Labels: {label_line}.",
            "Units: Å, eV, eV/Å, eV/Å³.",
        ],
        "trainer": [""],
        "model": ["", "The potential; its cutoff is the one cutoff of the run (the data takes it from here)."],
        "model.init_args.energy_weight": ["loss = w_E MSE(E/N) + w_F MSE(F) + w_S MSE(stress)"],
        "data": ["", "The frames: a graph per frame within the model's cutoff; statistics from the training set."],
        "ema": [""],
        "early_stopping": [""],
    }
    return config, comments, above


def _atoms_text(atoms: list[int]) -> str:
    low, high = min(atoms), max(atoms)
    return f"{low} atoms" if low == high else f"{low}-{high} atoms"


def _periodic_text(periodic: str) -> str:
    return {"yes": "periodic cells", "no": "molecules (no periodic cell)",
            "mixed": "partly periodic (slabs, wires, or periodic and open frames mixed)"}[periodic]


# ------------------------------------------------------------------------------ command
def build_init_parser() -> ArgumentParser:
    """The parser of ``equimol init``."""
    parser = ArgumentParser(
        prog="equimol init",
        description=(
            "Write a commented training config for a structure file: detects the elements, the label keys "
            "(energy, REF_energy, dft_energy, ...; forces; stress), periodic cells and distances, and sizes "
            "the model. Then: equimol fit --config OUT."
        ),
        **errors.PARSER_KWARGS,
    )
    parser.add_argument("train", type=str, help="the training frames: extended XYZ or anything ASE reads "
                        "(FILE@-100: selects frames)")
    parser.add_argument("--val", type=Optional[str], default=None,
                        help="a file of validation frames (default: 10% of TRAIN split off)")
    parser.add_argument("--test", type=Optional[str], default=None,
                        help="a file of test frames (default: 10% of TRAIN split off, unless --val is given)")
    for label in ("energy", "forces", "stress"):
        parser.add_argument(f"--{label}_key", type=Optional[str], default=None,
                            help=f"the key of the {label} labels (default: detected; 'none': leave them out)")
    parser.add_argument("--out", type=Optional[str], default=None,
                        help="the config to write (default: TRAIN's name.yaml)")
    parser.add_argument("--root_dir", type=Optional[str], default=None,
                        help="the run folder, trainer.default_root_dir (default: runs/TRAIN's name)")
    parser.add_argument("--cutoff", type=Optional[float], default=None,
                        help="the cutoff, Å (default: 5.0 for periodic cells, 4.0 or 5.0 for molecules)")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an existing --out")
    return parser


def _read(source: str, flag: str) -> list[ase.Atoms]:
    path, index = parse_source(source)
    try:
        return read_frames(path, index if index is not None else ":")
    except (FileNotFoundError, ValueError) as error:
        raise type(error)(f"{flag}: {error}") from error


def _periodicity(frames: Sequence[ase.Atoms]) -> str:
    flags = {tuple(bool(p) for p in atoms.pbc) for atoms in frames}
    if flags == {(True, True, True)}:
        return "yes"
    if flags == {(False, False, False)}:
        return "no"
    return "mixed"


def init_main(argv: list[str]) -> int:
    """``equimol init TRAIN [--val VAL] [--test TEST] [--energy_key K] [--forces_key K]
    [--stress_key K] [--out FILE] [--root_dir DIR] [--cutoff R] [--overwrite]``: prints what it
    finds, one line each, and writes the config; returns 0. Errors (a missing file, no energy
    labels, an existing ``--out``) raise, for the ``equimol`` command to report in one line."""
    args = build_init_parser().parse_args(list(argv))
    train_path, _ = parse_source(args.train)
    stem = train_path.stem or "equimol"
    out = Path(args.out if args.out is not None else f"{stem}.yaml")
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; choose another --out or add --overwrite to replace it")
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"--out {out}: give a .yaml file")
    if args.cutoff is not None and not (0 < args.cutoff < math.inf):
        raise ValueError(f"--cutoff must be a positive number of Å, got {args.cutoff}")
    if args.energy_key is not None and args.energy_key.lower() in _OFF:
        raise ValueError("--energy_key none: a potential is trained on energies; give the key that holds them")
    root_dir = args.root_dir if args.root_dir is not None else f"runs/{stem}"

    frames = _read(args.train, "train")
    files = [(args.train, frames)]
    val = _read(args.val, "--val") if args.val is not None else None
    test = _read(args.test, "--test") if args.test is not None else None
    files += [(name, f) for name, f in ((args.val, val), (args.test, test)) if f is not None]
    for name, other in files[1:]:
        if parse_source(name)[0].resolve() == train_path.resolve():
            print(f"warning: {name} is the training file: the model would be selected on its own training data",
                  file=sys.stderr)

    atoms_per_frame = [len(atoms) for atoms in frames]
    print(f"{args.train}: {len(frames)} frames, {_atoms_text(atoms_per_frame)} per frame"
          + (f" (mean {np.mean(atoms_per_frame):.1f})" if min(atoms_per_frame) != max(atoms_per_frame) else ""))
    for name, other in files[1:]:
        print(f"{name}: {len(other)} frames, {_atoms_text([len(atoms) for atoms in other])} per frame")
    numbers = set()
    for _, group in files:
        for atoms in group:
            numbers.update(int(z) for z in np.unique(atoms.numbers))
    species = [chemical_symbols[z] for z in sorted(numbers)]
    print(f"species: {', '.join(species)} ({len(species)} element{'s' if len(species) != 1 else ''})")

    keys = {}
    for label in ("energy", "forces", "stress"):
        keys[label] = finding = find_label_key(frames, label, getattr(args, f"{label}_key"), args.train)
        print(_key_line(finding))
    energy = keys["energy"]
    if energy.key is None:
        present = sorted({key for atoms in frames for key in available_keys(atoms)})
        raise ValueError(
            f"{args.train}: no energy labels found (looked for {', '.join(LABEL_CANDIDATES['energy'][:7])}, ... and "
            f"*_energy); keys on the frames: {present}; name the key with --energy_key KEY"
        )
    for finding in keys.values():
        if finding.key is not None and finding.frames < finding.total:
            missing = next(n for n, atoms in enumerate(frames) if finding.key not in available_keys(atoms))
            raise ValueError(
                f"{args.train}, frame {missing}: no {finding.name!r} label under key {finding.key!r} "
                f"({finding.frames} of {finding.total} frames have it); every frame needs its labels "
                f"(give --{finding.name}_key none to leave the {finding.name} out)"
            )
    if keys["stress"].key is None:
        virials = _virial_keys(frames)
        if virials:
            print(f"stress: {virials[0]!r} holds virials, which equimol does not read; it trains on stress "
                  f"(eV/Å³, stress = -virial / volume): store that under a key and give --stress_key KEY")
    for flag, name, group in (("--val", args.val, val), ("--test", args.test, test)):
        if group is not None:
            _check_keys_in(group, name, keys, flag)

    all_frames = [atoms for _, group in files for atoms in group]
    periodic = _periodicity(all_frames)
    print(f"periodic: {_periodic_text(periodic)}")
    if keys["stress"].key is not None and periodic != "yes":
        print(f"warning: stress labels under {keys['stress'].key!r} are left out: stress is trained on "
              "periodic cells only", file=sys.stderr)

    if args.cutoff is not None:
        cutoff, why = float(args.cutoff), "given with --cutoff"
    else:
        diameter = math.inf if periodic != "no" else _largest_diameter(all_frames)
        cutoff, why = choose_cutoff(periodic != "no", diameter)
    geometry = scan_geometry(files, cutoff)
    if geometry.min_distance is None:
        print(f"smallest interatomic distance: none within {cutoff:g} Å")
    else:
        source, i, j = geometry.closest
        print(f"smallest interatomic distance: {geometry.min_distance:.3f} Å ({source}, atoms {j} and {i})")
        if geometry.min_distance < DEFAULT_MIN_DISTANCE:
            print(f"warning: atoms {geometry.min_distance:.3f} Å apart ({source}): training stops at frames with "
                  f"atoms closer than data.min_distance ({DEFAULT_MIN_DISTANCE:g} Å); remove those frames",
                  file=sys.stderr)
    print(f"cutoff: {cutoff:g} Å ({why})")
    if geometry.isolated is not None:
        source, lonely = geometry.isolated
        atoms_text = ", ".join(map(str, lonely[:5])) + (", ..." if len(lonely) > 5 else "")
        print(f"warning: at a cutoff of {cutoff:g} Å, {geometry.isolated_frames} frames have atoms without any "
              f"neighbour (first: {source}, atoms {atoms_text}); training stops at them "
              "(data.on_isolated: error): give a larger "
              "--cutoff, or remove those frames", file=sys.stderr)
    if geometry.single_atom_frames:
        print(f"{geometry.single_atom_frames} frames of a single atom (isolated-atom reference energies)")

    data = _Data(args.train, len(frames), atoms_per_frame, species, periodic, keys, args.val, args.test,
                 len(val) if val is not None else 0, len(test) if test is not None else 0)
    config, comments, above = _build_config(data, cutoff, why, geometry, root_dir, stem, str(out))
    model = config["model"]["init_args"]["model"]["init_args"]
    print(f"model: EquivariantPotential, l_max {model['l_max']}, {model['channels']} channels, "
          f"{model['num_layers']} layers")
    split = config["data"]["init_args"].get("split")
    if split is not None:
        sizes = _split_sizes(len(frames), split)
        if len(split) == 2 and args.test is None:
            print(f"warning: {args.train} is too small for a test set: split into training and validation "
                  "sets only", file=sys.stderr)
        if sizes[1] < 5:
            print(f"warning: the validation set would hold {sizes[1]} frames: early stopping and the best "
                  "checkpoint follow noise; give more frames or a --val file", file=sys.stderr)
    text = render_yaml(config, comments, above)
    if yaml.safe_load(text) != config:  # the comments must not change a value
        raise RuntimeError("equimol init: the written YAML does not read back as the config")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}; train with: equimol fit --config {out}")
    return 0


def _key_line(finding: KeyFinding) -> str:
    if finding.key is None:
        if finding.given:
            return f"{finding.name}: left out (--{finding.name}_key none)"
        return f"{finding.name}: no labels found"
    how = "given" if finding.given else "found"
    count = (f"on all {finding.total} frames" if finding.frames == finding.total
             else f"on {finding.frames} of {finding.total} frames")
    also = ""
    if finding.others:
        also = f"; also on every frame: {', '.join(map(repr, finding.others))} (choose with --{finding.name}_key)"
    return f"{finding.name}: {how} under {finding.key!r} ({finding.where}) {count}{also}"

