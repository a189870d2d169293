"""Physics of EquivariantPotential: symmetries, derivatives, batching, smoothness, export.

Structures are random molecules and random triclinic periodic cells with three species. After
each transformation the graph is rebuilt from the transformed ``ase.Atoms``, so that the
checks cover the neighbour list and the lattice shifts too.
"""

from __future__ import annotations


import ase
import numpy as np
import pytest
import torch
from e3nn import o3
from jsonargparse import ArgumentParser
from torch_geometric.data import Batch

from equimol.data.graph import atoms_to_graph
from equimol.data.statistics import DatasetStatistics
from equimol.models.equivariant import EquivariantPotential

CUTOFF = 3.0
SPECIES = ["H", "C", "O"]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
DTYPES = [torch.float32, torch.float64]


def random_molecule(rng: np.random.Generator, num_atoms: int = 7) -> ase.Atoms:
    return ase.Atoms(
        rng.choice(SPECIES, num_atoms),
        positions=rng.uniform(0.0, 2.5, (num_atoms, 3)),
    )


def random_cell(rng: np.random.Generator, num_atoms: int = 5) -> ase.Atoms:
    """A triclinic cell of about 3.5 Å, smaller than twice the cutoff (periodic images matter)."""
    cell = 3.5 * np.eye(3) + rng.normal(0.0, 0.4, (3, 3))
    return ase.Atoms(
        rng.choice(SPECIES, num_atoms),
        scaled_positions=rng.uniform(0.0, 1.0, (num_atoms, 3)),
        cell=cell,
        pbc=True,
    )


STRUCTURES = {"molecule": random_molecule, "periodic": random_cell}


def make_model(dtype: torch.dtype, **kwargs) -> EquivariantPotential:
    torch.manual_seed(1)
    # with NequIP's species self-connection, a two-layer radial MLP and many-body products, so
    # that every check below covers them (the other test modules use the defaults)
    options = dict(cutoff=CUTOFF, l_max=2, channels=4, num_layers=2, radial_hidden=[8, 8], avg_num_neighbors=8.0,
                   self_connection=True, correlation=2)
    options.update(kwargs)
    model = EquivariantPotential(SPECIES, **options).to(dtype)
    with torch.no_grad():  # scales and shifts away from the trivial values
        model.network.scale_shift.set_values(scales=[1.5, 0.7, 1.1], shifts=[-0.3, 0.2, 0.5])
    return model


@pytest.fixture(scope="module")
def models() -> dict[torch.dtype, EquivariantPotential]:
    return {dtype: make_model(dtype) for dtype in DTYPES}


def predict(model, atoms: ase.Atoms, dtype: torch.dtype, **kwargs) -> dict[str, torch.Tensor]:
    out = model(atoms_to_graph(atoms, CUTOFF, dtype=dtype), **kwargs)
    return {key: value.detach() for key, value in out.items()}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """|actual - expected| <= rtol * max|expected| (relative to the size of the quantity)."""
    scale = expected.abs().max().item()
    assert scale > 0
    error = (actual - expected).abs().max().item()
    assert error <= rtol * scale, f"relative error {error / scale:.2e} > {rtol:.0e}"


# ---- symmetries -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", STRUCTURES)
@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "rotoreflection"])
def test_energy_is_invariant_and_forces_equivariant_under_random_rotation(models, kind, dtype, reflect, rng):
    model = models[dtype]
    atoms = STRUCTURES[kind](rng)
    rotation = o3.rand_matrix(dtype=torch.float64).numpy()
    if reflect:
        rotation = -rotation
    before = predict(model, atoms, dtype)
    moved = atoms.copy()
    moved.set_cell(atoms.cell[:] @ rotation.T)
    moved.positions = atoms.positions @ rotation.T
    after = predict(model, moved, dtype)
    assert_close(after["energy"], before["energy"], TOLERANCE[dtype])
    assert_close(after["forces"], before["forces"] @ torch.tensor(rotation.T, dtype=dtype), TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", STRUCTURES)
def test_energy_is_invariant_under_translation(models, kind, dtype, rng):
    model = models[dtype]
    atoms = STRUCTURES[kind](rng)
    before = predict(model, atoms, dtype)
    moved = atoms.copy()
    moved.translate(rng.normal(0.0, 3.0, 3))
    if kind == "periodic":
        moved.wrap()  # atoms leave the cell: the lattice shifts change, the energy must not
    after = predict(model, moved, dtype)
    assert_close(after["energy"], before["energy"], TOLERANCE[dtype])
    assert_close(after["forces"], before["forces"], TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", STRUCTURES)
def test_energy_is_invariant_under_permutation(models, kind, dtype, rng):
    model = models[dtype]
    atoms = STRUCTURES[kind](rng)
    order = rng.permutation(len(atoms))
    before = predict(model, atoms, dtype)
    after = predict(model, atoms[order], dtype)
    assert_close(after["energy"], before["energy"], TOLERANCE[dtype])
    assert_close(after["forces"], before["forces"][order], TOLERANCE[dtype])


def test_parity_model_gives_mirror_images_equal_energies_and_so3_model_does_not(rng):
    """A chiral structure and its mirror image: equal for parity=True, distinguished for parity=False.

    Telling mirror images apart needs a triple product of three directions, hence three layers.
    """
    atoms = random_molecule(rng, num_atoms=6)
    mirror = atoms.copy()
    mirror.positions[:, 0] *= -1
    energies = {}
    for parity in (True, False):
        model = make_model(torch.float64, parity=parity, num_layers=3, l_max=1)
        energies[parity] = [predict(model, a, torch.float64)["energy"].item() for a in (atoms, mirror)]
    assert energies[True][0] == pytest.approx(energies[True][1], rel=1e-9)
    assert abs(energies[False][0] - energies[False][1]) > 1e-6 * abs(energies[False][0])


# ---- derivatives ----------------------------------------------------------------------------


def energy_at(model, graph, pos: torch.Tensor, cell: torch.Tensor) -> float:
    with torch.no_grad():
        return model.energy(graph, pos, cell)["energy"].sum().item()


@pytest.mark.parametrize("kind", STRUCTURES)
def test_forces_match_finite_differences(models, kind, rng):
    model = models[torch.float64]
    graph = atoms_to_graph(STRUCTURES[kind](rng), CUTOFF, dtype=torch.float64)
    forces = model(graph)["forces"].detach()
    h = 1e-5
    cell = graph.cell.reshape(-1, 3, 3)
    for atom, axis in [(0, 0), (1, 2), (len(graph.pos) - 1, 1)]:
        step = torch.zeros_like(graph.pos)
        step[atom, axis] = h
        plus = energy_at(model, graph, graph.pos + step, cell)
        minus = energy_at(model, graph, graph.pos - step, cell)
        derivative = (plus - minus) / (2 * h)
        assert -derivative == pytest.approx(forces[atom, axis].item(), rel=1e-6, abs=1e-8)


def test_stress_matches_finite_differences_of_strain(models, rng):
    model = models[torch.float64]
    graph = atoms_to_graph(random_cell(rng), CUTOFF, dtype=torch.float64)
    stress = model(graph, compute_stress=True)["stress"].detach()[0]
    volume = abs(np.linalg.det(graph.cell[0].numpy()))
    h = 1e-5
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (1, 2), (0, 2)]:
        strain = torch.zeros(3, 3, dtype=torch.float64)
        strain[a, b] += h / 2
        strain[b, a] += h / 2
        energies = []
        for sign in (1.0, -1.0):
            deformation = torch.eye(3, dtype=torch.float64) + sign * strain
            energies.append(energy_at(model, graph, graph.pos @ deformation, graph.cell @ deformation))
        derivative = (energies[0] - energies[1]) / (2 * h) / volume
        assert derivative == pytest.approx(stress[a, b].item(), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(stress, stress.T)


# ---- batching -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_of_structures_equals_each_alone(models, dtype, rng):
    model = models[dtype]
    structures = [random_molecule(rng), random_cell(rng), random_cell(rng, num_atoms=3)]
    graphs = [atoms_to_graph(atoms, CUTOFF, dtype=dtype) for atoms in structures]
    together = model(Batch.from_data_list(graphs), compute_stress=True)
    alone = [model(graph, compute_stress=True) for graph in graphs]
    assert together["energy"].shape == (3,)
    assert together["per_atom_energy"].shape == (sum(len(a) for a in structures),)
    for key in ("energy", "forces", "stress"):
        expected = torch.cat([out[key].detach() for out in alone])
        assert_close(together[key].detach(), expected, TOLERANCE[dtype])


# ---- cutoff ---------------------------------------------------------------------------------


def test_energy_and_forces_are_continuous_as_a_pair_crosses_the_cutoff(models):
    """C-O bonded; H moves away so that only the pair H-C crosses the cutoff."""
    model = models[torch.float64]
    distance_at_cutoff = float(np.sqrt(CUTOFF**2 - 0.2**2 - 0.3**2))

    def at(x: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        atoms = ase.Atoms("COH", positions=[[0, 0, 0], [1.2, 0.1, 0], [x, -0.2, 0.3]])
        graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
        return graph, {k: v.detach() for k, v in model(graph).items()}

    delta = 1e-4
    graph_in, inside = at(distance_at_cutoff - delta)
    graph_out, outside = at(distance_at_cutoff + delta)
    assert graph_in.edge_index.shape[1] == graph_out.edge_index.shape[1] + 2  # H-C, both directions
    # Across the cutoff the energy changes by the work of the forces (trapezoid rule), no jump ...
    step = graph_out.pos - graph_in.pos
    work = (0.5 * (inside["forces"] + outside["forces"]) * step).sum().item()
    assert outside["energy"].item() == pytest.approx(inside["energy"].item() - work, abs=1e-11)
    # ... and just inside, dropping the H-C pair from the graph changes neither energy nor forces.
    j, i = graph_in.edge_index
    far_pair = (graph_in.pos[j] - graph_in.pos[i]).norm(dim=1) > CUTOFF - 2 * delta
    graph_in.edge_index = graph_in.edge_index[:, ~far_pair]
    graph_in.edge_shift = graph_in.edge_shift[~far_pair]
    assert far_pair.sum() == 2
    without_pair = model(graph_in)
    assert without_pair["energy"].item() == pytest.approx(inside["energy"].item(), abs=1e-10)
    torch.testing.assert_close(without_pair["forces"].detach(), inside["forces"], atol=1e-8, rtol=0)
    # the pair does matter further inside
    _, nearer = at(distance_at_cutoff - 0.5)
    assert abs(nearer["energy"].item() - outside["energy"].item()) > 1e-4


def test_edges_beyond_the_cutoff_contribute_nothing(models, rng):
    model = models[torch.float64]
    atoms = random_cell(rng)
    exact = model(atoms_to_graph(atoms, CUTOFF, dtype=torch.float64))
    longer = atoms_to_graph(atoms, CUTOFF + 1.0, dtype=torch.float64)
    wide = model(longer)
    assert longer.edge_index.shape[1] > atoms_to_graph(atoms, CUTOFF).edge_index.shape[1]
    torch.testing.assert_close(wide["energy"], exact["energy"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wide["forces"], exact["forces"], rtol=1e-12, atol=1e-12)


# ---- species, statistics, dtypes ------------------------------------------------------------


def test_unknown_species_is_an_error_naming_it(models):
    atoms = ase.Atoms("CHN", positions=[[0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    with pytest.raises(ValueError, match=r"\[7\].*\[1, 6, 8\]"):
        models[torch.float32](atoms_to_graph(atoms, CUTOFF))


def test_species_may_be_symbols_or_atomic_numbers():
    assert EquivariantPotential(["H", "C", "O"], channels=2).atomic_numbers == (1, 6, 8)
    assert EquivariantPotential([1, 6, "O"], channels=2).atomic_numbers == (1, 6, 8)
    with pytest.raises(ValueError, match="Xx"):
        EquivariantPotential(["H", "Xx"])


@pytest.mark.parametrize("correlation", [1, 3])
def test_isolated_atom_energy_is_reference_plus_mean_after_set_statistics(correlation):
    # products of messages vanish without neighbours; a species self-connection would not
    model = make_model(torch.float64, self_connection=False, correlation=correlation)
    statistics = DatasetStatistics(
        species=[1, 6, 8],
        reference_energies={1: -13.6, 6: -1030.0, 8: -2040.0},
        energy_per_atom_mean=0.25,
        energy_per_atom_std=0.1,
        force_rms=2.0,
        avg_num_neighbors=11.0,
    )
    model.set_statistics(statistics)
    for symbol, reference in [("H", -13.6), ("C", -1030.0), ("O", -2040.0)]:
        graph = atoms_to_graph(ase.Atoms(symbol), CUTOFF, dtype=torch.float64)
        assert model(graph)["energy"].item() == pytest.approx(reference + 0.25, rel=1e-12)
    assert model.network.scale_shift.scales.tolist() == [2.0, 2.0, 2.0]
    for layer in model.network.layers:
        assert layer.conv.avg_num_neighbors.item() == 11.0
    # set after construction, the normalisation travels with the weights
    copy = make_model(torch.float64, self_connection=False, correlation=correlation)
    copy.load_state_dict(model.state_dict())
    assert copy.network.layers[0].conv.avg_num_neighbors.item() == 11.0


def test_statistics_with_an_element_the_model_lacks_are_an_error():
    model = make_model(torch.float64)
    with pytest.raises(ValueError, match=r"atomic numbers \[7\].*\[1, 6, 8\]"):
        model.set_statistics(DatasetStatistics(species=[1, 7], reference_energies={1: -13.6, 7: -1500.0}))
    with pytest.raises(TypeError, match="DatasetStatistics"):
        model.set_statistics({"species": [1, 6]})


def test_model_builds_from_a_config():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(EquivariantPotential, "model")
    config = parser.parse_string(
        "model: {species: [H, 6, O], channels: 2, num_layers: 1, reference_energies: {H: -13.6, 6: -1030.0}}"
    )
    model = parser.instantiate_classes(config).model
    assert model.atomic_numbers == (1, 6, 8)
    assert model.network.scale_shift.shifts.tolist() == pytest.approx([-13.6, -1030.0, 0.0])
    with pytest.raises(Exception, match="chanels"):
        parser.parse_string("model: {species: [H], chanels: 2}")


def test_energy_std_sets_the_scale_when_there_are_no_forces():
    model = make_model(torch.float64)
    statistics = DatasetStatistics(species=[1], energy_per_atom_mean=0.0, energy_per_atom_std=0.3, force_rms=None)
    model.set_statistics(statistics)
    assert model.network.scale_shift.scales.tolist() == pytest.approx([0.3, 0.3, 0.3], rel=1e-15)


def test_float32_and_float64_models_agree(models, rng):
    atoms = random_cell(rng)
    single = predict(models[torch.float32], atoms, torch.float32)
    double = predict(models[torch.float64], atoms, torch.float64)
    assert single["energy"].dtype == torch.float32 and double["forces"].dtype == torch.float64
    assert_close(single["energy"].double(), double["energy"], 1e-5)
    assert_close(single["forces"].double(), double["forces"], 1e-4)


# ---- compile and export ---------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_calculator_matches_eager_and_keeps_the_physics(rng):
    """``EquimolCalculator(compile=True)`` (energies and forces as one traced graph, compiled with
    dynamic shapes): the same energies, forces and stress as eager on a periodic cell and on a
    molecule of another size, forces
    equal to central finite differences of its own energy, and rotation-equivariant forces.

    Marked slow: compiling takes 20-40 s of CPU time.
    """
    from scipy.spatial.transform import Rotation

    from equimol.calculator import EquimolCalculator

    model = make_model(torch.float64, l_max=1, channels=4, num_layers=2).eval()
    eager = EquimolCalculator(model)
    compiled = EquimolCalculator(model, compile=True)
    assert eager.backend.model.traced is None and compiled.backend.model.traced is not None
    for atoms in (random_cell(rng, 6), random_molecule(rng, 7)):
        properties = ["energy", "forces", "stress"] if atoms.pbc.all() else ["energy", "forces"]
        eager.calculate(atoms, properties)
        compiled.calculate(atoms, properties)
        assert abs(compiled.results["energy"] - eager.results["energy"]) < 1e-9
        assert np.abs(compiled.results["forces"] - eager.results["forces"]).max() < 1e-9
        if atoms.pbc.all():
            assert np.abs(compiled.results["stress"] - eager.results["stress"]).max() < 1e-9
    atoms = random_molecule(rng, 7)
    compiled.calculate(atoms, ["energy", "forces"])
    forces, step = compiled.results["forces"], 1e-4
    for atom, axis in ((0, 0), (3, 1), (6, 2)):
        energies = []
        for sign in (1.0, -1.0):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * step
            compiled.calculate(moved, ["energy"])
            energies.append(compiled.results["energy"])
        assert abs(-(energies[0] - energies[1]) / (2 * step) - forces[atom, axis]) < 1e-6
    rotation = Rotation.random(random_state=1).as_matrix()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    compiled.calculate(rotated, ["energy", "forces"])
    assert np.abs(compiled.results["forces"] - forces @ rotation.T).max() < 1e-9



@pytest.mark.parametrize("num_layers", [2, 3])
def test_last_layer_computes_only_the_scalars_the_readout_reads(num_layers):
    """The last block outputs ``channels x 0e`` only (the readout reads nothing else) and adds
    the scalar part of its input as the residual."""
    torch.manual_seed(0)
    model = EquivariantPotential(SPECIES, cutoff=CUTOFF, l_max=1, channels=4, num_layers=num_layers).double()
    last = model.network.layers[-1]
    assert last.irreps_out == o3.Irreps("4x0e")
    assert model.network.readout.irreps_in == o3.Irreps("4x0e")
    assert last.residual and not last.residual_is_identity
    irreps_in = last.irreps_in
    x = irreps_in.randn(6, -1, dtype=torch.float64)
    edge_index = torch.tensor([[0, 1, 2, 3, 4, 5], [1, 2, 3, 4, 5, 0]])
    edge_vec = torch.randn(6, 3, dtype=torch.float64)
    edge_attr = model.network.edge_embedding(edge_vec)
    radial = model.network.radial(edge_vec.norm(dim=1))
    assert irreps_in[0] == (4, o3.Irrep("0e"))
    scalars = x[:, irreps_in.slices()[0]]
    without = last.self_interaction(last.gate(last.conv(x, edge_attr, radial, edge_index)))
    assert torch.allclose(last(x, edge_attr, radial, edge_index), without + scalars, atol=1e-12)
