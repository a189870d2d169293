"""Baseline potentials: autograd forces, the symmetries each one has (or lacks), accuracy."""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from equimol.data.graph import atoms_to_graph
from equimol.data.statistics import DatasetStatistics
from equimol.models.feature_mlp import FeatureMLP
from equimol.models.linear import LinearModel
from equimol.models.pair import PairNN

SPECIES = [6, 1, 8, 1, 7]
GRAPH_CUTOFF = 4.0
ACSF_KWARGS = {"cutoff": 3.5, "species": [1, 6, 7, 8], "angular_etas": [0.1], "zetas": [1.0, 2.0]}


def random_positions(rng: np.random.Generator, n_atoms: int, spread: float = 1.1) -> np.ndarray:
    """[N, 3] Å, atoms at least 0.9 Å apart."""
    while True:
        pos = rng.normal(scale=spread, size=(n_atoms, 3))
        if pdist(pos).min() > 0.9:
            return pos


def graph(pos: np.ndarray, numbers, cutoff: float = GRAPH_CUTOFF, **labels):
    atoms = ase.Atoms(numbers=list(numbers), positions=pos)
    return atoms_to_graph(atoms, cutoff, labels or None, dtype=torch.float64, on_isolated="ignore")


def coulomb_toy(rng: np.random.Generator, n_structures: int) -> list:
    """Noisy bent 4-atom chains in the z = 0 plane, E = sum_{i<j} 1/r_ij (eV, Å)."""
    base = np.array([[0.0, 0.0], [1.4, 0.6], [2.8, 0.0], [4.2, 0.6]])
    out = []
    for _ in range(n_structures):
        xy = base + rng.normal(scale=0.15, size=base.shape)
        pos = np.column_stack([xy - xy.mean(0), np.zeros(4)])
        diff = pos[:, None] - pos[None]
        r = np.linalg.norm(diff, axis=-1) + np.eye(4)
        energy = np.sum(np.triu(1 / r, 1))
        forces = np.sum(diff / r[..., None] ** 3 * (1 - np.eye(4))[..., None], axis=1)
        out.append(graph(pos, [1] * 4, cutoff=10.0, energy=energy, forces=forces))
    return out


def linear_with_random_weights() -> LinearModel:
    model = LinearModel(n_atoms=5)
    with torch.no_grad():
        model.weight.normal_()
    return model


MODELS = {
    "mlp_positions": lambda: FeatureMLP(5, "positions", hidden=[16, 16]),
    "mlp_distances": lambda: FeatureMLP(5, "distances", hidden=[16, 16], activation="tanh"),
    "mlp_coulomb": lambda: FeatureMLP(5, "coulomb_eigenvalues", hidden=[16], activation="softplus"),
    "mlp_acsf": lambda: FeatureMLP(5, "acsf", hidden=[16, 16], featurizer_kwargs=ACSF_KWARGS),
    "pair": lambda: PairNN(3.5, hidden=[16, 16]),
    "pair_species": lambda: PairNN(3.5, hidden=[16, 16], species=[1, 6, 7, 8], num_basis=0),
    "pair_inverse_basis": lambda: PairNN(3.5, hidden=[16, 16], basis="inverse", basis_min=0.7),
    "linear": linear_with_random_weights,
}
STATISTICS = DatasetStatistics(
    species=[1, 6, 7, 8],
    energy_per_atom_mean=-0.7,
    energy_per_atom_std=0.3,
    reference_energies={1: -13.6, 6: -1029.0, 7: -1485.0, 8: -2041.0},
    force_rms=1.0,
)


def build(name: str):
    model = MODELS[name]().double().eval()
    model.set_statistics(STATISTICS)
    return model


def energy_of(model, data) -> torch.Tensor:
    return model(data, compute_forces=False)["energy"]


@pytest.mark.parametrize("name", MODELS)
def test_forces_match_finite_differences(name, rng):
    model = build(name)
    batch = Batch.from_data_list([graph(random_positions(rng, 5), SPECIES) for _ in range(2)])
    forces = model(batch)["forces"]
    h = 1e-5
    numeric = torch.zeros_like(forces)
    for atom in range(batch.num_nodes):
        for axis in range(3):
            plus, minus = batch.clone(), batch.clone()
            plus.pos[atom, axis] += h
            minus.pos[atom, axis] -= h
            numeric[atom, axis] = -(energy_of(model, plus).sum() - energy_of(model, minus).sum()) / (2 * h)
    assert forces.abs().max() > 1e-2  # not trivially zero
    # energies carry reference offsets of ~3000 eV: round-off of the differences ~1e-7 eV/Å
    torch.testing.assert_close(forces, numeric, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_batched_results_equal_one_structure_at_a_time(name, rng):
    model = build(name)
    structures = [graph(random_positions(rng, 5), SPECIES) for _ in range(3)]
    batched = model(Batch.from_data_list(structures))
    single = [model(data) for data in structures]
    torch.testing.assert_close(batched["energy"], torch.cat([out["energy"] for out in single]))
    torch.testing.assert_close(batched["forces"], torch.cat([out["forces"] for out in single]))


def transformed_energy_and_forces(model, pos, numbers, rotation, shift=np.zeros(3), perm=None):
    perm = np.arange(len(pos)) if perm is None else perm
    out = model(graph(pos[perm] @ rotation.T + shift, np.asarray(numbers)[perm]))
    return out["energy"], out["forces"]


@pytest.mark.parametrize("name", ["pair", "pair_species", "mlp_acsf"])
def test_energy_invariant_and_forces_equivariant_under_rotation_translation_permutation(name, rng):
    model = build(name)
    pos = random_positions(rng, 5)
    rotation = Rotation.random(random_state=3).as_matrix()
    perm = np.array([2, 4, 0, 3, 1])
    energy, forces = transformed_energy_and_forces(model, pos, SPECIES, np.eye(3))
    moved_energy, moved_forces = transformed_energy_and_forces(
        model, pos, SPECIES, rotation, shift=np.array([5.0, -2.0, 1.0]), perm=perm
    )
    torch.testing.assert_close(moved_energy, energy, rtol=1e-12, atol=1e-10)
    expected_forces = forces[perm] @ torch.tensor(rotation).T
    torch.testing.assert_close(moved_forces, expected_forces, rtol=1e-10, atol=1e-10)


def test_feature_mlp_on_positions_is_not_rotation_invariant(rng):
    model = build("mlp_positions")
    pos = random_positions(rng, 5)
    energy, _ = transformed_energy_and_forces(model, pos, SPECIES, np.eye(3))
    rotated, _ = transformed_energy_and_forces(model, pos, SPECIES, Rotation.random(random_state=3).as_matrix())
    assert (rotated - energy).abs().item() > 1e-3


def test_feature_mlp_on_distances_is_rotation_but_not_permutation_invariant(rng):
    model = build("mlp_distances")
    pos = random_positions(rng, 5)
    rotation = Rotation.random(random_state=3).as_matrix()
    energy, forces = transformed_energy_and_forces(model, pos, SPECIES, np.eye(3))
    rotated, rotated_forces = transformed_energy_and_forces(model, pos, SPECIES, rotation)
    torch.testing.assert_close(rotated, energy, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(rotated_forces, forces @ torch.tensor(rotation).T, rtol=1e-10, atol=1e-10)
    # relabel atoms of the same species only: the structure is physically the same
    same_species_swap = np.array([0, 3, 2, 1, 4])
    permuted, _ = transformed_energy_and_forces(model, pos, SPECIES, np.eye(3), perm=same_species_swap)
    assert (permuted - energy).abs().item() > 1e-3


def test_statistics_shift_and_scale_the_energy(rng):
    model = FeatureMLP(5, "distances", hidden=[8]).double()
    data = graph(random_positions(rng, 5), SPECIES)
    raw = energy_of(model, data)
    model.set_statistics(STATISTICS)
    offset = sum(STATISTICS.reference_energies[z] for z in SPECIES) + 5 * STATISTICS.energy_per_atom_mean
    expected = offset + 5 * STATISTICS.energy_per_atom_std * raw
    torch.testing.assert_close(energy_of(model, data), expected, rtol=1e-12, atol=1e-9)


def test_feature_mlp_on_distances_learns_the_coulomb_toy(rng):
    train, test = coulomb_toy(rng, 300), coulomb_toy(rng, 100)
    train_batch, test_batch = Batch.from_data_list(train), Batch.from_data_list(test)
    energies = train_batch.energy
    model = FeatureMLP(4, "distances", hidden=[32, 32]).double()
    model.set_statistics(
        DatasetStatistics(species=[1], energy_per_atom_mean=float(energies.mean() / 4),
                          energy_per_atom_std=float(energies.std() / 4))
    )
    model.fit_feature_scaling(train)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(400):
        optimiser.zero_grad()
        loss = (model(train_batch, compute_forces=False)["energy"] - energies).pow(2).mean()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        mse = (energy_of(model, test_batch) - test_batch.energy).pow(2).mean().item()
    variance = test_batch.energy.var().item()
    print(f"Coulomb toy, FeatureMLP(distances): test MSE {mse:.2e} eV^2, energy variance {variance:.2e} eV^2")
    assert mse < 0.01 * variance


@pytest.mark.parametrize(
    "ridge, weight_tol, energy_tol, force_tol",
    [(0.0, 1e-10, 1e-12, 1e-10), (1e-8, 1e-5, 5e-8, 1e-6)],  # 1e-8: the default, a slight shrinkage
)
def test_linear_model_on_inverse_distances_is_exact_for_the_coulomb_toy(
    ridge, weight_tol, energy_tol, force_tol, rng
):
    train, test = coulomb_toy(rng, 40), coulomb_toy(rng, 20)
    model = LinearModel(n_atoms=4, ridge=ridge).double().fit(train)
    ones = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(model.weight.detach(), ones, rtol=0, atol=weight_tol)
    assert abs(model.bias.item()) < weight_tol
    test_batch = Batch.from_data_list(test)
    out = model(test_batch)
    torch.testing.assert_close(out["energy"], test_batch.energy, rtol=0, atol=energy_tol)
    torch.testing.assert_close(out["forces"], test_batch.forces, rtol=0, atol=force_tol)


def test_linear_model_fit_accepts_a_loader(rng):
    from torch_geometric.loader import DataLoader

    data = coulomb_toy(rng, 30)
    from_list = LinearModel(n_atoms=4).double().fit(data)
    from_loader = LinearModel(n_atoms=4).double().fit(DataLoader(data, batch_size=7))
    torch.testing.assert_close(from_loader.weight, from_list.weight, rtol=1e-9, atol=1e-9)


def dimer(distance: float, cutoff: float):
    return graph(np.array([[0.0, 0.0, 0.0], [distance, 0.0, 0.0]]), [6, 8], cutoff=cutoff)


def test_pair_nn_is_smooth_at_the_cutoff():
    model = build("pair")
    rc = model.cutoff
    inside = model(dimer(rc - 1e-6, cutoff=rc + 1.0))
    outside = model(dimer(rc + 1e-6, cutoff=rc + 1.0))
    assert abs(inside["energy"].item() - outside["energy"].item()) < 1e-10
    assert inside["forces"].abs().max().item() < 1e-5
    assert outside["forces"].abs().max().item() == 0.0
    r = torch.linspace(rc - 0.05, rc + 0.5, 50, dtype=torch.float64)
    curve = model.pair_energy(r)
    assert curve[r >= rc].abs().max().item() == 0.0


def test_pair_nn_counts_each_pair_once():
    model = build("pair_species")
    out = model(dimer(1.3, cutoff=GRAPH_CUTOFF))
    references = STATISTICS.reference_energies
    offsets = references[6] + references[8] + 2 * STATISTICS.energy_per_atom_mean
    pair = model.pair_energy(torch.tensor(1.3, dtype=torch.float64), 6, 8)
    torch.testing.assert_close(out["energy"], (offsets + pair).reshape(1))
    torch.testing.assert_close(out["per_atom_energy"].sum(), out["energy"][0])


def test_pair_nn_sums_over_periodic_images():
    """Simple cubic, one atom per cell (a = 2 Å, rc = 2.5 Å): six neighbours at 2 Å."""
    model = PairNN(2.5, hidden=[16, 16]).double()
    model.set_statistics(STATISTICS)
    atoms = ase.Atoms("C", cell=np.eye(3) * 2.0, pbc=True)
    data = atoms_to_graph(atoms, 2.5, dtype=torch.float64)
    out = model(data)
    offset = STATISTICS.reference_energies[6] + STATISTICS.energy_per_atom_mean
    expected = offset + 3 * model.pair_energy(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(out["energy"], expected.reshape(1))
    assert out["forces"].abs().max().item() < 1e-12


def test_unknown_featurizer_and_activation_names_raise():
    with pytest.raises(ValueError, match="unknown featurizer 'coulomb'.*coulomb_eigenvalues"):
        FeatureMLP(5, "coulomb")
    with pytest.raises(ValueError, match="unknown activation 'swish'.*silu"):
        FeatureMLP(5, "distances", activation="swish")
    with pytest.raises(ValueError, match="unknown activation"):
        PairNN(3.0, activation="sigmoid")


def test_pair_nn_rejects_bad_basis_settings():
    with pytest.raises(ValueError, match="basis must be 'distance' or 'inverse', got 'log'"):
        PairNN(3.0, basis="log")
    with pytest.raises(ValueError, match="basis='inverse' needs 0 < basis_min < cutoff"):
        PairNN(3.0, basis="inverse")
    with pytest.raises(ValueError, match="basis_min must be in"):
        PairNN(3.0, basis_min=3.5)


def test_feature_models_reject_batches_of_other_sizes(rng):
    model = build("mlp_distances")
    mixed = Batch.from_data_list(
        [graph(random_positions(rng, 5), SPECIES), graph(random_positions(rng, 4), SPECIES[:4])]
    )
    with pytest.raises(ValueError, match="same number of atoms"):
        model(mixed)
    smaller = Batch.from_data_list([graph(random_positions(rng, 4), SPECIES[:4])])
    with pytest.raises(ValueError, match="n_atoms=5"):
        model(smaller)


def test_pair_nn_rejects_species_it_was_not_built_for(rng):
    model = PairNN(3.0, species=[1, 6]).double()
    with pytest.raises(ValueError, match=r"\[7, 8\] not known to PairNN.*\[1, 6\]"):
        model(graph(random_positions(rng, 5), SPECIES))


def test_pair_nn_stress_matches_finite_strain_derivative(rng):
    """stress = (1/V) dE/d(strain) in a periodic cell, the graph kept fixed."""
    model = PairNN(3.0, hidden=[16, 16]).double().eval()
    cell = np.diag([3.1, 3.3, 3.6]) + rng.normal(scale=0.1, size=(3, 3))
    atoms = ase.Atoms("C3", scaled_positions=rng.uniform(size=(3, 3)), cell=cell, pbc=True)
    data = atoms_to_graph(atoms, 3.0, dtype=torch.float64)
    stress = model(data, compute_stress=True)["stress"][0]
    volume = abs(np.linalg.det(cell))
    h = 1e-6
    numeric = torch.zeros(3, 3, dtype=torch.float64)
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                strain = torch.zeros(3, 3, dtype=torch.float64)
                strain[a, b] += 0.5 * sign * h
                strain[b, a] += 0.5 * sign * h
                strained = data.clone()
                strained.pos = data.pos @ (torch.eye(3, dtype=torch.float64) + strain)
                strained.cell = data.cell @ (torch.eye(3, dtype=torch.float64) + strain)
                energies.append(energy_of(model, strained))
            numeric[a, b] = (energies[0] - energies[1]).item() / (2 * h) / volume
    assert stress.abs().max() > 1e-4
    torch.testing.assert_close(stress, numeric, rtol=1e-5, atol=1e-8)


def test_state_dicts_of_the_older_energy_scale_still_load(rng):
    """Checkpoints written when the baselines kept ``energy_scale.{reference_energies, shift,
    scale}`` load into today's ``scale_shift`` with the same energies."""
    data = graph(random_positions(rng, 5), SPECIES)
    for model in (FeatureMLP(5, "distances", hidden=[8]).double(), PairNN(3.0, hidden=[8]).double()):
        model.set_statistics(STATISTICS)
        expected = energy_of(model, data).detach()
        old = {k: v for k, v in model.state_dict().items() if not k.startswith("scale_shift.")}
        references = torch.zeros(119, dtype=torch.float64)
        for z, value in STATISTICS.reference_energies.items():
            references[z] = value
        old["energy_scale.reference_energies"] = references
        old["energy_scale.shift"] = torch.tensor(STATISTICS.energy_per_atom_mean, dtype=torch.float64)
        old["energy_scale.scale"] = model.scale_shift.scales[0].clone()
        fresh = type(model)(5, "distances", hidden=[8]) if isinstance(model, FeatureMLP) else PairNN(3.0, hidden=[8])
        fresh = fresh.double()
        fresh.load_state_dict(old)
        torch.testing.assert_close(energy_of(fresh, data), expected, rtol=1e-12, atol=1e-12)
