"""A pair potential learned by a small neural network: invariant by construction, blind to angles.

``E = sum_i (e_ref[z_i] + shift) + scale * sum_{pairs i<j, r_ij < rc} phi(r_ij) fc(r_ij)``
with ``phi`` an MLP of a Gaussian expansion of the distance r or of 1/r (one output per unordered
species pair when species are resolved) and ``fc`` Behler's cosine cutoff
(:class:`equimol.nn.CosineCutoff`), so energies and forces are continuous as atoms cross the
cutoff. Pairs come from the radius graph of the data (``edge_index``, ``edge_shift``;
periodic images included), which must have been built with a cutoff of at least ``cutoff``:
pairs the graph does not hold are not seen.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.data.graph import edge_vectors
from equimol.data.statistics import DatasetStatistics
from equimol.models._scale_shift import fixed_scale_shift, set_energy_scale_shift
from equimol.models._mlp import mlp
from equimol.models.base import Potential, num_structures, structure_index
from equimol.models.species import ALL_ELEMENTS
from equimol.nn import CosineCutoff, GaussianBasis

__all__ = ["PairNN"]


class PairNN(Potential):
    """Sum over pairs within the cutoff of a learned function of the distance.

    Args:
        cutoff: rc in Å (no larger than the cutoff of the data's radius graph).
        hidden: widths of the hidden layers of ``phi``.
        activation: ``"silu"``, ``"tanh"``, ``"softplus"``, ``"gelu"`` or ``"relu"``.
        species: atomic numbers for one pair function per unordered species pair, or None
            for one function shared by all pairs.
        num_basis: the MLP reads the distance expanded in this many Gaussians
            (:class:`equimol.nn.GaussianBasis`, placed as ``basis`` says); 0 feeds it the
            bare ``r / cutoff``, which learns steep repulsive walls far more slowly.
        basis: the variable the Gaussians are evenly spaced in. ``"distance"``: centres on
            ``[basis_min, cutoff]`` in r. ``"inverse"``: centres on ``[1/cutoff, 1/basis_min]``
            in 1/r, so resolution is finest at short range, where repulsive walls are steep;
            on Lennard-Jones data this roughly halves the force error reached in the same
            number of steps (see the notes below).
        basis_min: the shortest distance the basis resolves, Å: the first centre for
            ``"distance"`` (default 0), the last centre 1/basis_min for ``"inverse"`` (must
            then be given and positive: choose it a little below the shortest pair of the
            data; closer pairs see the tail of the last Gaussian only).

    Notes:
        The network's raw output is multiplied by the per-atom energy spread of the data
        (``set_statistics``), which is usually far smaller than the pair energies and their
        slopes (on rattled Lennard-Jones clusters: spread 0.34 epsilon, wall slopes over
        100 epsilon/sigma). The network must then grow large weights in every layer (a
        larger output scale alone does not help), so learning rates of a few 1e-3 leave
        forces several percent off after a few hundred Adam steps; use
        ``basis="inverse"`` and a learning rate of a few 1e-2 with a decaying schedule
        (``configs/lj_cluster.yaml``).
    """

    def __init__(
        self,
        cutoff: float,
        hidden: list[int] = [32, 32],  # noqa: B006 (never mutated; jsonargparse-friendly)
        activation: str = "silu",
        species: list[int] | None = None,
        num_basis: int = 16,
        basis: Literal["distance", "inverse"] = "distance",
        basis_min: float | None = None,
    ) -> None:
        if not (cutoff > 0 and math.isfinite(cutoff)):
            raise ValueError(f"PairNN: cutoff must be a positive number of Å, got {cutoff!r}")
        if species is not None and not all(1 <= int(s) <= 118 for s in species):
            raise ValueError(f"PairNN: species must be atomic numbers 1..118, got {species}")
        super().__init__(sorted({int(s) for s in species}) if species else ALL_ELEMENTS, cutoff)
        self.envelope = CosineCutoff(self.cutoff)
        lookup = torch.full((119, 119), -1, dtype=torch.long)
        if species is None:
            lookup.fill_(0)
            n_channels = 1
        else:
            species = sorted({int(s) for s in species})
            if not species or any(s < 1 or s > 118 for s in species):
                raise ValueError(f"PairNN: species must be atomic numbers 1..118, got {species}")
            n_channels = 0
            for a in range(len(species)):
                for b in range(a, len(species)):
                    lookup[species[a], species[b]] = lookup[species[b], species[a]] = n_channels
                    n_channels += 1
        self.species = species
        self.register_buffer("pair_channel", lookup, persistent=False)
        if int(num_basis) < 0:
            raise ValueError(f"PairNN: num_basis must be >= 0, got {num_basis!r}")
        self.num_basis = int(num_basis)
        if basis not in ("distance", "inverse"):
            raise ValueError(f"PairNN: basis must be 'distance' or 'inverse', got {basis!r}")
        self.basis_variable = basis
        if basis == "inverse":
            if basis_min is None or not (0 < basis_min < self.cutoff):
                raise ValueError(
                    f"PairNN: basis='inverse' needs 0 < basis_min < cutoff ({self.cutoff}), got {basis_min!r}"
                )
            start, stop = 1.0 / self.cutoff, 1.0 / float(basis_min)
        else:
            start = 0.0 if basis_min is None else float(basis_min)
            if not (0 <= start < self.cutoff):
                raise ValueError(f"PairNN: basis_min must be in [0, cutoff={self.cutoff}), got {basis_min!r}")
            stop = self.cutoff
        self.basis_min = basis_min
        self.basis = GaussianBasis(stop, self.num_basis, start=start) if self.num_basis else None
        self.net = mlp(max(self.num_basis, 1), hidden, n_channels, activation)
        self.scale_shift = fixed_scale_shift(self, self.atomic_numbers)

    def set_statistics(self, statistics: DatasetStatistics) -> None:
        """Reference energies and per-atom mean as the per-atom shift; pair energies in
        units of the per-atom energy spread."""
        super().set_statistics(statistics)
        set_energy_scale_shift(self.scale_shift, statistics, self.atomic_numbers, scale_multiplier=1.0)

    def _channels(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        if bool(((z_a < 0) | (z_a > 118) | (z_b < 0) | (z_b > 118)).any()):
            raise ValueError("PairNN: atomic numbers must be in 1..118")
        channel = self.pair_channel[z_a, z_b]
        if bool((channel < 0).any()):
            unknown = sorted(set(torch.cat([z_a[channel < 0], z_b[channel < 0]]).tolist()) - set(self.species))
            raise ValueError(f"PairNN: atomic numbers {unknown} are not in species={self.species}")
        return channel

    def _raw_pair(self, r: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        """``phi(r) fc(r)`` for distances ``r [P]`` Å and pair channels ``[P]`` (unscaled)."""
        if self.basis is None:
            inputs = (r / self.cutoff)[:, None]
        else:
            inputs = self.basis(1.0 / r if self.basis_variable == "inverse" else r)
        out = self.net(inputs)
        phi = out.gather(1, channel[:, None]).squeeze(1)
        return phi * self.envelope(r)

    def pair_energy(self, r: torch.Tensor, z1: int | None = None, z2: int | None = None) -> torch.Tensor:
        """The learned energy of one pair at distances ``r`` (any shape, Å), in eV.

        ``z1, z2`` pick the species pair when species are resolved. The per-atom shifts are
        not included; the curve is zero beyond the cutoff.
        """
        if self.species is not None and (z1 is None or z2 is None):
            raise ValueError(f"PairNN.pair_energy: give z1 and z2 (species={self.species})")
        flat = r.reshape(-1)
        z_a = torch.full_like(flat, z1 or 1, dtype=torch.long)
        z_b = torch.full_like(flat, z2 or 1, dtype=torch.long)
        raw = self._raw_pair(flat, self._channels(z_a, z_b))
        return (self.scale_shift.scales[0].to(raw.dtype) * raw).reshape(r.shape)

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        """``energy [B]`` and ``per_atom_energy [N]`` eV (each pair split between its atoms)."""
        z = data[K.ATOMIC_NUMBERS]
        types = self.species_index(z)
        edge_index = data[K.EDGE_INDEX]
        vectors = edge_vectors(pos, edge_index, data[K.EDGE_SHIFT], cell, getattr(data, K.BATCH, None))
        r = torch.linalg.vector_norm(vectors, dim=-1)
        j, i = edge_index[0], edge_index[1]
        # every unordered pair appears twice in the directed graph: half to each centre
        edge_energy = 0.5 * self._raw_pair(r, self._channels(z[j], z[i]))
        raw = torch.zeros(len(z), dtype=pos.dtype, device=pos.device).index_add(0, i, edge_energy)
        per_atom = self.scale_shift(raw, types)
        batch = structure_index(data)
        energy = torch.zeros(num_structures(data), dtype=pos.dtype, device=pos.device)
        energy = energy.index_add(0, batch, per_atom)
        return {K.ENERGY: energy, K.PER_ATOM_ENERGY: per_atom}
