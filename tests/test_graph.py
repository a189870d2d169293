"""The radius graph of equimol.data.graph against ASE's neighbour list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Batch

from equimol.data import IsolatedAtomError, atoms_to_graph, edge_vectors, radius_graph

CUTOFF = 4.0


def _random_cell(rng: np.random.Generator, min_height: float) -> np.ndarray:
    """A random triclinic cell (rows) whose three heights are at least ``min_height`` Å."""
    while True:
        cell = rng.normal(scale=3.0, size=(3, 3)) + 4.0 * np.eye(3)
        volume = abs(np.linalg.det(cell))
        heights = [volume / np.linalg.norm(np.cross(cell[a], cell[b])) for a, b in ((1, 2), (2, 0), (0, 1))]
        if min(heights) > min_height:
            return cell


def _edges_by_key(atoms: Atoms, cutoff: float) -> dict[tuple, np.ndarray]:
    """equimol's edges as {(i, j, S): edge vector} (float64)."""
    graph = atoms_to_graph(atoms, cutoff, dtype=torch.float64, on_isolated="ignore")
    vectors = edge_vectors(graph.pos, graph.edge_index, graph.edge_shift, graph.cell).numpy()
    j, i = graph.edge_index.numpy()
    shifts = graph.edge_shift.numpy()
    assert np.array_equal(shifts, np.round(shifts)), "lattice shifts must be integers"
    keys = zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist()), strict=True)
    edges = dict(zip(keys, vectors, strict=True))
    assert len(edges) == len(i), "duplicate edges"
    return edges


def _ase_edges_by_key(atoms: Atoms, cutoff: float) -> dict[tuple, np.ndarray]:
    i, j, shifts, vectors = neighbor_list("ijSD", atoms, cutoff)
    return dict(
        zip(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True), vectors, strict=True)
    )


def _assert_same_graph_as_ase(atoms: Atoms, cutoff: float = CUTOFF) -> dict[tuple, np.ndarray]:
    ours, reference = _edges_by_key(atoms, cutoff), _ase_edges_by_key(atoms, cutoff)
    assert len(reference) > 0
    assert set(ours) == set(reference), (
        f"{len(set(ours) - set(reference))} extra and {len(set(reference) - set(ours))} missing edges"
    )
    keys = sorted(reference)
    np.testing.assert_allclose(
        np.array([ours[k] for k in keys]), np.array([reference[k] for k in keys]), atol=1e-10, rtol=0
    )
    return ours


@pytest.mark.parametrize("seed", range(5))
def test_edges_and_vectors_match_ase_for_random_triclinic_cells(seed):
    rng = np.random.default_rng(seed)
    cell = _random_cell(rng, min_height=2.0)
    # positions partly outside the cell: shifts must refer to the positions as given
    fractional = rng.uniform(-0.5, 1.5, size=(10, 3))
    atoms = Atoms(
        numbers=rng.integers(1, 30, size=10), scaled_positions=fractional % 1.0, cell=cell, pbc=True
    )
    atoms.positions = fractional @ cell
    _assert_same_graph_as_ase(atoms)


def test_edges_and_vectors_match_ase_for_molecule():
    atoms = molecule("CH3CH2OH")
    _assert_same_graph_as_ase(atoms, cutoff=2.5)
    graph = atoms_to_graph(atoms, 2.5)
    assert torch.all(graph.edge_shift == 0)


@pytest.mark.parametrize(
    "pbc",
    [(True, True, False), (True, False, False), (False, True, True)],
    ids=["slab", "wire", "yz-periodic"],
)
def test_edges_and_vectors_match_ase_for_mixed_periodicity(pbc, rng):
    cell = _random_cell(rng, min_height=2.5)
    atoms = Atoms("Cu6", scaled_positions=rng.random((6, 3)), cell=cell, pbc=pbc)
    edges = _assert_same_graph_as_ase(atoms)
    shifts = np.array([key[2] for key in edges])
    for axis in range(3):
        if not pbc[axis]:
            assert np.all(shifts[:, axis] == 0), f"shift along non-periodic axis {axis}"
        else:
            assert np.any(shifts[:, axis] != 0), f"no image along periodic axis {axis}"


def test_slab_with_zero_vacuum_vector_matches_ase(rng):
    atoms = Atoms(
        "Cu4",
        positions=rng.random((4, 3)) * 3.0,
        cell=[[3.0, 0, 0], [1.0, 3.0, 0], [0, 0, 0]],
        pbc=[True, True, False],
    )
    _assert_same_graph_as_ase(atoms)


def test_cell_smaller_than_cutoff_has_several_images_of_a_neighbour_and_of_itself(rng):
    cell = _random_cell(rng, min_height=1.2) * 0.6
    atoms = Atoms("CuAg", scaled_positions=rng.random((2, 3)), cell=cell, pbc=True)
    edges = _assert_same_graph_as_ase(atoms)
    self_images = [key for key in edges if key[0] == key[1]]
    assert len(self_images) >= 2, "an atom's own periodic images must be neighbours"
    assert all(any(s != 0 for s in key[2]) for key in self_images), "zero-distance self pair"
    images_of_other = [key for key in edges if (key[0], key[1]) == (0, 1)]
    assert len(images_of_other) >= 2


def test_single_atom_in_small_cell_sees_only_its_images():
    atoms = Atoms("Cu", positions=[[0.3, 0.2, 0.1]], cell=np.eye(3) * 2.5, pbc=True)
    edges = _assert_same_graph_as_ase(atoms)
    assert len(edges) == 6 + 12  # 6 images at 2.5 Å, 12 at 3.54 Å, none at 4.33 Å


def test_radius_graph_orders_rows_as_neighbour_then_centre(rng):
    positions = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [5.0, 0.0, 0.0]])
    edge_index, shifts = radius_graph(positions, np.zeros((3, 3)), False, 1.5)
    assert sorted(map(tuple, edge_index.T.tolist())) == [(0, 1), (1, 0)]
    assert shifts.shape == (2, 3) and edge_index.dtype == np.int64


def test_nan_position_raises_naming_the_atoms():
    atoms = bulk("Cu", cubic=True)
    positions = atoms.get_positions()
    positions[1, 0] = np.nan
    positions[3, 2] = np.inf
    atoms.set_positions(positions)
    with pytest.raises(ValueError, match=r"my.xyz, frame 7.*atom indices \[1, 3\]"):
        atoms_to_graph(atoms, CUTOFF, source="my.xyz, frame 7")


def test_isolated_atom_raises_and_can_be_kept():
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [20.0, 0, 0]])
    with pytest.raises(IsolatedAtomError, match=r"atoms \[2\]"):
        atoms_to_graph(atoms, 3.0)
    graph = atoms_to_graph(atoms, 3.0, on_isolated="ignore")
    assert graph.num_nodes == 3
    assert 2 not in graph.edge_index.flatten().tolist()
    assert graph.edge_index.shape[1] == 2


def test_unknown_on_isolated_policy_raises():
    with pytest.raises(ValueError, match="on_isolated"):
        atoms_to_graph(molecule("H2O"), 3.0, on_isolated="warn")


def test_empty_structure_raises():
    with pytest.raises(ValueError, match="no atoms"):
        atoms_to_graph(Atoms(), CUTOFF)


@pytest.mark.parametrize("cutoff", [0.0, -1.0, float("nan")])
def test_non_positive_cutoff_raises(cutoff):
    with pytest.raises(ValueError, match="cutoff"):
        atoms_to_graph(molecule("H2O"), cutoff)


def test_periodic_axis_with_zero_cell_vector_raises():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[3.0, 3.0, 0.0], pbc=True)
    with pytest.raises(ValueError, match="axis 2"):
        atoms_to_graph(atoms, CUTOFF)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fields_and_labels_have_documented_shapes(dtype, rng):
    atoms = bulk("Cu", cubic=True).repeat((2, 1, 1))
    n = len(atoms)
    forces = rng.normal(size=(n, 3))
    voigt = rng.normal(size=6)
    graph = atoms_to_graph(atoms, CUTOFF, {"energy": -3.5, "forces": forces, "stress": voigt}, dtype=dtype)
    assert graph.pos.shape == (n, 3) and graph.pos.dtype == dtype
    assert graph.z.shape == (n,) and graph.z.dtype == torch.int64
    assert graph.cell.shape == (1, 3, 3) and graph.cell.dtype == dtype
    assert graph.pbc.shape == (1, 3) and graph.pbc.dtype == torch.bool
    num_edges = graph.edge_index.shape[1]
    assert graph.edge_index.shape == (2, num_edges) and graph.edge_index.dtype == torch.int64
    assert graph.edge_shift.shape == (num_edges, 3) and graph.edge_shift.dtype == dtype
    assert graph.energy.shape == (1,) and graph.energy.item() == pytest.approx(-3.5)
    assert graph.forces.shape == (n, 3)
    torch.testing.assert_close(graph.forces, torch.tensor(forces, dtype=dtype))
    assert graph.stress.shape == (1, 3, 3)
    torch.testing.assert_close(graph.stress[0], torch.tensor(voigt_6_to_full_3x3_stress(voigt), dtype=dtype))
    full = atoms_to_graph(atoms, CUTOFF, {"stress": voigt_6_to_full_3x3_stress(voigt)}, dtype=dtype)
    torch.testing.assert_close(full.stress, graph.stress)


@pytest.mark.parametrize(
    "labels, message",
    [
        ({"energy": [1.0, 2.0]}, "energy must be one number"),
        ({"forces": np.zeros((3, 3))}, r"forces must have shape \(4, 3\)"),
        ({"stress": np.zeros(5)}, "stress must be"),
        ({"energy": float("nan")}, "label .energy. contains NaN"),
        ({"charges": np.zeros(4)}, "unknown label"),
    ],
)
def test_malformed_label_raises_naming_the_source(labels, message):
    with pytest.raises(ValueError, match=f"frame 3: {message}"):
        atoms_to_graph(bulk("Cu", cubic=True), CUTOFF, labels, source="frame 3")


def test_batched_edge_vectors_equal_those_of_each_graph(rng):
    first = Atoms("Cu5", scaled_positions=rng.random((5, 3)), cell=_random_cell(rng, 2.0), pbc=True)
    second = Atoms(
        "Ag4", scaled_positions=rng.random((4, 3)), cell=_random_cell(rng, 2.0), pbc=[True, False, True]
    )
    graphs = [atoms_to_graph(a, CUTOFF, dtype=torch.float64, on_isolated="ignore") for a in (first, second)]
    batch = Batch.from_data_list(graphs)
    assert batch.cell.shape == (2, 3, 3)
    batched = edge_vectors(batch.pos, batch.edge_index, batch.edge_shift, batch.cell, batch=batch.batch)
    alone = torch.cat([edge_vectors(g.pos, g.edge_index, g.edge_shift, g.cell) for g in graphs])
    assert graphs[0].edge_index.shape[1] > 0 and graphs[1].edge_index.shape[1] > 0
    torch.testing.assert_close(batched, alone, atol=1e-12, rtol=0)


def test_edge_vectors_carry_gradients_to_positions_and_cell(rng):
    atoms = Atoms("Cu3", scaled_positions=rng.random((3, 3)), cell=_random_cell(rng, 2.0), pbc=True)
    graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
    pos = graph.pos.clone().requires_grad_(True)
    cell = graph.cell.clone().requires_grad_(True)
    vectors = edge_vectors(pos, graph.edge_index, graph.edge_shift, cell)
    weights = torch.randn_like(vectors)
    pos_grad, cell_grad = torch.autograd.grad((weights * vectors).sum(), (pos, cell))
    # d/dcell of sum_e w_e . (S_e @ cell) is sum_e S_e^T w_e; d/dpos is scatter(+w to j, -w to i)
    expected_cell = torch.einsum("ek,el->kl", graph.edge_shift, weights)
    torch.testing.assert_close(cell_grad[0], expected_cell)
    expected_pos = torch.zeros_like(pos_grad)
    expected_pos.index_add_(0, graph.edge_index[0], weights)
    expected_pos.index_add_(0, graph.edge_index[1], -weights)
    torch.testing.assert_close(pos_grad, expected_pos)
