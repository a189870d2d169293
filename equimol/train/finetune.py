"""Fine-tuning: start a fit from the weights of a trained potential.

:func:`load_pretrained_weights` copies the weights of a trained model (a checkpoint of
``equimol fit``, or a :class:`~equimol.models.Potential` in memory) into a freshly built model of
the same architecture; :func:`freeze_parameters` stops chosen parameters from training.
:class:`~equimol.train.PotentialModule` calls both (config keys ``init_from``,
``init_statistics`` and ``freeze``); a training loop of your own calls them directly::

    model = EquivariantPotential(["Cu", "Ag"], cutoff=4.0, channels=8, l_max=1, num_layers=2)
    report = load_pretrained_weights(model, "runs/cu/checkpoints/last.ckpt",
                                     statistics="recompute", data_statistics=stats,
                                     freeze=["embedding*"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

How the weights are matched:

- Tensors of the state dict (parameters and buffers) are matched by name and must have the same
  shape; a different shape is an error naming the tensor, both shapes and the config key that
  most likely differs (``channels``, ``l_max``, ...). A tensor only one of the two models has is
  an error too: the architectures must be the same.
- Tensors indexed by species are copied row by row by atomic number, so the configured model may
  list the elements in another order and may add elements. equimol's species-indexed layers are
  recognised by their type: :class:`~equimol.nn.PerSpeciesScaleShift` (``scales``, ``shifts``
  ``[S]``), :class:`~equimol.nn.SpeciesEmbedding` (its one-hot input: weight ``[S, C]``) and the
  species self-connection of :class:`~equimol.nn.InteractionBlock` (``[mul_in, S, mul_out]`` per
  path); a model of your own names its further per-species tensors with ``species_axes``.
  e3nn divides these weights by the square root of their fan-in, which grows with the
  number of species S, so a copied row is multiplied by ``sqrt(S_new / S_trained)``: the
  fine-tuned model then gives exactly the trained model's energies and forces on structures of
  the elements both know. Elements the trained model did not know keep their fresh
  initialisation; elements of the trained model that the configured one does not list are left
  out (both are logged and returned in the :class:`FinetuneReport`).
- Statistics: ``statistics="recompute"`` sets the per-species shifts and scales (the
  ``PerSpeciesScaleShift`` values) from the new training data as a fresh fit would;
  ``"keep"`` keeps the trained ones (elements new to the model get theirs from the new data).
  Every other data-dependent value, such as the neighbour normalisation of the convolutions
  (``avg_num_neighbors``), is always kept as trained: the weights were learned with it.

Checkpoints are read safely (:func:`equimol.train.checkpoints.load_checkpoint`: verified
against their checksums, loaded as data only, classes only from trusted modules). A compiled
``.pt2`` package holds machine code, not weights, and is refused.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import ase.data
import torch
from e3nn import o3
from torch import nn

from equimol.data.statistics import DatasetStatistics
from equimol.models.base import Potential
from equimol.nn import InteractionBlock, PerSpeciesScaleShift, SpeciesEmbedding
from equimol.train.checkpoints import CheckpointError, load_checkpoint

__all__ = [
    "FinetuneReport",
    "load_pretrained_weights",
    "freeze_parameters",
    "parameter_prefixes",
    "check_source_path",
    "STATISTICS_MODES",
]

logger = logging.getLogger(__name__)

StatisticsMode = Literal["recompute", "keep"]
STATISTICS_MODES = ("recompute", "keep")

#: Where the configured model's own keys live in an ``equimol fit`` config.
MODEL_KEYS = "model.init_args.model.init_args"

_PACKAGE_SUFFIX = ".pt2"

#: Keys of equimol's EquivariantPotential that set the shapes of the tensors whose names contain
#: the fragment, most likely first (for the message of a shape mismatch).
_SHAPE_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("embedding", ("channels",)),
    ("radial.basis", ("num_radial_basis",)),
    ("radial_mlp.layer0", ("num_radial_basis", "radial_hidden")),
    ("radial_mlp", ("radial_hidden", "channels", "l_max", "parity")),
    ("self_connection", ("self_connection", "channels", "l_max", "parity")),
    ("product", ("correlation", "channels", "l_max", "parity")),
    ("conv", ("channels", "l_max", "parity")),
    ("gate", ("channels", "l_max", "parity")),
    ("self_interaction", ("channels", "l_max", "parity")),
    ("readout", ("channels",)),
    ("scale_shift", ("species",)),
)

#: Keys of a model config that do not change any tensor's shape (left out of the comparison).
_SHAPELESS_KEYS = {"species", "cutoff", "avg_num_neighbors", "reference_energies", "energy_scale",
                   "tensor_product", "compile"}


@dataclass
class FinetuneReport:
    """What :func:`load_pretrained_weights` did.

    Attributes:
        source: the trained model (the checkpoint's path, or the class of a model in memory).
        copied_species: atomic numbers whose per-species rows came from the trained model.
        new_species: atomic numbers the trained model did not know: fresh initialisation.
        dropped_species: atomic numbers of the trained model the configured one does not list.
        statistics: ``"recompute"``, ``"keep"``, or ``"trained"`` (no data statistics given:
            every value as trained, new elements as initialised).
        loaded: number of state-dict tensors copied (parameters and buffers).
        frozen: names of the parameters frozen (``requires_grad=False``).
    """

    source: str
    copied_species: tuple[int, ...]
    new_species: tuple[int, ...] = ()
    dropped_species: tuple[int, ...] = ()
    statistics: str = "trained"
    loaded: int = 0
    frozen: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists, strings, numbers), as stored in a checkpoint."""
        return {
            "source": self.source,
            "copied_species": list(self.copied_species),
            "new_species": list(self.new_species),
            "dropped_species": list(self.dropped_species),
            "statistics": self.statistics,
            "loaded": self.loaded,
            "frozen": list(self.frozen),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            source=str(values["source"]),
            copied_species=tuple(int(z) for z in values.get("copied_species", ())),
            new_species=tuple(int(z) for z in values.get("new_species", ())),
            dropped_species=tuple(int(z) for z in values.get("dropped_species", ())),
            statistics=str(values.get("statistics", "trained")),
            loaded=int(values.get("loaded", 0)),
            frozen=tuple(str(name) for name in values.get("frozen", ())),
        )

    def __str__(self) -> str:
        text = (f"initialised from {self.source}: {self.loaded} tensors; elements "
                f"{_symbols(self.copied_species)} from the trained model")
        if self.new_species:
            text += f", {_symbols(self.new_species)} new (freshly initialised)"
        if self.dropped_species:
            text += f", {_symbols(self.dropped_species)} of the trained model left out"
        text += f"; shifts and scales: {self.statistics}"
        if self.frozen:
            text += f"; {len(self.frozen)} parameters frozen"
        return text


def _symbols(numbers: Sequence[int]) -> str:
    return ", ".join(ase.data.chemical_symbols[int(z)] for z in numbers) or "none"


# --------------------------------------------------------------------------- the source
@dataclass
class _Trained:
    """The weights of a trained model: its state dict, elements and (when known) config."""

    name: str
    state: dict[str, torch.Tensor]
    atomic_numbers: tuple[int, ...]
    config: dict[str, Any] | None


def _package_error(path: Path) -> ValueError:
    return ValueError(
        f"{path} is a compiled .pt2 package (equimol compile): it holds compiled machine code, not "
        "weights that can be trained further; fine-tune from the checkpoint it was compiled from "
        "(a .ckpt file of equimol fit, such as runs/NAME/checkpoints/last.ckpt)"
    )


def _looks_like_package(path: Path) -> bool:
    """Whether ``path`` is a zip archive laid out as a ``.pt2`` package (no ``data.pkl``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return not any(name.endswith("data.pkl") for name in names) and any(
        name.endswith(("archive_format", ".wrapper.cpp")) or "/data/aotinductor/" in name
        for name in names
    )


def check_source_path(path: str | os.PathLike) -> Path:
    """Refuse a ``.pt2`` package by its name (nothing is read); returns ``path`` as a Path."""
    path = Path(path)
    if path.suffix == _PACKAGE_SUFFIX:
        raise _package_error(path)
    return path


def _plain(value: Any) -> Any:
    """A config value as plain dicts and lists (jsonargparse Namespaces turned into dicts)."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _model_config(value: Any) -> dict[str, Any] | None:
    """``{"class_path": ..., "init_args": {...}}`` of a model, or None when ``value`` is not one."""
    value = _plain(value)
    if isinstance(value, dict) and isinstance(value.get("class_path"), str):
        return {"class_path": value["class_path"], "init_args": dict(value.get("init_args") or {})}
    return None


def _build(config: dict[str, Any]) -> Potential:
    """The potential a (checked) model config describes, built as ``equimol fit`` builds it."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=Potential)
    return parser.instantiate_classes(parser.parse_object({"model": config})).model


def _read_checkpoint(path: Path, trusted_modules: Sequence[str] | None) -> _Trained:
    try:
        checkpoint = load_checkpoint(path, trusted_modules=trusted_modules)
    except CheckpointError:
        if _looks_like_package(path):
            raise _package_error(path) from None
        raise
    state_dict = checkpoint.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path} is not a checkpoint of equimol fit: it has no state_dict")
    state = {key[len("model."):]: value for key, value in state_dict.items() if key.startswith("model.")}
    if not state:
        raise CheckpointError(f"{path} holds no weights of a potential (no state_dict entries under 'model.')")
    hyper = checkpoint.get("hyper_parameters")
    config = _model_config(hyper.get("model")) if isinstance(hyper, dict) else None
    record = checkpoint.get("equimol")
    recorded = record.get("atomic_numbers") if isinstance(record, dict) else None
    if recorded:
        atomic_numbers = tuple(int(z) for z in recorded)
    elif config is not None:  # written before checkpoints recorded the elements: rebuild the model
        atomic_numbers = tuple(_build(config).atomic_numbers)
    else:
        raise ValueError(
            f"{path} records neither the elements of its model nor how to build it (a run started "
            "from Python): load it with equimol.train.load_potential(path, model=<the same "
            "architecture>) and pass load_potential(...).model as the source"
        )
    return _Trained(str(path), state, atomic_numbers, config)


def _read_source(source: str | os.PathLike | nn.Module, trusted_modules: Sequence[str] | None) -> _Trained:
    if isinstance(source, nn.Module):
        potential = source if isinstance(source, Potential) else source._modules.get("model")
        if not isinstance(potential, Potential):
            raise TypeError(
                f"the source of the weights must be a checkpoint path, an equimol Potential or a module "
                f"holding one as .model (PotentialModule); got {type(source).__name__}"
            )
        state = {key: value.detach() for key, value in potential.state_dict().items()}
        return _Trained(f"the {type(potential).__name__} given", state, tuple(potential.atomic_numbers), None)
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            f"the source of the weights must be a checkpoint path or a Potential, got {type(source).__name__}"
        )
    return _read_checkpoint(check_source_path(source), trusted_modules)


# ---------------------------------------------------------------------- species layouts
@dataclass(frozen=True)
class _Block:
    """One contiguous block of a flat tensor: ``view(shape)``, species along ``axis``, and the
    constant e3nn multiplies it with (its path normalisation)."""

    start: int
    shape: tuple[int, ...]
    axis: int
    path_weight: float

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _linear_blocks(linear: o3.Linear) -> list[_Block]:
    """Blocks of an ``o3.Linear`` whose input is the one-hot species (species = input channel)."""
    blocks, start = [], 0
    for ins in linear.instructions:
        blocks.append(_Block(start, tuple(ins.path_shape), 0, float(ins.path_weight)))
        start += math.prod(ins.path_shape)
    return blocks


def _tensor_product_blocks(tp: o3.TensorProduct) -> list[_Block]:
    """Blocks of an e3nn tensor product whose second input is the one-hot species."""
    blocks, start = [], 0
    for ins in tp.instructions:
        if not ins.has_weight:
            continue
        if ins.connection_mode != "uvw":
            raise ValueError(f"species self-connection with connection mode {ins.connection_mode!r} is not supported")
        blocks.append(_Block(start, tuple(ins.path_shape), 1, float(ins.path_weight)))
        start += math.prod(ins.path_shape)
    return blocks


_Layout = Callable[[int], list[_Block]]


def _species_layouts(model: nn.Module) -> dict[str, _Layout]:
    """State-dict names of ``model``'s species-indexed tensors -> their blocks for S species."""
    layouts: dict[str, _Layout] = {}
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, PerSpeciesScaleShift):
            for name in ("scales", "shifts"):
                layouts[dot + name] = lambda s: [_Block(0, (s,), 0, 1.0)]
        elif isinstance(module, SpeciesEmbedding):
            irreps_out = module.irreps_out
            current = module.num_species

            def embedding(s: int, module: SpeciesEmbedding = module, irreps_out: o3.Irreps = irreps_out,
                          current: int = current) -> list[_Block]:
                linear = module.linear if s == current else o3.Linear(o3.Irreps(f"{s}x0e"), irreps_out)
                return _linear_blocks(linear)

            layouts[f"{dot}linear.weight"] = embedding
        elif isinstance(module, InteractionBlock) and module.self_connection is not None:
            tp = module.self_connection
            current = tp.irreps_in2.num_irreps

            def self_connection(s: int, tp: o3.TensorProduct = tp, current: int = current) -> list[_Block]:
                built = tp if s == current else o3.FullyConnectedTensorProduct(
                    tp.irreps_in1, o3.Irreps(f"{s}x0e"), tp.irreps_out)
                return _tensor_product_blocks(built)

            layouts[f"{dot}self_connection.weight"] = self_connection
    return layouts


# ------------------------------------------------------------------------------- errors
def _shape_hint(name: str, trained: _Trained, new_config: dict[str, Any] | None) -> str:
    """Which config key most likely differs, for the message of a shape mismatch."""
    old = (trained.config or {}).get("init_args", {})
    new = (new_config or {}).get("init_args", {})
    if trained.config is not None and new_config is not None:
        differ = [key for key in sorted(set(old) | set(new))
                  if key not in _SHAPELESS_KEYS and old.get(key) != new.get(key)]
        if differ:
            return "the configs differ in " + ", ".join(
                f"{MODEL_KEYS}.{key} ({old.get(key)!r} in the trained model, {new.get(key)!r} here)" for key in differ)
    likely: list[str] = []
    for fragment, keys in _SHAPE_KEYS:
        if fragment in name:
            likely += [key for key in keys if key not in likely]
    if likely:
        text = f"likely {MODEL_KEYS}." + " or ".join(likely[:3])
    else:
        text = f"compare the keys under {MODEL_KEYS} with those of the trained model"
    if old:
        settings = ", ".join(f"{key}={value!r}" for key, value in old.items() if key not in _SHAPELESS_KEYS)
        text += f"; the trained model was built with {settings}"
    return text


def _mismatch(name: str, old: tuple[int, ...], new: tuple[int, ...], trained: _Trained,
              new_config: dict[str, Any] | None, same_species: bool = True) -> ValueError:
    species = "" if same_species else (
        f"; if {name} depends on the elements other than through equimol's per-species layers, it cannot be "
        f"copied element by element: keep the trained model's species ({_symbols(trained.atomic_numbers)}) "
        "or, in Python, name its species axis with load_pretrained_weights(..., species_axes=...)")
    return ValueError(
        f"cannot initialise from {trained.name}: {name} has shape {list(old)} in the trained model "
        f"but {list(new)} in the configured model; the architectures differ "
        f"({_shape_hint(name, trained, new_config)}){species}"
    )


def _layers(names: Sequence[str]) -> int:
    """How many interaction blocks (``layers.K``) the tensor names show."""
    return len({match.group(1) for name in names if (match := re.search(r"(?:^|\.)layers\.(\d+)\.", name))})


def _missing(names: Sequence[str], where: str, trained: _Trained, current: Sequence[str],
             new_config: dict[str, Any] | None) -> ValueError:
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    old_layers, new_layers = _layers(list(trained.state)), _layers(current)
    if old_layers != new_layers:
        hint = f"{MODEL_KEYS}.num_layers: {old_layers} in the trained model, {new_layers} here"
    else:
        hint = _shape_hint(names[0], trained, new_config)
    return ValueError(f"cannot initialise from {trained.name}: {where} {shown}; the architectures differ ({hint})")


# ------------------------------------------------------------------------------ copying
def _generated(name: str) -> bool:
    """Constants of e3nn's generated code (Wigner 3j symbols), fixed by the architecture; a deep
    copy of a model may hold more of them, so they are neither compared nor copied."""
    return "._compiled_" in name


def _copy_rows(name: str, target: torch.Tensor, old: torch.Tensor, layout: _Layout, mapping: list[int | None],
               num_trained: int, trained: _Trained, new_config: dict[str, Any] | None) -> torch.Tensor:
    """``target`` with the rows of the species in ``mapping`` (new index -> trained index)
    taken from ``old``, each scaled by the ratio of the two path normalisations."""
    new_blocks, old_blocks = layout(len(mapping)), layout(num_trained)
    expected = sum(block.size for block in old_blocks)
    if len(new_blocks) != len(old_blocks) or old.numel() != expected or target.numel() != sum(
            block.size for block in new_blocks):
        raise _mismatch(name, tuple(old.shape), tuple(target.shape), trained, new_config)
    out = target.detach().clone().contiguous()
    flat_out, flat_old = out.view(-1), old.detach().reshape(-1).to(out)
    for new_block, old_block in zip(new_blocks, old_blocks):
        other_new = [n for axis, n in enumerate(new_block.shape) if axis != new_block.axis]
        other_old = [n for axis, n in enumerate(old_block.shape) if axis != old_block.axis]
        if other_new != other_old:
            raise _mismatch(name, tuple(old.shape), tuple(target.shape), trained, new_config)
        rows = flat_out[new_block.start:new_block.start + new_block.size].view(new_block.shape)
        source = flat_old[old_block.start:old_block.start + old_block.size].view(old_block.shape)
        factor = old_block.path_weight / new_block.path_weight
        for k, j in enumerate(mapping):
            if j is not None:
                rows.select(new_block.axis, k).copy_(source.select(old_block.axis, j) * factor)
    return out


def _axis_layout(shape: Sequence[int], axis: int) -> _Layout:
    """The layout of a plain tensor of ``shape`` whose dimension ``axis`` is the species."""

    def blocks(s: int) -> list[_Block]:
        full = list(shape)
        full[axis] = s
        return [_Block(0, tuple(full), axis, 1.0)]

    return blocks


def _transferred_state(model: Potential, trained: _Trained, mapping: list[int | None],
                       new_config: dict[str, Any] | None,
                       species_axes: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """The state dict ``model`` gets: every tensor from ``trained``, species rows by atomic number."""
    current = {name: value for name, value in model.state_dict().items() if not _generated(name)}
    missing = [name for name in current if name not in trained.state]
    if missing:
        raise _missing(missing, "the trained model has no tensors named", trained, list(current), new_config)
    extra = [name for name in trained.state if name not in current and not _generated(name)]
    if extra:
        raise _missing(extra, "the configured model has no tensors named", trained, list(current), new_config)
    identity = mapping == list(range(len(trained.atomic_numbers)))
    layouts = {} if identity else _species_layouts(model)
    for name, axis in (species_axes or {}).items():
        if name not in current:
            raise ValueError(f"species_axes names {name!r}, which is not a tensor of {type(model).__name__}")
        if not -current[name].dim() <= axis < current[name].dim():
            raise ValueError(f"species_axes: {name} has {current[name].dim()} dimensions, no axis {axis}")
        if not identity:
            layouts[name] = _axis_layout(current[name].shape, axis % current[name].dim())
    state = {}
    for name, target in current.items():
        old = trained.state[name]
        if name in layouts:
            state[name] = _copy_rows(name, target, old, layouts[name], mapping, len(trained.atomic_numbers),
                                     trained, new_config)
        elif old.shape != target.shape:
            raise _mismatch(name, tuple(old.shape), tuple(target.shape), trained, new_config, identity)
        else:
            state[name] = old.detach().to(device=target.device, dtype=target.dtype)
    return state


def _scale_shift_names(model: nn.Module) -> list[str]:
    return [f"{prefix}.{name}" if prefix else name
            for prefix, module in model.named_modules() if isinstance(module, PerSpeciesScaleShift)
            for name in ("scales", "shifts")]


@torch.no_grad()
def _apply_statistics(model: Potential, loaded: dict[str, torch.Tensor], statistics: DatasetStatistics,
                      mode: str, new_rows: list[int]) -> None:
    """``set_statistics`` on the new data, then every value back as loaded except the shifts
    and scales: all of them (``recompute``) or the rows of ``new_rows`` (``keep``)."""
    model.set_statistics(statistics)
    computed = model.state_dict()
    state = dict(loaded)
    for name in _scale_shift_names(model):
        if mode == "recompute":
            state[name] = computed[name]
        elif new_rows:
            values = loaded[name].clone()
            values[new_rows] = computed[name][new_rows]
            state[name] = values
    model.load_state_dict(state, strict=False)  # all but e3nn's generated constants


def load_pretrained_weights(
    model: Potential,
    source: str | os.PathLike | nn.Module,
    *,
    statistics: StatisticsMode = "recompute",
    data_statistics: DatasetStatistics | None = None,
    freeze: Sequence[str] | None = None,
    trusted_modules: Sequence[str] | None = None,
    model_config: Mapping[str, Any] | None = None,
    species_axes: Mapping[str, int] | None = None,
) -> FinetuneReport:
    """Initialise ``model`` with the weights of a trained model, for fine-tuning.

    Args:
        model: the freshly built potential to initialise (same architecture as the trained one;
            it may list more elements, in any order).
        source: a checkpoint of ``equimol fit`` (``.ckpt``; its ``state_dict``, the EMA weights
            when the EMA was on), or a :class:`~equimol.models.Potential` (or a module holding
            one as ``.model``, such as :func:`~equimol.train.load_potential`'s result).
        statistics: ``"recompute"``: the per-species shifts and scales from ``data_statistics``,
            as a fresh fit sets them; ``"keep"``: the trained ones (new elements get theirs from
            ``data_statistics`` when given). The neighbour normalisation stays as trained either way.
        data_statistics: statistics of the new training set
            (:func:`equimol.data.compute_statistics`); needed by ``"recompute"``.
        freeze: parameter-name patterns to freeze (see :func:`freeze_parameters`).
        trusted_modules: modules besides equimol and torch whose classes the checkpoint may name.
        model_config: the configured model's ``{"class_path", "init_args"}``, only to name the
            differing config keys when shapes do not match.
        species_axes: further per-species tensors of a model of your own, as state-dict name ->
            the axis that runs over its species (``{"head.bias": 0}``); their rows are copied by
            atomic number like those of equimol's per-species layers, which are found by type.

    Returns:
        A :class:`FinetuneReport` (also logged at INFO level).

    Raises:
        ValueError: a ``.pt2`` package; tensors of different shapes or names (naming them and
            the likely config key); no element in common; ``"recompute"`` without
            ``data_statistics``; a ``freeze`` pattern that matches nothing.
        FileNotFoundError: no such checkpoint.
        equimol.train.checkpoints.CheckpointError: a damaged or unsafe checkpoint.
    """
    if statistics not in STATISTICS_MODES:
        raise ValueError(f"statistics must be one of {', '.join(STATISTICS_MODES)}, got {statistics!r}")
    if statistics == "recompute" and data_statistics is None:
        raise ValueError(
            "statistics='recompute' sets the shifts and scales from the new training data: pass "
            "data_statistics=<DatasetStatistics of that data>, or statistics='keep' to keep the trained ones"
        )
    if not isinstance(model, Potential):
        raise TypeError(f"load_pretrained_weights initialises an equimol Potential, not {type(model).__name__}")
    if freeze:  # check the patterns before any work
        _matches_of(model, freeze)
    trained = _read_source(source, trusted_modules)
    index = {z: j for j, z in enumerate(trained.atomic_numbers)}
    mapping = [index.get(z) for z in model.atomic_numbers]
    copied = tuple(z for z in model.atomic_numbers if z in index)
    new = tuple(z for z in model.atomic_numbers if z not in index)
    dropped = tuple(z for z in trained.atomic_numbers if z not in set(model.atomic_numbers))
    if not copied:
        raise ValueError(
            f"cannot initialise from {trained.name}: it knows elements {_symbols(trained.atomic_numbers)}, "
            f"none of which is in the configured species {_symbols(model.atomic_numbers)}"
        )
    state = _transferred_state(model, trained, mapping, _model_config(model_config), species_axes)
    model.load_state_dict(state, strict=False)
    mode = "trained"
    if data_statistics is not None:
        _apply_statistics(model, state, data_statistics, statistics,
                          [k for k, j in enumerate(mapping) if j is None])
        mode = statistics
    frozen = tuple(freeze_parameters(model, freeze)) if freeze else ()
    report = FinetuneReport(trained.name, copied, new, dropped, mode, len(state), frozen)
    logger.info("%s", report)
    if new:
        logger.info("elements new to the model, freshly initialised: %s", _symbols(new))
    if dropped:
        logger.warning("elements of %s not in the configured species, left out: %s", trained.name, _symbols(dropped))
    return report


# ------------------------------------------------------------------------------ freezing
def parameter_prefixes(model: nn.Module) -> list[str]:
    """The module prefixes of ``model``'s parameter names, two names deep with list indices
    (``network.embedding``, ``network.layers.0``, ...), in order."""
    prefixes: list[str] = []
    for name, _ in model.named_parameters():
        parts, taken, words = name.split(".")[:-1], [], 0
        for part in parts:
            if part.isdigit() or words < 2:
                taken.append(part)
                words += not part.isdigit()
            else:
                break
        prefix = ".".join(taken) or name
        if prefix not in prefixes:
            prefixes.append(prefix)
    return prefixes


def _matches(name: str, pattern: str) -> bool:
    """``pattern`` (a prefix or a glob) matches ``name`` or the name without its leading modules."""
    parts = name.split(".")
    for start in range(len(parts)):
        tail = ".".join(parts[start:])
        if tail == pattern or tail.startswith(pattern + ".") or fnmatch.fnmatchcase(tail, pattern):
            return True
    return False


def _matches_of(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    if isinstance(patterns, str):
        raise TypeError(f"freeze takes a list of patterns, got the string {patterns!r}: write [{patterns!r}]")
    names = [name for name, _ in model.named_parameters()]
    chosen: list[str] = []
    for pattern in patterns:
        matched = [name for name in names if _matches(name, str(pattern))]
        if not matched:
            raise ValueError(
                f"freeze: {pattern!r} matches no parameter of {type(model).__name__}; its parameter-name "
                f"prefixes are {', '.join(parameter_prefixes(model))} (a pattern is a prefix or a glob, "
                "matched against the full name or its end, e.g. 'embedding*' or 'layers.0.*')"
            )
        chosen += [name for name in matched if name not in chosen]
    if chosen and len(chosen) == len(names):
        raise ValueError(
            f"freeze: {list(patterns)} match every parameter of {type(model).__name__}: nothing would train"
        )
    return chosen


def freeze_parameters(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Set ``requires_grad=False`` on the parameters whose names match any of ``patterns``.

    A pattern is a name prefix (``network.embedding``) or a glob (``embedding*``,
    ``layers.0.*``), matched against the full parameter name or any end of it that starts at a
    module boundary, so ``layers.0.*`` matches ``network.layers.0.conv.tp.weight``. Leave the
    frozen parameters out of the optimizer (``[p for p in model.parameters() if p.requires_grad]``;
    :class:`~equimol.train.PotentialModule` does).

    Returns:
        The names of the frozen parameters.

    Raises:
        ValueError: a pattern matches no parameter (the message lists the prefixes there
            are), or the patterns match every parameter.
    """
    names = _matches_of(model, patterns)
    parameters = dict(model.named_parameters())
    for name in names:
        parameters[name].requires_grad_(False)
    logger.info("frozen %d parameters: %s", len(names), ", ".join(names))
    return names
