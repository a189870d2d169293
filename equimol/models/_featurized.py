"""Potentials that read one fixed-length feature vector per structure (shared plumbing).

:class:`FeaturizedPotential` builds a featurizer of ``equimol.data.featurizers`` from its
name, turns the (differentiable) positions of a PyG batch into ``[B, F]`` features, and
gathers features and energy labels of a whole data set for closed-form fits and input
scaling. Structures must all have the ``n_atoms`` atoms the model was built for.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import torch
from torch_geometric.data import Batch, Data

from equimol import _keys as K
from equimol.data.featurizers import (
    Featurizer,
    featurizer_from_name,
    to_dense_atomic_numbers,
    to_dense_positions,
)
from equimol.models.base import Potential, num_structures
from equimol.models.species import ALL_ELEMENTS

__all__ = ["FeaturizedPotential", "iter_batches"]

_CHUNK = 256


def iter_batches(data: Data | Iterable[Data]) -> Iterator[Data]:
    """Batches from a ``Data``/``Batch``, a list of ``Data`` or a loader of batches."""
    if isinstance(data, Data):
        yield data
        return
    pending: list[Data] = []
    for item in data:
        if isinstance(item, Batch):
            yield item
        elif isinstance(item, Data):
            pending.append(item)
            if len(pending) == _CHUNK:
                yield Batch.from_data_list(pending)
                pending = []
        else:
            raise TypeError(f"expected torch_geometric Data or Batch items, got {type(item).__name__}")
    if pending:
        yield Batch.from_data_list(pending)


class FeaturizedPotential(Potential):
    """Base of the potentials on hand-made features of fixed-size structures.

    Args:
        n_atoms: N, the number of atoms of every structure the model sees.
        featurizer: a name of ``equimol.data.featurizers.featurizer_names()``.
        featurizer_kwargs: arguments of the featurizer (for example ``{"dims": 2}``).

    The model reads positions, not the radius graph (``cutoff`` is 0), and knows the elements
    its featurizer names (``featurizer_kwargs["species"]``), or every element.
    """

    def __init__(self, n_atoms: int, featurizer: str, featurizer_kwargs: dict | None = None) -> None:
        super().__init__((featurizer_kwargs or {}).get("species") or ALL_ELEMENTS, cutoff=0.0)
        if int(n_atoms) < 1:
            raise ValueError(f"n_atoms must be a positive integer, got {n_atoms!r}")
        self.n_atoms = int(n_atoms)
        self.featurizer: Featurizer = featurizer_from_name(featurizer, **dict(featurizer_kwargs or {}))
        self.num_features = self.featurizer.num_features(self.n_atoms)

    def features(self, data: Data, pos: torch.Tensor) -> torch.Tensor:
        """Features [B, F] of the structures of ``data`` at positions ``pos [N_total, 3]`` Å."""
        batch = getattr(data, K.BATCH, None)
        size = num_structures(data)
        dense_pos = to_dense_positions(pos, batch, size)
        if dense_pos.shape[1] != self.n_atoms:
            raise ValueError(
                f"{type(self).__name__} was built for structures of n_atoms={self.n_atoms} atoms, "
                f"got structures of {dense_pos.shape[1]} atoms"
            )
        self.species_index(data[K.ATOMIC_NUMBERS])  # unknown elements are an error
        z = to_dense_atomic_numbers(data[K.ATOMIC_NUMBERS], batch, size)
        return self.featurizer(dense_pos, z)

    @torch.no_grad()
    def collect_features(
        self, data: Data | Iterable[Data], with_energy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Features of a whole data set in float64.

        Args:
            data: a ``Data``/``Batch``, a list of ``Data`` or a loader of batches.
            with_energy: also return the ``energy`` labels.

        Returns:
            ``X [M, F]`` float64 and ``y [M]`` float64 eV (None unless ``with_energy``).
        """
        xs, ys = [], []
        device = next(itertools.chain(self.parameters(), self.buffers()), torch.empty(0)).device
        for batch in iter_batches(data):
            batch = batch.to(device)
            xs.append(self.features(batch, batch[K.POS].to(torch.float64)))
            if with_energy:
                energy = getattr(batch, K.ENERGY, None)
                if energy is None:
                    raise ValueError(f"{type(self).__name__}: the data have no '{K.ENERGY}' labels to fit")
                ys.append(energy.reshape(-1).to(torch.float64))
        if not xs:
            raise ValueError(f"{type(self).__name__}: no structures to fit")
        return torch.cat(xs), (torch.cat(ys) if with_energy else None)
