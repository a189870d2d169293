"""NequIP-style E(3)-equivariant interatomic potential, and its export for use outside Python.

Architecture (Batzner et al., Nat. Commun. 13, 2453 (2022)):

1. species embedding: one-hot of the species index -> linear -> ``channels x 0e``;
2. edges: spherical harmonics Y^l (l <= ``l_max``) of the direction, and Bessel basis times
   the polynomial cutoff envelope of the length;
3. ``num_layers`` interaction blocks (tensor-product convolution, gate, self-interaction,
   residual where the irreps match); the last block outputs even scalars only, the one
   part of its output the readout reads, so it skips the paths to vectors, and adds the
   scalar part of its input as its residual;
4. a linear readout of the even scalars to one number per atom, scaled and shifted per
   species (eV), summed over the atoms of each structure.

Hidden features (NequIP's convention): ``channels`` copies of every irrep with l <= ``l_max``
and, when ``parity`` is True, both parities (``32x0e + 32x0o + 32x1o + 32x1e`` for
``l_max = 1``). Each layer keeps only the irreps its tensor product can reach, so the first
layer carries ``0e + 1o`` and odd scalars appear from the third layer on. With
``parity=False`` the network is SO(3)-equivariant only (harmonics and features labelled even)
and can tell mirror images apart.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from e3nn import o3
from torch import nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from equimol import _keys as K
from equimol.data.graph import edge_vectors
from equimol.data.statistics import DatasetStatistics
from equimol.models._traced import TracedEdgeGradients, outputs_from_edge_gradients
from equimol.models.base import Potential, num_structures, structure_index
from equimol.models.species import species_to_atomic_numbers
from equimol.nn import (
    InteractionBlock,
    PerSpeciesScaleShift,
    RadialEmbedding,
    ScalarReadout,
    SpeciesEmbedding,
    SphericalHarmonicEdgeEmbedding,
)

__all__ = ["EquivariantPotential", "AtomicEnergyNetwork"]


def radial_widths(radial_hidden: int | Sequence[int]) -> tuple[int, ...]:
    """Hidden widths of the radial MLPs: one number is one hidden layer."""
    widths = (radial_hidden,) if isinstance(radial_hidden, int) else tuple(radial_hidden)
    if not widths or any(int(w) < 1 for w in widths):
        raise ValueError(f"radial_hidden must be a positive width or a list of them, got {radial_hidden!r}")
    return tuple(int(w) for w in widths)


class AtomicEnergyNetwork(nn.Module):
    """The network of :class:`EquivariantPotential` on plain tensors: per-atom energies.

    Kept separate from the ``Data``-based interface so that it can be scripted
    (TorchScript) and compiled.

    Shapes:
        ``types [N]`` int64 species indices, ``edge_vec [E, 3]`` Å, ``edge_index [2, E]``
        -> per-atom energies ``[N]`` eV.
    """

    def __init__(
        self,
        num_species: int,
        cutoff: float,
        l_max: int,
        parity: bool,
        channels: int,
        num_layers: int,
        num_radial_basis: int,
        radial_hidden: int | Sequence[int],
        avg_num_neighbors: float,
        scales: list[float],
        shifts: list[float],
        trainable_scale_shift: bool,
        tensor_product: str = "fused",
        self_connection: bool = False,
        correlation: int = 1,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        self.num_species = int(num_species)
        self.self_connection = bool(self_connection)
        parities = (1, -1) if parity else (1,)
        hidden = o3.Irreps([(channels, (l, p)) for l in range(l_max + 1) for p in parities]).sort().irreps
        self.irreps_hidden = hidden.simplify()
        self.embedding = SpeciesEmbedding(num_species, o3.Irreps(f"{channels}x0e"))
        self.edge_embedding = SphericalHarmonicEdgeEmbedding(l_max, parity=parity)
        self.radial = RadialEmbedding(cutoff, num_radial_basis)
        layers = []
        irreps = self.embedding.irreps_out
        for index in range(num_layers):
            # the readout reads the even scalars only, so the last layer computes nothing else
            last = index == num_layers - 1
            block = InteractionBlock(
                irreps,
                self.edge_embedding.irreps_out,
                o3.Irreps(f"{channels}x0e") if last else self.irreps_hidden,
                num_radial_basis,
                radial_hidden=radial_widths(radial_hidden),
                avg_num_neighbors=avg_num_neighbors,
                tensor_product=tensor_product,
                num_species=num_species if self_connection else None,
                correlation=correlation,
            )
            layers.append(block)
            irreps = block.irreps_out
        self.layers = nn.ModuleList(layers)
        self.readout = ScalarReadout(irreps)
        self.scale_shift = PerSpeciesScaleShift(num_species, scales, shifts, trainable=trainable_scale_shift)

    def forward(self, types: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        edge_attr = self.edge_embedding(edge_vec)
        edge_radial = self.radial(torch.linalg.norm(edge_vec, dim=-1))
        x = self.embedding(types)
        node_attrs = (
            nn.functional.one_hot(types, self.num_species).to(edge_vec.dtype) if self.self_connection else None
        )
        for layer in self.layers:
            x = layer(x, edge_attr, edge_radial, edge_index, node_attrs)
        return self.scale_shift(self.readout(x), types)


class EquivariantPotential(Potential):
    """NequIP-style equivariant potential (see the module docstring for the architecture).

    Args:
        species: the elements the model knows, as atomic numbers or symbols (``[1, 6, "O"]``).
        cutoff: radius of the graph and of the smooth envelope, Å. The graphs given to the
            model must be built with (at least) this cutoff; longer edges contribute zero.
        l_max: highest degree of the spherical harmonics and features.
        parity: O(3)-equivariant (mirror images have equal energies) if True, SO(3) if False.
        channels: multiplicity of each hidden irrep.
        num_layers: number of interaction blocks.
        num_radial_basis: number of Bessel functions.
        radial_hidden: width of the hidden layer of the radial MLPs, or a list of widths
            for several hidden layers (NequIP's default is ``[64, 64]``).
        avg_num_neighbors: neighbour normalisation of the convolutions (the sum over
            neighbours is divided by its square root); None means 1 until
            :meth:`set_statistics` sets it.
        reference_energies: per-element energies (eV), keyed by atomic number or symbol,
            used as the initial per-species shifts (0 for elements not listed).
        energy_scale: initial per-species scale of the network output, eV.
        trainable_scale_shift: learn the per-species scales and shifts (they start from the
            training-set statistics either way). Learning them lets the model correct the mean
            energy, which a loss dominated by forces hardly constrains otherwise (on the
            ethanol benchmark fixed shifts left a -36 meV offset in every energy; learned ones
            2 meV); fixed shifts keep Adam from moving them by about its learning rate per step.
        tensor_product: how the convolutions evaluate their tensor products: ``"fused"``
            (default, :class:`~equimol.nn.FusedTensorProduct`) or ``"e3nn"``
            (``o3.TensorProduct``): the same numbers to float round-off, the fused one
            faster; or ``"cueq"``: NVIDIA cuEquivariance (``pip install "equimol[cueq]"``,
            l <= 1; its fused kernels on a GPU). The parameters are the same, so a state
            dict loads into any of them.
        self_connection: add NequIP's species-dependent self-connection in every
            interaction block: a linear map of each atom's own features, with weights
            chosen by its species, added to the convolution's output before the gate. An atom
            without neighbours then has a learned energy besides its reference energy (as in
            NequIP); without it, its energy is exactly the per-species shift.
        compile: compute energies, forces and stress through one compiled graph
            (:class:`~equimol.models._traced.TracedEdgeGradients`: the network and the
            gradient of its energy with respect to the edge vectors, traced with symbolic
            shapes and ``torch.compile``-d, training included). The first call traces and
            compiles (about a minute on a CPU, once per device, dtype and train/inference
            use); later calls are faster. The outputs are differentiable with respect to the
            parameters (training) but not the positions. Same parameters either way.

    ``energy(data, pos, cell)`` returns ``energy [B]`` eV and ``per_atom_energy [N]`` eV.
    """

    def __init__(
        self,
        species: list[int | str],
        cutoff: float = 5.0,
        l_max: int = 1,
        parity: bool = True,
        channels: int = 32,
        num_layers: int = 2,
        num_radial_basis: int = 8,
        radial_hidden: int | list[int] = 64,
        avg_num_neighbors: float | None = None,
        reference_energies: dict[str | int, float] | None = None,
        energy_scale: float = 1.0,
        trainable_scale_shift: bool = True,
        tensor_product: str = "fused",
        self_connection: bool = False,
        correlation: int = 1,
        compile: bool = False,
    ) -> None:
        if cutoff <= 0 or not math.isfinite(cutoff):
            raise ValueError(f"cutoff must be a positive number of Å, got {cutoff}")
        if l_max < 0:
            raise ValueError(f"l_max must be >= 0, got {l_max}")
        super().__init__(species, cutoff)
        shifts = self._reference_shifts(reference_energies or {})
        self.network = AtomicEnergyNetwork(
            num_species=len(self.atomic_numbers),
            cutoff=cutoff,
            l_max=l_max,
            parity=parity,
            channels=channels,
            num_layers=num_layers,
            num_radial_basis=num_radial_basis,
            radial_hidden=radial_hidden,
            avg_num_neighbors=1.0 if avg_num_neighbors is None else float(avg_num_neighbors),
            scales=[float(energy_scale)],
            shifts=shifts,
            trainable_scale_shift=trainable_scale_shift,
            tensor_product=tensor_product,
            self_connection=self_connection,
            correlation=correlation,
        )
        self.traced: TracedEdgeGradients | None = None
        self.set_compile(compile)

    def set_compile(self, enabled: bool) -> None:
        """Use the compiled energy-and-forces graph from now on (``enabled``), or eager autograd."""
        self.traced = TracedEdgeGradients(self.network) if enabled else None

    def forward(
        self, data: Data, compute_forces: bool = True, compute_stress: bool = False
    ) -> dict[str, torch.Tensor]:
        """Energy, forces and stress as in :meth:`Potential.forward`; through the compiled
        graph when the model was built with ``compile=True``."""
        if self.traced is None or not (compute_forces or compute_stress):
            return super().forward(data, compute_forces, compute_stress)
        cell = data.cell.reshape(-1, 3, 3)
        vectors = edge_vectors(data.pos, data.edge_index, data.edge_shift, cell, getattr(data, K.BATCH, None)).detach()
        per_atom, forces, edge_grad = self.traced(self.species_index(data.z), vectors, data.edge_index)
        return outputs_from_edge_gradients(data, vectors, per_atom, forces, edge_grad, compute_forces, compute_stress)

    def _reference_shifts(self, reference_energies: Mapping[Any, float]) -> list[float]:
        by_z = {}
        for key, value in reference_energies.items():
            (z,) = species_to_atomic_numbers([key])
            if z not in self.atomic_numbers:
                raise ValueError(
                    f"reference_energies names element {key!r} (Z={z}), which is not in species {self.atomic_numbers}"
                )
            by_z[z] = float(value)
        return [by_z.get(z, 0.0) for z in self.atomic_numbers]

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        """``energy [B]`` eV and ``per_atom_energy [N]`` eV (see :meth:`Potential.energy`)."""
        batch = getattr(data, K.BATCH, None)
        types = self.species_index(data.z)
        vectors = edge_vectors(pos, data.edge_index, data.edge_shift, cell, batch)
        per_atom = self.network(types, vectors, data.edge_index)
        energy = scatter(per_atom, structure_index(data), dim=0, dim_size=num_structures(data), reduce="sum")
        return {K.ENERGY: energy, K.PER_ATOM_ENERGY: per_atom}

    @torch.no_grad()
    def set_statistics(self, statistics: DatasetStatistics) -> None:
        """Scale, shifts and neighbour normalisation from training-set statistics.

        The per-species scale becomes ``force_rms`` (or the energy std per atom if there are
        no forces), the shifts the reference energy plus the mean residual per atom, and
        every convolution's neighbour normalisation ``avg_num_neighbors``.
        """
        super().set_statistics(statistics)
        mean = statistics.energy_per_atom_mean or 0.0
        shifts = [v + mean for v in self._reference_shifts(statistics.reference_energies)]
        scale = None
        for value in (statistics.force_rms, statistics.energy_per_atom_std):
            if value is not None and math.isfinite(float(value)) and float(value) > 0:
                scale = float(value)
                break
        self.network.scale_shift.set_values(scales=scale, shifts=shifts)
        if statistics.avg_num_neighbors > 0:
            for layer in self.network.layers:
                layer.conv.set_avg_num_neighbors(float(statistics.avg_num_neighbors))

