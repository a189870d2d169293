"""``AtomsDataModule``: data for training a potential, from a generator, a file or a packaged sample.

The module builds radius graphs with :class:`equimol.data.AtomsDataset`, splits them with a
seeded :func:`equimol.data.split_indices` (or takes the validation and test sets from their
own files), computes :func:`equimol.data.compute_statistics` on the training set only (the
model receives them through ``set_statistics``), writes them as ``statistics.json`` (with the
file each set came from, and the frame indices of each set as ``split.json``) into the run
folder, and applies augmentation transforms to the training set only. Generated data is
written once to a cache file (ASE trajectory, exact float64) and always read back from it, so a
resumed run trains on identical structures.

An on-disk data set (``equimol convert``, :class:`equimol.data.OnDiskAtomsDataset`) given as a
path is read lazily instead: its frames are read, and their graphs built, in the DataLoader's
workers as they are needed, and the statistics come from one streaming pass over the training
frames, so a data set larger than memory trains.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence

import ase
import ase.io
import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, RandomSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import BaseTransform

from equimol import _keys as K

if TYPE_CHECKING:
    from equimol.data import AtomsDataset, OnDiskAtomsDataset

__all__ = ["AtomsDataModule", "generate_cached", "TransformedSubset", "EpochSampler", "random_state",
           "restore_random_state"]

logger = logging.getLogger(__name__)

# The split of the main source when ``split`` is left unset and no file replaces a set.
_DEFAULT_SPLIT = [0.8, 0.1, 0.1]
# ... when ``test_path`` gives the test set: training and validation fractions.
_DEFAULT_SPLIT_WITH_TEST_FILE = [0.9, 0.1]
# Structures a worker hands over at once in the statistics pass over an on-disk data set.
_STATISTICS_CHUNK = 64


class TransformedSubset(Dataset):
    """The items ``indices`` of ``dataset``, each passed through ``transform`` (on a copy)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int], transform: Callable[[Data], Data] | None = None):
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Data:
        data = self.dataset[self.indices[index]]
        return data if self.transform is None else self.transform(data.clone())


class EpochSampler(RandomSampler):
    """The order of the training set in each epoch: a permutation drawn from ``seed + epoch``
    alone (the rule of ``DistributedSampler``), never from the global random state.

    A run resumed from a checkpoint therefore visits the structures in exactly the order the
    uninterrupted run would have. Lightning calls :meth:`set_epoch` before every epoch; under
    DDP it replaces this sampler (a ``RandomSampler``) by a ``DistributedSampler``, which
    follows the same rule with the seed of ``seed_everything``.
    """

    def __init__(self, data_source: Sequence[Any], seed: int) -> None:
        super().__init__(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> list[int]:
        """The positions of the training set, in the order of ``epoch`` (default: the current one)."""
        generator = torch.Generator().manual_seed(self.seed + (self.epoch if epoch is None else int(epoch)))
        return torch.randperm(len(self.data_source), generator=generator).tolist()

    def __iter__(self):
        return iter(self.order())


def _own_generators(transforms: Sequence[Any]) -> list[np.random.Generator]:
    """The NumPy generators of the random transforms in ``transforms`` (``Compose`` included)."""
    found = []
    for transform in transforms:
        inner = getattr(transform, "transforms", None)
        if isinstance(inner, (list, tuple)):
            found += _own_generators(inner)
            continue
        generator = getattr(transform, "generator", None)
        if isinstance(generator, np.random.Generator):
            found.append(generator)
    return found


def random_state(transforms: Sequence[Any] = ()) -> dict[str, Any]:
    """Every random state of this process, as plain data a checkpoint can hold: Python's,
    NumPy's global, torch's CPU and (when CUDA is in use) CUDA generators, and the own
    generators of ``transforms``."""
    name, key, position, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "transforms": [generator.bit_generator.state for generator in _own_generators(transforms)],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_random_state(state: dict[str, Any], transforms: Sequence[Any] = ()) -> None:
    """Set the random states saved by :func:`random_state` (those it holds)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        saved = state["numpy"]
        key = np.asarray(saved["key"].numpy() if isinstance(saved["key"], torch.Tensor) else saved["key"])
        np.random.set_state((saved["name"], key.astype(np.uint32), saved["pos"], saved["has_gauss"], saved["gauss"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and torch.cuda.device_count() == len(state["cuda"]):
        torch.cuda.set_rng_state_all(state["cuda"])
    generators = _own_generators(transforms)
    for generator, saved in zip(generators, state.get("transforms", []), strict=False):
        generator.bit_generator.state = saved


def _global_seed() -> int:
    """The seed ``seed_everything`` set (``PL_GLOBAL_SEED``), or 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def generate_cached(
    generator: dict[str, Any], cache_dir: str | os.PathLike, default_seed: int | None = None, progress: bool = True
) -> Path:
    """Run a data generator once and cache its frames; returns the cache file.

    Args:
        generator: ``{"name": <a key of equimol.generate.GENERATORS>, **arguments}``.
        cache_dir: folder of the cache; the file name holds a hash of the name and arguments,
            so the same generator call finds the same file.
        default_seed: the generator's ``seed`` when ``generator`` gives none (default: the
            seed of ``seed_everything``, else 0).
        progress: log what is being generated, and show the generator's progress bar.

    The frames are written as an ASE trajectory (positions and labels in float64).
    """
    from equimol.generate import call_string, generator_call  # lazy: generators import heavy calculators

    spec = dict(generator)
    name = spec.pop("name", None)
    function, arguments = generator_call(name, spec, where="data.generator")
    if "seed" in arguments and "seed" not in spec:
        spec["seed"] = arguments["seed"] = _global_seed() if default_seed is None else int(default_seed)
    # the call's arguments with the defaults applied (``progress``, which changes no frame,
    # left out) name the frames
    identity = {"name": name, **arguments}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name}-{digest}.traj"
    if path.exists():
        return path
    if progress:
        logger.info("generating data: %s", call_string(function.__name__, arguments))
    if "progress" in inspect.signature(function).parameters and "progress" not in spec:
        spec["progress"] = progress
    frames = function(**spec)
    if not frames:
        raise ValueError(f"data.generator {name!r} returned no structures")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}.traj")
    ase.io.write(partial, frames)
    os.replace(partial, path)  # atomic: a parallel reader never sees half a file
    return path


class AtomsDataModule(pl.LightningDataModule):
    """Structures with energies (and forces, stress) as radius graphs, split and batched.

    Give exactly one of ``generator``, ``path`` or ``sample``: the main source. The validation
    and test sets are either split off the main source or read from their own files:

    - neither ``val_path`` nor ``test_path``: ``split`` divides the main source into training,
      validation and (with a third entry) test sets; unset, it is ``[0.8, 0.1, 0.1]``.
    - ``val_path``: the validation set is that file and every frame of the main source is
      training data; ``split`` must be left unset (giving both is an error naming the two keys,
      since nothing is split). The test set is ``test_path``, or there is none.
    - ``test_path`` only: the test set is that file; ``split`` divides the main source into
      training and validation sets, so it takes 2 entries (3 is an error naming both keys);
      unset, it is ``[0.9, 0.1]``.

    For example, a fixed training file with a fixed validation file, as in NequIP or MACE::

        data:
          class_path: equimol.train.AtomsDataModule
          init_args:
            cutoff: 4.0
            path: cu_train.xyz
            val_path: cu_val.xyz
            energy_key: REF_energy
            forces_key: REF_forces

    The files of ``val_path`` and ``test_path`` are read like ``path`` (anything ASE reads,
    ASE's frame selection such as ``val.xyz@-50:`` included) with the same label keys,
    ``require``, ``dtype``, ``on_isolated`` and ``min_distance``, and their graphs are cached the same way. They
    must carry every label the training data has (a missing one is an error naming the file
    and the key); species absent from the training data are allowed here.

    Any of ``path``, ``val_path`` and ``test_path`` may be an on-disk data set written by
    ``equimol convert`` (suffix ``.eqd``, or a file with its header): it is read lazily with
    :class:`equimol.data.OnDiskAtomsDataset` (nothing is cached; the frames are read, and their
    graphs built, in the DataLoader's workers: set ``num_workers``), and the statistics come
    from one streaming pass over the training frames. Its labels were chosen when it was
    converted; a label key set to null here leaves that label out.

    Args:
        cutoff: radius of the graphs, Å; must equal the model's cutoff. Leave it out of a
            training config: ``equimol fit`` takes the model's (``model...cutoff``), so the
            cutoff is written once. Python code gives it here.
        generator: ``{name: <generator>, <its arguments>}``, a generator of
            ``equimol.generate.GENERATORS`` (``toy2d``, ``lj-cluster``, ``lj-gravity-mc``,
            ``emt-md``, ``molecule-md``); its ``seed`` defaults to ``seed``.
        path: a structure file (extended XYZ or anything ASE reads), an ASE database, or an
            on-disk data set (``.eqd``, from ``equimol convert``), read lazily.
        val_path: a structure file holding the validation set (see above); None splits the
            validation set off the main source.
        test_path: a structure file holding the test set (see above); None splits the test
            set off the main source when ``split`` has three entries, else there is none.
        sample: the name of a data file shipped with equimol (``ethanol_gfn2``).
        energy_key: where the energy label is in the frames (``atoms.info`` or calculator
            results); None leaves it out.
        forces_key: where the force labels are (``atoms.arrays`` or calculator results).
        stress_key: where the stress label is (``atoms.info`` or calculator results).
        require: labels every frame must have.
        split: fractions (``[0.8, 0.1, 0.1]``) or sizes (``[400, 50, 50]``) of the sets taken
            from the main source: training, validation and (optional third entry) test, or
            training and validation with ``test_path``. None (the default) is
            ``[0.8, 0.1, 0.1]``, ``[0.9, 0.1]`` with ``test_path``, and no split at all (the
            whole main source is training data) with ``val_path``.
        seed: seed of the split and default seed of the generator; None uses the seed
            of ``seed_everything`` (so one number in the config seeds everything).
        batch_size: structures per training batch.
        eval_batch_size: structures per validation/test batch (default: ``batch_size``).
        num_workers: DataLoader worker processes (kept alive between epochs); with an on-disk
            data set they read the frames and build the graphs, and the statistics pass uses them too.
        train_transforms: augmentations (PyG ``BaseTransform`` objects) applied on the fly to
            training structures only (for example ``equimol.data.transforms.RandomRotation``).
        cache_dir: where generated frames and graphs are cached; default
            ``{trainer.default_root_dir}/data``.
        dtype: floating dtype of the graphs, ``float32`` or ``float64``.
        on_isolated: ``error`` or ``ignore`` atoms with no neighbour within the cutoff.
        min_distance: the smallest distance, Å, two atoms of a frame may have (periodic images
            included); a closer pair is an error naming the file, the frame and both atoms.
            0 turns the check off. Default 0.1 Å, as ``AtomsDataset``.

    After ``setup``: ``train_set``, ``val_set``, ``test_set`` (None without a test set),
    ``statistics`` (a ``DatasetStatistics`` of the training set), ``dataset`` (the graphs of
    the main source), ``sources`` (set name -> the source it was read from) and
    ``split_indices`` (set name -> frame indices into that source). The run folder of a fit
    (``setup("fit")``) receives, when training starts, ``statistics.json`` (the statistics,
    ``sources`` and the size of each set) and ``split.json`` (``split_indices``); validate,
    test and predict write nothing.
    """

    def __init__(
        self,
        cutoff: float | None = None,
        generator: dict[str, Any] | None = None,
        path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        sample: str | None = None,
        energy_key: str | None = "energy",
        forces_key: str | None = "forces",
        stress_key: str | None = "stress",
        require: list[Literal["energy", "forces", "stress"]] = ["energy"],  # noqa: B006
        split: list[int] | list[float] | None = None,
        seed: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_transforms: list[BaseTransform] | None = None,
        cache_dir: str | None = None,
        dtype: Literal["float32", "float64"] = "float32",
        on_isolated: Literal["error", "ignore"] = "error",
        min_distance: float = 0.1,
    ) -> None:
        super().__init__()
        given = [name for name, value in (("generator", generator), ("path", path), ("sample", sample)) if value]
        if len(given) != 1:
            raise ValueError(
                "data: give exactly one of 'generator', 'path' or 'sample'"
                + (f" (got {given})" if given else " (got none)")
            )
        if cutoff is None:
            raise ValueError("data.cutoff is not set: give the radius of the graphs in Å (equimol fit takes "
                             "the model's cutoff when the config leaves it out)")
        if not (cutoff > 0):
            raise ValueError(f"data.cutoff must be a positive number of Å, got {cutoff!r}")
        if not (min_distance >= 0):
            raise ValueError(f"data.min_distance must be a number of Å >= 0 (0: no check), got {min_distance!r}")
        if generator is not None and "name" not in generator:
            raise ValueError(f"data.generator needs a 'name' key, got {sorted(generator)}")
        resolved_split = _resolve_split(split, val_path, test_path)
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["train_transforms"])
        self.cutoff = float(cutoff)
        self.generator = dict(generator) if generator is not None else None
        self.path = path
        self.val_path = val_path
        self.test_path = test_path
        self.sample = sample
        self.keys = {"energy_key": energy_key, "forces_key": forces_key, "stress_key": stress_key}
        self.require = tuple(require)
        self.split = resolved_split  # of the main source; None: all of it is training data
        self.seed = seed
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.train_transforms = list(train_transforms or [])
        self.cache_dir = cache_dir
        self.dtype = getattr(torch, dtype)
        self.on_isolated = on_isolated
        self.min_distance = float(min_distance)
        self.dataset = None
        self.train_set = self.val_set = self.test_set = None
        self.statistics = None
        self.split_indices: dict[str, list[int]] | None = None
        self.sources: dict[str, str] | None = None

    # ------------------------------------------------------------------------- where
    def _cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return Path(self.cache_dir)
        root = self.trainer.default_root_dir if self._trainer_attached() else "."
        return Path(root) / "data"

    def _trainer_attached(self) -> bool:
        return getattr(self, "trainer", None) is not None

    def _source(self) -> str | Path:
        if self.path is not None:
            return self.path
        if self.sample is not None:
            from equimol.data.samples import sample_path

            return sample_path(self.sample)
        return generate_cached(self.generator, self._cache_dir(), self.seed)

    # -------------------------------------------------------------------- lifecycle
    def prepare_data(self) -> None:
        """Generate the data once (on one process per node) before every process reads it."""
        if self.generator is not None:
            generate_cached(self.generator, self._cache_dir(), self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            if stage == "fit":
                self._run_files_pending = True
            return
        from equimol.data import compute_statistics, split_indices

        source = self._source()
        self.dataset = self._graphs(source)
        if len(self.dataset) == 0:
            raise ValueError(f"data: {source} holds no structures")
        if getattr(self.dataset[0], K.ENERGY, None) is None:
            raise ValueError(
                f"data: {source} has no energy labels under key {self.keys['energy_key']!r}; "
                "set data.energy_key to the key that holds the total energy (eV)"
            )
        files = {name: path for name, path in (("val", self.val_path), ("test", self.test_path)) if path is not None}
        datasets = {name: self._file_graphs(f"{name}_path", path) for name, path in files.items()}

        if self.split is None:
            parts = {"train": list(range(len(self.dataset)))}
        else:
            if len(self.dataset) < len(self.split):
                raise ValueError(f"data: {source} has {len(self.dataset)} structures, too few to split as {self.split}")
            seed = self.seed if self.seed is not None else _global_seed()
            names = [name for name in ("train", "val", "test") if name not in files][: len(self.split)]
            indices = split_indices(len(self.dataset), self.split, seed)
            parts = {name: part.tolist() for name, part in zip(names, indices, strict=True)}
        sets = {name: self.dataset for name in parts}
        sources = {name: str(source) for name in parts}
        for name, dataset in datasets.items():
            parts[name] = list(range(len(dataset)))
            sets[name] = dataset
            sources[name] = str(files[name])
        order = [name for name in ("train", "val", "test") if name in parts]
        self.split_indices = {name: parts[name] for name in order}
        self.sources = {name: sources[name] for name in order}

        transform = _compose(self.train_transforms)
        self.train_set = TransformedSubset(sets["train"], parts["train"], transform)
        self.val_set = TransformedSubset(sets["val"], parts["val"])
        self.test_set = TransformedSubset(sets["test"], parts["test"]) if "test" in parts else None
        self.statistics = compute_statistics(self._stream(sets["train"], parts["train"]))
        # written for a fit only, once training starts (see train_dataloader); validate, test
        # and predict leave the training run's files alone
        self._run_files_pending = stage == "fit"

    def _graphs(self, source: str | Path) -> AtomsDataset | OnDiskAtomsDataset:
        """The radius graphs of ``source``, built and cached with this module's settings, or
        read lazily from an on-disk data set."""
        from equimol.data import AtomsDataset, OnDiskAtomsDataset, is_ondisk

        if is_ondisk(source):
            return OnDiskAtomsDataset(
                source,
                self.cutoff,
                labels=[name for name in K.LABEL_KEYS if self.keys[f"{name}_key"] is not None],
                require=self.require,
                dtype=self.dtype,
                on_isolated=self.on_isolated,
                min_distance=self.min_distance,
            )
        return AtomsDataset(
            source,
            self.cutoff,
            **self.keys,
            require=self.require,
            dtype=self.dtype,
            cache_dir=self._cache_dir(),
            on_isolated=self.on_isolated,
            min_distance=self.min_distance,
        )

    def _stream(self, dataset: Dataset, indices: Sequence[int]) -> Iterator[Data]:
        """The graphs ``indices`` of ``dataset`` in order, one at a time: straight from the graphs
        in memory, or, from an on-disk data set, read (and built) by ``num_workers`` workers."""
        from equimol.data.ondisk import GraphLoader, OnDiskAtomsDataset

        if not isinstance(dataset, OnDiskAtomsDataset):
            return (dataset[i] for i in indices)
        loader = GraphLoader(TransformedSubset(dataset, indices), batch_size=_STATISTICS_CHUNK, as_list=True,
                             num_workers=self.num_workers)
        return (data for chunk in loader for data in chunk)

    def _file_graphs(self, key: str, path: str) -> AtomsDataset | OnDiskAtomsDataset:
        """The graphs of the file of ``data.<key>`` (``val_path``, ``test_path``); errors name the key.

        The file must have every label the training data has, so that the validation and test
        losses have the same terms as the training loss.
        """
        from equimol.data.io import parse_source

        if self.path is not None and parse_source(path)[0].resolve() == parse_source(self.path)[0].resolve():
            warnings.warn(f"data.{key} and data.path name the same file {path}: the model is "
                          "selected on its own training data", stacklevel=3)
        try:
            dataset = self._graphs(path)
        except (OSError, ValueError, KeyError) as error:
            message = f"data.{key}: {error}"
            try:
                renamed = type(error)(message)
            except Exception:  # an error type that takes other arguments
                raise ValueError(message) from error
            raise renamed from error
        if len(dataset) == 0:
            raise ValueError(f"data.{key}: {path} holds no structures")
        for name in K.LABEL_KEYS:
            if name in self.dataset[0] and name not in dataset[0]:
                raise ValueError(
                    f"data.{key}: {path} has no {name!r} labels under key {self.keys[f'{name}_key']!r}, "
                    f"but the training data has them; give this file the same labels (or set "
                    f"data.{name}_key to null to leave them out everywhere)"
                )
        return dataset

    def _write_statistics(self, source: str) -> None:
        """Write ``statistics.json`` and ``split.json`` into the run folder (each whole or not at
        all). Called when a fit asks for its training data, so a run that fails earlier (its
        model set-up, a resumed checkpoint, the sanity check) leaves the folder's files alone."""
        self._run_files_pending = False
        if not self._trainer_attached() or not self.trainer.is_global_zero:
            return
        folder = Path(self.trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "source": source,
            "sources": self.sources,
            "cutoff": self.cutoff,
            "split": self.split,
            "split_sizes": {name: len(idx) for name, idx in self.split_indices.items()},
            "statistics": self.statistics.to_dict(),
        }
        for name, text in (("statistics.json", json.dumps(record, indent=2, default=str)),
                           ("split.json", json.dumps(self.split_indices))):
            # whole or not at all: a temporary file beside it, then renamed
            temporary = folder / f".{name}.{os.getpid()}.tmp"
            try:
                temporary.write_text(text)
                os.replace(temporary, folder / name)
            finally:
                temporary.unlink(missing_ok=True)

    # ------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int, name: str) -> DataLoader:
        if dataset is None:
            raise ValueError(f"data: no {name} set; give data.test_path or three entries in data.split")
        from equimol.data.ondisk import GraphLoader, OnDiskAtomsDataset

        sampler = None
        if shuffle:  # an order that depends on (seed, epoch) alone: see EpochSampler
            seed = self.seed if self.seed is not None else _global_seed()
            sampler = self._train_sampler = EpochSampler(dataset, seed)
        # from an on-disk data set, the workers hand over each batch as one buffer
        lazy = isinstance(getattr(dataset, "dataset", None), OnDiskAtomsDataset)
        return (GraphLoader if lazy else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        if getattr(self, "_run_files_pending", False) and self.sources is not None:
            self._write_statistics(self.sources["train"])
        return self._loader(self.train_set, True, self.batch_size, "training")

    # ---------------------------------------------------------- random state, provenance
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps of the data module: every random state of the process
        (:func:`random_state`, the training transforms' generators included), so that a run
        resumed from it draws the random numbers (augmentations, dropout) the uninterrupted
        run drew. The training order needs none of them (:class:`EpochSampler`). Exact with
        ``num_workers: 0``; worker processes are seeded afresh when a run resumes."""
        return {"random_state": random_state(self.train_transforms)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "random_state" in state_dict:
            restore_random_state(state_dict["random_state"], self.train_transforms)

    def batch_frames(self, stage: str, batch_idx: int) -> list[tuple[str, int]] | None:
        """``(source, frame)`` of each structure of batch ``batch_idx`` of the current training
        epoch (``stage="train"``) or of the validation or test set, in batch order: the file the
        set was read from and the frame's index in it. None when this module cannot tell (the
        trainer replaced the training sampler, as DDP does)."""
        if self.split_indices is None or stage not in self.split_indices:
            return None
        if stage == "train":
            sampler = getattr(self, "_train_sampler", None)
            loader = self.trainer.train_dataloader if self._trainer_attached() else None
            if sampler is None or (loader is not None and getattr(loader, "sampler", None) is not sampler):
                return None
            positions = sampler.order()[batch_idx * self.batch_size:(batch_idx + 1) * self.batch_size]
        else:
            size = self.eval_batch_size
            positions = range(batch_idx * size, min((batch_idx + 1) * size, len(self.split_indices[stage])))
        indices, source = self.split_indices[stage], self.sources[stage]
        return [(source, indices[position]) for position in positions]

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size, "validation")

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size, "test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set or self.val_set, False, self.eval_batch_size, "prediction")


def _resolve_split(
    split: Sequence[int] | Sequence[float] | None, val_path: str | None, test_path: str | None
) -> list[int] | list[float] | None:
    """The split of the main source: its entries, or None when all of it is training data.

    Raises:
        ValueError: a split given together with ``val_path``, three entries together with
            ``test_path``, or a wrong number of entries; the message names the keys.
    """
    if val_path is not None:
        if split is not None:
            raise ValueError(
                f"data.split ({list(split)}) and data.val_path ({val_path!r}) were both given: with a "
                "validation file the whole main source is training data and nothing is split; "
                "remove data.split (and give data.test_path for a test set)"
            )
        return None
    if test_path is not None:
        if split is None:
            return list(_DEFAULT_SPLIT_WITH_TEST_FILE)
        if len(split) != 2:
            raise ValueError(
                f"data.split ({list(split)}) and data.test_path ({test_path!r}): with a test file, "
                f"data.split gives the 2 sets (train, val) taken from the main source, not {len(split)}"
            )
        return list(split)
    if split is None:
        return list(_DEFAULT_SPLIT)
    if len(split) not in (2, 3):
        raise ValueError(f"data.split: give 2 (train, val) or 3 (train, val, test) entries, got {split}")
    return list(split)


def _compose(transforms: list[Callable[[Data], Data]]) -> Callable[[Data], Data] | None:
    if not transforms:
        return None
    if len(transforms) == 1:
        return transforms[0]
    from torch_geometric.transforms import Compose

    return Compose(transforms)
