"""Data of the invariance study: frames, graphs, the split, transformed test sets, augmentation.

All test sets are made from the same held-out graphs by the transforms of
:mod:`equimol.data.transforms`, so structure ``k`` of every test set is the same physical
structure (and has the same energy) as structure ``k`` of the original test set.
"""

from __future__ import annotations

from typing import Callable, Sequence

import ase
import ase.io
import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform, Compose

from equimol.data import AtomsDataset, split_indices
from equimol.data.samples import sample_path
from equimol.data.transforms import (
    Permute,
    RandomPermutation,
    RandomReflection,
    RandomRotation,
    Rotate,
    rotation_about_axis,
)
from equimol.studies._invariance_config import DataSettings

__all__ = [
    "load_frames",
    "build_graphs",
    "split_graphs",
    "fixed_permutation",
    "make_test_sets",
    "augmentation_transform",
    "stack_copies",
    "TransformedGraphs",
]


def load_frames(settings: DataSettings) -> list[ase.Atoms]:
    """The labelled structures named by ``settings`` (generator, file or shipped sample)."""
    if settings.generator:
        from equimol.generate import generator_call

        function, _ = generator_call(settings.generator, settings.generator_args, where="data.generator")
        return list(function(**settings.generator_args))
    path = sample_path(settings.sample) if settings.sample else settings.file
    frames = ase.io.read(path, index=settings.index)
    return [frames] if isinstance(frames, ase.Atoms) else list(frames)


def build_graphs(frames: Sequence[ase.Atoms], settings: DataSettings) -> list[Data]:
    """Radius graphs of ``frames`` with their labels, in ``settings.dtype``."""
    dtype = getattr(torch, settings.dtype)
    dataset = AtomsDataset(list(frames), settings.cutoff, dtype=dtype, require=("energy",))
    return [dataset[k] for k in range(len(dataset))]


def split_graphs(graphs: Sequence[Data], settings: DataSettings) -> tuple[list[Data], list[Data]]:
    """Seeded train/test split (``1 - test_fraction`` : ``test_fraction``)."""
    fractions = (1.0 - settings.test_fraction, settings.test_fraction)
    train, test = split_indices(len(graphs), fractions, settings.split_seed)
    return [graphs[k] for k in train], [graphs[k] for k in test]


def fixed_permutation(n_atoms: int) -> list[int]:
    """The classroom permutation ``[3, 0, 1, 2]`` for 4 atoms; the cyclic shift
    ``[N-1, 0, 1, ..., N-2]`` for any N (new atom k is old atom ``perm[k]``)."""
    return [n_atoms - 1, *range(n_atoms - 1)]


def _apply(graphs: Sequence[Data], transform: Callable[[Data], Data]) -> list[Data]:
    return [transform(graph) for graph in graphs]


def make_test_sets(test: Sequence[Data], names: Sequence[str], planar: bool, seed: int) -> dict[str, list[Data]]:
    """The transformed copies of the held-out graphs.

    ============================  ==========================================================
    name                          transform of every structure
    ============================  ==========================================================
    ``original``                  none
    ``rotation_90``               rotation by pi/2 about z
    ``random_rotation``           a random rotation each (about z if ``planar``, else SO(3))
    ``permutation_fixed``         :func:`fixed_permutation` of the atoms
    ``random_permutation``        a random relabelling of atoms of equal species each
    ``reflection``                a random improper rotation each (a mirror line in the
                                  plane if ``planar``)
    ``rotation_permutation``      a random rotation, then a random relabelling
    ============================  ==========================================================

    Args:
        test: held-out graphs (single structures, not batches).
        names: which sets to make (``original`` is always made).
        planar: keep 2D systems in the z = 0 plane.
        seed: seed of the random transforms (each set has its own stream).

    Returns:
        name -> list of graphs, in the order of ``test``.
    """
    n_atoms = {int(graph.pos.shape[0]) for graph in test}
    sets: dict[str, list[Data]] = {"original": list(test)}
    makers: dict[str, Callable[[], BaseTransform]] = {
        "rotation_90": lambda: Rotate(rotation_about_axis((0.0, 0.0, 1.0), np.pi / 2)),
        "random_rotation": lambda: RandomRotation(planar=planar, seed=seed + 1),
        "random_permutation": lambda: RandomPermutation(same_species_only=True, seed=seed + 2),
        "reflection": lambda: RandomReflection(planar=planar, seed=seed + 3),
        "rotation_permutation": lambda: Compose(
            [RandomRotation(planar=planar, seed=seed + 4), RandomPermutation(same_species_only=True, seed=seed + 5)]
        ),
    }
    for name in names:
        if name == "original":
            continue
        if name == "permutation_fixed":
            if len(n_atoms) != 1:
                raise ValueError(
                    f"test set 'permutation_fixed' needs structures of one size, got sizes {sorted(n_atoms)}"
                )
            sets[name] = _apply(test, Permute(fixed_permutation(n_atoms.pop())))
            continue
        if name not in makers:
            raise ValueError(f"unknown test set {name!r}")
        sets[name] = _apply(test, makers[name]())
    return sets


def augmentation_transform(transforms: Sequence[str], planar: bool, seed: int) -> BaseTransform:
    """A random transform drawing ``rotation`` and/or ``permutation`` operations (seeded)."""
    parts: list[BaseTransform] = []
    for offset, name in enumerate(transforms):
        if name == "rotation":
            parts.append(RandomRotation(planar=planar, seed=seed + 100 + offset))
        elif name == "permutation":
            parts.append(RandomPermutation(same_species_only=True, seed=seed + 100 + offset))
        else:
            raise ValueError(f"unknown augmentation transform {name!r}; expected 'rotation' or 'permutation'")
    return parts[0] if len(parts) == 1 else Compose(parts)


def stack_copies(graphs: Sequence[Data], transform: BaseTransform, copies: int) -> list[Data]:
    """The original graphs followed by ``copies`` transformed copies of all of them
    (``np.vstack([X, X_1, ..., X_k])``): ``(copies + 1) * len(graphs)`` graphs, fixed once."""
    stacked = list(graphs)
    for _ in range(copies):
        stacked.extend(transform(graph) for graph in graphs)
    return stacked


class TransformedGraphs(Dataset):
    """In-memory graphs with an optional random ``transform`` applied on every access
    (online augmentation: a fresh symmetry operation each epoch)."""

    def __init__(self, graphs: Sequence[Data], transform: Callable[[Data], Data] | None = None) -> None:
        self.graphs = list(graphs)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> Data:
        graph = self.graphs[int(index)]
        return graph if self.transform is None else self.transform(graph)
