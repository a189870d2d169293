"""Symmetry transforms move positions, forces, stress and cell together and keep the graph valid.

The labels of a transformed graph are checked against the analytic labels (ASE's EMT and
Lennard-Jones calculators) of the same structure transformed independently in NumPy.
"""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from torch_geometric.data import Batch
from torch_geometric.transforms import Compose

from equimol.data.geometry import random_rotation
from equimol.data.graph import atoms_to_graph, edge_vectors
from equimol.data.transforms import (
    Permute,
    RandomPermutation,
    RandomReflection,
    RandomRotation,
    RandomTranslation,
    Reflect,
    Rotate,
    Translate,
    random_reflection_matrix,
    reflection_matrix,
    rotation_about_axis,
)

CUTOFF = 4.0
TOL = 1e-8


def _labels(atoms: ase.Atoms, stress: bool = True) -> dict[str, np.ndarray]:
    labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if stress:
        labels["stress"] = atoms.get_stress(voigt=False)
    return labels


@pytest.fixture
def alloy() -> ase.Atoms:
    """Periodic Cu-Au (fcc, sheared into a triclinic cell, rattled) with EMT labels."""
    rng = np.random.default_rng(7)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    shear = np.eye(3) + 0.08 * rng.normal(size=(3, 3))
    atoms.set_cell(atoms.cell[:] @ shear, scale_atoms=True)
    atoms.numbers[[1, 2]] = 79
    atoms.rattle(0.1, seed=3)
    atoms.calc = EMT()
    return atoms


@pytest.fixture
def alloy_graph(alloy: ase.Atoms):
    return atoms_to_graph(alloy, CUTOFF, _labels(alloy), dtype=torch.float64)


def _emt_labels(positions: np.ndarray, cell: np.ndarray, numbers: np.ndarray) -> dict[str, np.ndarray]:
    atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    atoms.calc = EMT()
    return _labels(atoms)


def _assert_labels_match(graph, expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(graph.energy.numpy(), [expected["energy"]], rtol=0, atol=TOL)
    np.testing.assert_allclose(graph.forces.numpy(), expected["forces"], rtol=0, atol=TOL)
    np.testing.assert_allclose(graph.stress[0].numpy(), expected["stress"], rtol=0, atol=TOL)


def _edge_set(graph) -> set[tuple[int, ...]]:
    rows = torch.cat([graph.edge_index.T, graph.edge_shift.round().long()], dim=1)
    return {tuple(row) for row in rows.tolist()}


def _vectors(graph) -> torch.Tensor:
    return edge_vectors(graph.pos, graph.edge_index, graph.edge_shift, graph.cell)


@pytest.mark.parametrize("improper", [False, True], ids=["rotation", "reflection"])
def test_labels_of_rotated_graph_equal_emt_labels_of_rotated_structure(alloy, alloy_graph, improper):
    generator = np.random.default_rng(11)
    for _ in range(3):
        matrix = (random_reflection_matrix if improper else random_rotation)(generator)
        rotated = Rotate(matrix)(alloy_graph)
        expected = _emt_labels(alloy.positions @ matrix.T, alloy.cell[:] @ matrix.T, alloy.numbers)
        _assert_labels_match(rotated, expected)
        assert abs(rotated.energy.item() - alloy_graph.energy.item()) < TOL


def test_rotated_graph_edges_equal_rebuilt_graph_and_vectors_rotate(alloy, alloy_graph):
    transform = RandomRotation(seed=5).sample()
    matrix = transform.matrix.numpy()
    rotated = transform(alloy_graph)
    moved = alloy.copy()
    moved.set_cell(alloy.cell[:] @ matrix.T)
    moved.positions = alloy.positions @ matrix.T
    rebuilt = atoms_to_graph(moved, CUTOFF, dtype=torch.float64)
    assert _edge_set(rotated) == _edge_set(rebuilt)
    torch.testing.assert_close(_vectors(rotated), _vectors(alloy_graph) @ transform.matrix.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(rotated.edge_shift, alloy_graph.edge_shift)


def test_labels_of_translated_graph_equal_emt_labels_of_translated_structure(alloy, alloy_graph):
    vector = np.array([3.3, -7.1, 12.5])
    translated = Translate(vector)(alloy_graph)
    expected = _emt_labels(alloy.positions + vector, alloy.cell[:], alloy.numbers)
    _assert_labels_match(translated, expected)
    torch.testing.assert_close(_vectors(translated), _vectors(alloy_graph), rtol=0, atol=1e-12)


def test_permuted_graph_equals_graph_of_permuted_atoms(alloy, alloy_graph):
    transform = RandomPermutation(same_species_only=False, seed=2).sample(alloy_graph)
    permutation = transform.permutation.numpy()
    assert not np.array_equal(permutation, np.arange(len(alloy)))
    permuted = transform(alloy_graph)
    permuted_atoms = alloy[permutation]
    rebuilt = atoms_to_graph(permuted_atoms, CUTOFF, dtype=torch.float64)
    assert _edge_set(permuted) == _edge_set(rebuilt)
    torch.testing.assert_close(permuted.z, rebuilt.z)
    # each edge keeps its vector: edge e joins the same two atoms, relabelled
    torch.testing.assert_close(_vectors(permuted), _vectors(alloy_graph), rtol=0, atol=1e-12)
    expected = _emt_labels(permuted_atoms.positions, alloy.cell[:], permuted_atoms.numbers)
    _assert_labels_match(permuted, expected)


def test_random_permutation_among_same_species_keeps_species_list(alloy_graph):
    sampler = RandomPermutation(seed=0)
    for _ in range(5):
        permuted = sampler(alloy_graph)
        torch.testing.assert_close(permuted.z, alloy_graph.z)
    shuffled = [RandomPermutation(same_species_only=False, seed=s)(alloy_graph).z for s in range(5)]
    assert any(not torch.equal(z, alloy_graph.z) for z in shuffled)


def test_composed_random_transforms_give_emt_labels_of_transformed_structure(alloy_graph):
    augment = Compose(
        [RandomPermutation(seed=1), RandomReflection(seed=2), RandomRotation(seed=3), RandomTranslation(4.0, seed=4)]
    )
    for _ in range(3):
        transformed = augment(alloy_graph)
        expected = _emt_labels(transformed.pos.numpy(), transformed.cell[0].numpy(), transformed.z.numpy())
        _assert_labels_match(transformed, expected)
        distances = _vectors(transformed).norm(dim=1).sort().values
        torch.testing.assert_close(distances, _vectors(alloy_graph).norm(dim=1).sort().values)


def test_transforms_return_a_copy_and_leave_the_input_unchanged(alloy_graph):
    before = {key: value.clone() for key, value in alloy_graph.items()}
    for transform in (RandomRotation(seed=0), RandomReflection(seed=0), RandomPermutation(False, seed=0),
                      RandomTranslation(2.0, seed=0)):
        out = transform(alloy_graph)
        assert out is not alloy_graph
        out.forward_called = True  # a new attribute on the copy must not reach the input
    for key, value in alloy_graph.items():
        assert torch.equal(value, before[key]), key
    assert "forward_called" not in alloy_graph


def test_random_transforms_are_reproducible_from_their_seed(alloy_graph):
    for make in (lambda s: RandomRotation(seed=s), lambda s: RandomReflection(planar=True, seed=s),
                 lambda s: RandomPermutation(False, seed=s), lambda s: RandomTranslation(1.0, seed=s)):
        first, second, other = make(3), make(3), make(4)
        a, b, c = first(alloy_graph).pos, second(alloy_graph).pos, other(alloy_graph).pos
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_random_rotations_are_uniform_over_so3():
    generator = np.random.default_rng(0)
    matrices = np.stack([random_rotation(generator) for _ in range(4000)])
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-12)
    np.testing.assert_allclose(matrices @ matrices.transpose(0, 2, 1), np.broadcast_to(np.eye(3), matrices.shape), atol=1e-12)
    # Haar measure: E[R] = 0 and E[R_ij^2] = 1/3 (standard error of each mean ~ 0.01)
    assert np.abs(matrices.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose((matrices**2).mean(axis=0), 1.0 / 3.0, atol=0.03)
    # the rotation angle has density (1 - cos t) / pi on [0, pi]: E[cos t] = -1/2
    cos_angle = (np.trace(matrices, axis1=1, axis2=2) - 1.0) / 2.0
    assert abs(cos_angle.mean() + 0.5) < 0.03


def test_random_reflections_have_determinant_minus_one_and_zero_mean():
    generator = np.random.default_rng(1)
    matrices = np.stack([random_reflection_matrix(generator) for _ in range(4000)])
    np.testing.assert_allclose(np.linalg.det(matrices), -1.0, atol=1e-12)
    assert np.abs(matrices.mean(axis=0)).max() < 0.05
    assert RandomReflection(seed=0).sample().determinant == pytest.approx(-1.0)


def test_reflect_is_a_householder_mirror_with_determinant_minus_one():
    normal = np.array([1.0, 2.0, -0.5])
    matrix = reflection_matrix(normal)
    assert np.linalg.det(matrix) == pytest.approx(-1.0)
    np.testing.assert_allclose(matrix @ normal, -normal, atol=1e-12)
    in_plane = np.cross(normal, [0.0, 0.0, 1.0])
    np.testing.assert_allclose(matrix @ in_plane, in_plane, atol=1e-12)
    assert Reflect(normal).determinant == pytest.approx(-1.0)


def test_quarter_turn_about_z_maps_x_to_y():
    np.testing.assert_allclose(rotation_about_axis([0, 0, 2], np.pi / 2) @ [1.0, 0.0, 0.0], [0, 1, 0], atol=1e-15)


@pytest.fixture
def planar_cluster() -> ase.Atoms:
    """A 2D Lennard-Jones cluster in the xy plane (z = 0), with its energy and forces."""
    rng = np.random.default_rng(4)
    grid = np.array([[i, j, 0.0] for i in range(3) for j in range(3)], dtype=float) * 1.1
    grid[:, :2] += 0.05 * rng.normal(size=(len(grid), 2))
    atoms = ase.Atoms("Ar9", positions=grid)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=3.0, smooth=True)
    return atoms


def test_planar_rotations_and_reflections_keep_z_zero_and_match_lj_labels(planar_cluster):
    graph = atoms_to_graph(planar_cluster, 3.0, _labels(planar_cluster, stress=False), dtype=torch.float64)
    for transform in (RandomRotation(planar=True, seed=0).sample(), RandomReflection(planar=True, seed=0).sample(),
                      Rotate(rotation_about_axis([0, 0, 1], np.pi / 2))):
        moved = transform(graph)
        assert torch.count_nonzero(moved.pos[:, 2]) == 0
        assert torch.count_nonzero(moved.forces[:, 2]) == 0
        atoms = planar_cluster.copy()
        atoms.positions = moved.pos.numpy()
        atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=3.0, smooth=True)
        assert atoms.get_potential_energy() == pytest.approx(graph.energy.item(), abs=TOL)
        np.testing.assert_allclose(moved.forces.numpy(), atoms.get_forces(), rtol=0, atol=TOL)
    assert RandomTranslation(3.0, planar=True, seed=0)(graph).pos[:, 2].abs().max() == 0


def test_float32_graph_is_rotated_in_float32(alloy):
    graph = atoms_to_graph(alloy, CUTOFF, _labels(alloy), dtype=torch.float32)
    rotated = RandomRotation(seed=0)(graph)
    assert rotated.pos.dtype == rotated.forces.dtype == rotated.cell.dtype == rotated.stress.dtype == torch.float32


def test_permute_rejects_a_wrong_permutation(alloy_graph):
    with pytest.raises(ValueError, match="length 3 but the structure has 4 atoms"):
        Permute([0, 2, 1])(alloy_graph)
    for bad in ([0, 0, 1, 2], [0, 1, 2, 4], [0.0, 1.0, 2.0, 3.0], []):
        with pytest.raises(ValueError, match="Permute: permutation must be integers"):
            Permute(bad)


def test_transforms_reject_a_batch(alloy_graph):
    batch = Batch.from_data_list([alloy_graph, alloy_graph])
    for transform in (Rotate(np.eye(3)), Translate([0, 0, 1]), Permute(np.arange(4)), RandomRotation(seed=0)):
        with pytest.raises(ValueError, match="single structure"):
            transform(batch)


def test_rotate_rejects_a_matrix_that_is_not_orthogonal():
    with pytest.raises(ValueError, match="not orthogonal"):
        Rotate(np.diag([1.0, 1.0, 1.1]))
    with pytest.raises(ValueError, match="3x3"):
        Rotate(np.eye(2))


class _Repeated(torch.utils.data.Dataset):
    def __init__(self, graph, transform, length: int) -> None:
        self.graph, self.transform, self.length = graph, transform, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.transform(self.graph).pos


def test_dataloader_workers_draw_different_random_rotations(alloy_graph):
    def epoch(loader_seed: int) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            _Repeated(alloy_graph, RandomRotation(seed=0), length=4), batch_size=1, num_workers=2,
            collate_fn=lambda items: items[0], generator=torch.Generator().manual_seed(loader_seed),
        )
        return list(loader)  # items 0, 2 from worker 0 and 1, 3 from worker 1

    positions = epoch(0)
    assert not torch.allclose(positions[0], positions[1])
    assert all(torch.equal(a, b) for a, b in zip(positions, epoch(0)))  # same seeds, same draws


def test_permute_moves_every_per_atom_field_and_keeps_structure_fields(alloy_graph):
    graph = alloy_graph.clone()
    graph.per_atom_energy = torch.arange(4, dtype=torch.float64)
    graph.charges = torch.arange(4, dtype=torch.float64)[:, None].repeat(1, 2)
    permutation = np.array([3, 0, 2, 1])
    permuted = Permute(permutation)(graph)
    for key in ("pos", "z", "forces", "per_atom_energy", "charges"):
        torch.testing.assert_close(permuted[key], graph[key][permutation])
    for key in ("cell", "pbc", "energy", "stress", "edge_shift"):
        torch.testing.assert_close(permuted[key], graph[key])
