"""An MLP on hand-made features: the classroom baseline of the invariance study.

Features of a whole structure (absolute positions, pairwise distances, Coulomb-matrix
eigenvalues, ACSF...; see ``equimol.data.featurizers``) go through a multilayer perceptron
to the total energy; forces come from autograd through the featurizer. Whatever symmetry
the model has, it has from its features: on absolute positions it must learn rotation
invariance from (augmented) data, on distances it is rotation-invariant by construction but
not permutation-invariant, on sorted distances, Coulomb eigenvalues or ACSF it is both.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.data.statistics import DatasetStatistics
from equimol.models._featurized import FeaturizedPotential
from equimol.models._mlp import mlp
from equimol.models._scale_shift import fixed_scale_shift, set_energy_scale_shift
from equimol.models.base import structure_index

__all__ = ["FeatureMLP"]


class FeatureMLP(FeaturizedPotential):
    """Energy = MLP(features of the structure), for structures of a fixed size.

    ``E = sum_i (e_ref[z_i] + shift) + scale * MLP((x - mu) / sigma)`` with ``x`` the
    features, ``mu, sigma`` an optional input standardisation (:meth:`fit_feature_scaling`)
    and ``e_ref, shift, scale`` from :meth:`set_statistics` (scale = N times the per-atom
    energy spread, so the MLP predicts a number of order one).

    Args:
        n_atoms: N, the number of atoms of every structure.
        featurizer: ``"positions"``, ``"distances"``, ``"inverse_distances"``,
            ``"sorted_distances"``, ``"coulomb_eigenvalues"`` or ``"acsf"``.
        hidden: widths of the hidden layers.
        activation: ``"silu"`` (default: a potential must be smooth), ``"tanh"``,
            ``"softplus"``, ``"gelu"`` or ``"relu"`` (discontinuous forces).
        featurizer_kwargs: arguments of the featurizer, for example ``{"dims": 2}`` or
            ``{"cutoff": 4.0, "species": [1, 6, 8]}``.
    """

    def __init__(
        self,
        n_atoms: int,
        featurizer: str = "distances",
        hidden: list[int] = [64, 64],  # noqa: B006 (never mutated; jsonargparse-friendly)
        activation: str = "silu",
        featurizer_kwargs: dict | None = None,
    ) -> None:
        super().__init__(n_atoms, featurizer, featurizer_kwargs)
        self.net = mlp(self.num_features, hidden, 1, activation)
        self.register_buffer("feature_mean", torch.zeros(self.num_features))
        self.register_buffer("feature_std", torch.ones(self.num_features))
        self.scale_shift = fixed_scale_shift(self, self.atomic_numbers)

    def set_statistics(self, statistics: DatasetStatistics) -> None:
        """Reference energies, per-atom mean and spread (scale = N * ``energy_per_atom_std``)."""
        super().set_statistics(statistics)
        set_energy_scale_shift(self.scale_shift, statistics, self.atomic_numbers, scale_multiplier=self.n_atoms)

    def fit_feature_scaling(self, data: Data | Iterable[Data], min_std: float = 1e-6) -> None:
        """Standardise the inputs with the mean and spread of the features of ``data``.

        Args:
            data: training structures (``Data``/``Batch``, list of ``Data`` or a loader).
            min_std: floor of the spread, for features that do not vary.
        """
        x, _ = self.collect_features(data)
        self.feature_mean.copy_(x.mean(0))
        std = x.std(0, unbiased=False).clamp_min(min_std) if len(x) > 1 else torch.ones_like(x[0])
        self.feature_std.copy_(std)

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        """``energy [B]`` eV of structures of ``n_atoms`` atoms at ``pos [N_total, 3]`` Å."""
        x = self.features(data, pos)
        x = (x - self.feature_mean.to(x.dtype)) / self.feature_std.to(x.dtype)
        y = self.net(x).squeeze(-1)
        # the structure's output, shared equally among its n_atoms atoms, scaled and shifted per atom
        batch = structure_index(data)
        per_atom = self.scale_shift(y.index_select(0, batch) / self.n_atoms, self.species_index(data[K.ATOMIC_NUMBERS]))
        energy = torch.zeros_like(y).index_add(0, batch, per_atom)
        return {K.ENERGY: energy}
