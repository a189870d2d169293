"""Training-set statistics against direct NumPy computations."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.calculators.lj import LennardJones
from ase.neighborlist import neighbor_list
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from equimol.data import DatasetStatistics, atoms_to_graph, compute_statistics

SPECIES = np.array([1, 6, 8])
TRUE_REFERENCES = np.array([-13.6, -1029.8, -2041.3])  # eV, per species


def _synthetic_graphs(rng, count=200, noise=0.01, with_forces=True) -> tuple[list[Data], np.ndarray]:
    """Structures of random composition with E = sum of per-species energies + noise (eV).
    Positions and edges are arbitrary: only counts, labels and edges matter here."""
    graphs, forces_all = [], []
    for _ in range(count):
        n = int(rng.integers(3, 12))
        z = rng.choice(SPECIES, size=n)
        energy = TRUE_REFERENCES[np.searchsorted(SPECIES, z)].sum() + noise * rng.normal()
        num_edges = int(rng.integers(0, 3 * n))
        data = Data(
            pos=torch.tensor(rng.normal(size=(n, 3))),
            z=torch.tensor(z),
            edge_index=torch.tensor(rng.integers(0, n, size=(2, num_edges))),
            energy=torch.tensor([energy], dtype=torch.float64),
        )
        if with_forces:
            forces = rng.normal(scale=0.7, size=(n, 3))
            data.forces = torch.tensor(forces)
            forces_all.append(forces)
        graphs.append(data)
    return graphs, (np.concatenate(forces_all) if with_forces else None)


def test_reference_energies_are_recovered_from_noisy_energies(rng):
    graphs, _ = _synthetic_graphs(rng, noise=0.01)
    stats = compute_statistics(graphs)
    assert stats.species == [1, 6, 8]
    recovered = np.array([stats.reference_energies[z] for z in (1, 6, 8)])
    # 200 structures of ~7 atoms with 0.01 eV noise determine each reference to ~1 meV
    np.testing.assert_allclose(recovered, TRUE_REFERENCES, atol=5e-3, rtol=0)
    # what is left is the noise: 0.01 eV spread over 3 to 11 atoms
    assert abs(stats.energy_per_atom_mean) < 1e-3
    assert 3e-4 < stats.energy_per_atom_std < 0.01 / 3


def test_residual_mean_and_std_equal_numpy_least_squares(rng):
    graphs, _ = _synthetic_graphs(rng, count=50, noise=0.3)
    stats = compute_statistics(graphs)
    counts = np.array([[int((g.z == z).sum()) for z in SPECIES] for g in graphs], dtype=float)
    energies = np.array([g.energy.item() for g in graphs])
    solution = np.linalg.lstsq(counts, energies, rcond=None)[0]
    per_atom = (energies - counts @ solution) / counts.sum(axis=1)
    assert stats.energy_per_atom_mean == pytest.approx(per_atom.mean(), abs=1e-9)
    assert stats.energy_per_atom_std == pytest.approx(per_atom.std(), rel=1e-9)


def test_same_composition_gives_the_minimum_norm_mean_energy_solution(rng):
    energies = -40.0 + 0.05 * rng.normal(size=30)
    graphs = [
        Data(
            z=torch.tensor([6, 1, 1, 1, 1]),
            pos=torch.zeros(5, 3),
            edge_index=torch.zeros(2, 0, dtype=torch.long),
            energy=torch.tensor([e], dtype=torch.float64),
        )
        for e in energies
    ]
    stats = compute_statistics(graphs)
    references = np.array([stats.reference_energies[1], stats.reference_energies[6]])
    counts = np.array([4.0, 1.0])
    # the references' sum over the composition is the mean energy ...
    assert counts @ references == pytest.approx(energies.mean(), rel=1e-12)
    # ... and they are the minimum-norm such solution: parallel to the count vector
    np.testing.assert_allclose(references, counts * energies.mean() / (counts @ counts), rtol=1e-9)
    assert abs(stats.energy_per_atom_mean) < 1e-9
    assert stats.energy_per_atom_std == pytest.approx(np.std(energies / 5), rel=1e-6)


def test_force_rms_and_neighbour_count_equal_direct_computation(rng):
    """LJ-labelled argon clusters: force RMS over components and mean edges per atom."""
    graphs, all_forces, ase_edges, n_atoms = [], [], 0, 0
    calculator = LennardJones(sigma=3.4, epsilon=0.0104, rc=8.0)
    for k in range(8):
        atoms = Atoms(
            "Ar8", positions=rng.uniform(0, 7.0, size=(8, 3)), cell=np.eye(3) * 7.0, pbc=bool(k % 2)
        )
        atoms.calc = calculator
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        graphs.append(
            atoms_to_graph(
                atoms, 5.0, {"energy": energy, "forces": forces}, dtype=torch.float64, on_isolated="ignore"
            )
        )
        all_forces.append(forces)
        ase_edges += len(neighbor_list("i", atoms, 5.0))
        n_atoms += len(atoms)
    stats = compute_statistics(graphs)
    forces = np.concatenate(all_forces)
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    assert stats.avg_num_neighbors == pytest.approx(ase_edges / n_atoms, rel=1e-12)
    assert stats.num_structures == 8 and stats.num_atoms == 64


def test_batches_give_the_same_statistics_as_single_graphs(rng):
    graphs, _ = _synthetic_graphs(rng, count=23)
    single = compute_statistics(graphs)
    batched = compute_statistics(DataLoader(graphs, batch_size=5))
    assert batched.species == single.species and batched.num_atoms == single.num_atoms
    for name in ("energy_per_atom_mean", "energy_per_atom_std", "force_rms", "avg_num_neighbors"):
        assert getattr(batched, name) == pytest.approx(getattr(single, name), rel=1e-9, abs=1e-12), name
    for z, value in single.reference_energies.items():
        assert batched.reference_energies[z] == pytest.approx(value, rel=1e-9)


def test_without_labels_energy_and_force_statistics_are_none():
    graph = atoms_to_graph(molecule("H2O"), 3.0)
    stats = compute_statistics([graph])
    assert stats.reference_energies == {} and stats.force_rms is None
    assert stats.energy_per_atom_mean is None and stats.energy_per_atom_std is None
    assert stats.avg_num_neighbors == pytest.approx(2.0)  # O-H, O-H and H-H within 3 Å


def test_round_trip_through_json(rng):
    graphs, _ = _synthetic_graphs(rng, count=20)
    stats = compute_statistics(graphs)
    restored = DatasetStatistics.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert restored == stats
    with pytest.raises(ValueError, match="unknown DatasetStatistics fields"):
        DatasetStatistics.from_dict({**stats.to_dict(), "force_rsm": 1.0})


def test_empty_input_raises():
    with pytest.raises(ValueError, match="no structures"):
        compute_statistics([])


def test_energy_on_some_structures_only_raises(rng):
    graphs, _ = _synthetic_graphs(rng, count=4)
    del graphs[2].energy
    with pytest.raises(ValueError, match="energy labels on 3 of 4 structures"):
        compute_statistics(graphs)
