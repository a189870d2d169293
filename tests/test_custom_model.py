"""Write your own potential from equimol.nn layers.

``TinyPotential`` below is a complete equivariant potential in under 30 lines: subclass
``Potential`` (declaring the elements and the cutoff), build layers from ``equimol.nn``, and
implement ``energy``. The base class adds forces (and stress) by autograd, so the model trains
on energies and forces right away, and ``equimol.testing.check_model`` checks its physics.
"""

from __future__ import annotations

import ase.build
import numpy as np
import pytest
import torch
from ase.calculators.emt import EMT
from e3nn import o3
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

import equimol.nn as enn
from equimol.data.graph import atoms_to_graph, edge_vectors
from equimol.models.base import Potential, num_structures, structure_index
from equimol.testing import check_model


# --8<-- [start:model]
class TinyPotential(Potential):
    """Species embedding, two interaction blocks with l <= 1, a scalar readout."""

    def __init__(self, atomic_numbers: list[int], cutoff: float = 4.0, channels: int = 8) -> None:
        super().__init__(atomic_numbers, cutoff)  # the contract: elements and graph radius
        self.embedding = enn.SpeciesEmbedding(len(atomic_numbers), f"{channels}x0e")
        self.sh = enn.SphericalHarmonicEdgeEmbedding(l_max=1)
        self.radial = enn.RadialEmbedding(cutoff, num_basis=6)
        irreps, hidden, blocks = self.embedding.irreps_out, f"{channels}x0e + {channels}x1o", []
        for _ in range(2):
            block = enn.InteractionBlock(irreps, self.sh.irreps_out, hidden, num_radial=6, avg_num_neighbors=12.0)
            irreps = block.irreps_out
            blocks.append(block)
        self.blocks = torch.nn.ModuleList(blocks)
        self.readout = enn.ScalarReadout(irreps)

    def energy(self, data, pos, cell):
        vectors = edge_vectors(pos, data.edge_index, data.edge_shift, cell, getattr(data, "batch", None))
        edge_attr, edge_radial = self.sh(vectors), self.radial(vectors.norm(dim=-1))
        x = self.embedding(self.species_index(data.z))
        for block in self.blocks:
            x = block(x, edge_attr, edge_radial, data.edge_index)
        per_atom = self.readout(x)
        energy = scatter(per_atom, structure_index(data), dim=0, dim_size=num_structures(data), reduce="sum")
        return {"energy": energy, "per_atom_energy": per_atom}
# --8<-- [end:model]


# ---- it trains, and it is invariant ---------------------------------------------------------

CUTOFF = 4.0


def emt_structures(rng: np.random.Generator, count: int) -> list:
    """Rattled 4-atom Cu/Au cells labelled with ASE's EMT (energies eV, forces eV/Å)."""
    graphs = []
    for _ in range(count):
        atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True)
        atoms.symbols[rng.random(len(atoms)) < 0.5] = "Au"
        atoms.rattle(0.15, seed=int(rng.integers(1 << 31)))
        atoms.calc = EMT()
        labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        graphs.append(atoms_to_graph(atoms, CUTOFF, labels=labels))
    return graphs


def test_tiny_custom_potential_learns_energies_and_forces(rng):
    batch = Batch.from_data_list(emt_structures(rng, 8))
    model = TinyPotential([29, 79], cutoff=CUTOFF)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        out = model(batch)
        atoms_per_structure = torch.bincount(batch.batch).to(out["energy"].dtype)
        energy_error = (out["energy"] - batch.energy) / atoms_per_structure
        return energy_error.pow(2).mean() + (out["forces"] - batch.forces).pow(2).mean()

    initial = loss().item()
    for _ in range(40):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    assert loss().item() < 0.3 * initial


def test_tiny_custom_potential_is_invariant(rng):
    model = TinyPotential([29, 79], cutoff=CUTOFF).double()
    atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[[1, 2]] = "Au"
    atoms.rattle(0.2, seed=3)
    rotation = o3.rand_matrix(dtype=torch.float64).numpy()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell[:] @ rotation.T)
    rotated.positions = atoms.positions @ rotation.T
    before = model(atoms_to_graph(atoms, CUTOFF, dtype=torch.float64))
    after = model(atoms_to_graph(rotated, CUTOFF, dtype=torch.float64))
    torch.testing.assert_close(after["energy"], before["energy"], rtol=1e-9, atol=1e-12)
    rotated_forces = before["forces"] @ torch.from_numpy(rotation.T)
    torch.testing.assert_close(after["forces"], rotated_forces, rtol=1e-9, atol=1e-12)


def test_tiny_custom_potential_passes_every_physics_check(rng):
    """The documented example satisfies the contract the trainer and the engines read, and
    ``check_model`` runs every check on it: symmetries, finite-difference forces and stress,
    batching, gradient leaks and smoothness at its cutoff."""
    model = TinyPotential([29, 79], cutoff=CUTOFF).double()
    assert model.cutoff == CUTOFF and model.atomic_numbers == (29, 79)
    cell = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True)
    cell.symbols[[1, 2]] = "Au"
    cell.rattle(0.1, seed=4)
    cluster = ase.Atoms("Cu3Au", positions=rng.normal(scale=1.2, size=(4, 3)))
    structures = [atoms_to_graph(atoms, CUTOFF, dtype=torch.float64) for atoms in (cell, cluster)]
    report = check_model(model, structures, strict=True)
    for name in ("rotation/energy", "reflection/forces", "translation/forces", "permutation/forces", "forces_fd",
                 "stress_fd", "batch/forces", "gradient_leak", "cutoff_smoothness/forces"):
        assert name in report, f"{name} did not run"


def test_tiny_custom_potential_refuses_an_element_it_does_not_know():
    model = TinyPotential([29, 79], cutoff=CUTOFF)
    nickel = ase.Atoms("CuNi", positions=[[0, 0, 0], [0, 0, 2.4]])
    with pytest.raises(ValueError, match=r"\[28\].*TinyPotential.*\[29, 79\]"):
        model(atoms_to_graph(nickel, CUTOFF))
