"""Featurizers: reference values, derivatives, symmetries, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch, Data

from equimol.data.featurizers import (
    ACSF,
    AbsolutePositions,
    CoulombMatrixEigenvalues,
    InverseDistances,
    PairwiseDistances,
    SortedDistances,
    featurizer_from_name,
    featurizer_names,
    to_dense_atomic_numbers,
    to_dense_positions,
)

SPECIES = np.array([6, 1, 8, 1, 7])


def random_structures(rng: np.random.Generator, batch: int, n_atoms: int, spread: float = 1.6) -> np.ndarray:
    """[B, N, 3] Å, atoms at least 0.8 Å apart."""
    out = []
    while len(out) < batch:
        pos = rng.normal(scale=spread, size=(n_atoms, 3))
        if pdist(pos).min() > 0.8:
            out.append(pos)
    return np.stack(out)


def as_torch(pos: np.ndarray, z: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    pos_t = torch.tensor(pos, dtype=torch.float64)
    z_t = torch.tensor(np.broadcast_to(z, pos.shape[:2]).copy(), dtype=torch.int64)
    return pos_t, z_t


def coulomb_eigenvalues_numpy(pos: np.ndarray, z: np.ndarray) -> np.ndarray:
    distances = squareform(pdist(pos))
    np.fill_diagonal(distances, 1.0)
    matrix = np.outer(z, z) / distances
    np.fill_diagonal(matrix, 0.5 * z.astype(float) ** 2.4)
    return np.sort(np.linalg.eigvalsh(matrix))[::-1]


ALL = [
    AbsolutePositions(),
    AbsolutePositions(dims=2),
    PairwiseDistances(),
    InverseDistances(),
    SortedDistances(),
    CoulombMatrixEigenvalues(),
    ACSF(cutoff=3.5, angular_etas=[0.1], zetas=[1.0, 2.0]),
    ACSF(cutoff=3.5, species=[1, 6, 7, 8], angular_etas=[0.1], zetas=[2.0], lambdas=[1.0], reduce="mean"),
]
IDS = ["positions", "positions2d", "distances", "inverse", "sorted", "coulomb", "acsf", "acsf_species"]


@pytest.mark.parametrize("featurizer", ALL, ids=IDS)
def test_output_has_num_features_entries(featurizer, rng):
    pos, z = as_torch(random_structures(rng, 3, 5), SPECIES)
    out = featurizer(pos, z)
    assert out.shape == (3, featurizer.num_features(5))
    assert torch.isfinite(out).all()


def test_positions_are_flattened_coordinates(rng):
    pos, z = as_torch(random_structures(rng, 2, 4), SPECIES[:4])
    np.testing.assert_array_equal(AbsolutePositions()(pos, z).numpy(), pos.numpy().reshape(2, 12))
    np.testing.assert_array_equal(AbsolutePositions(dims=2)(pos, z).numpy(), pos.numpy()[..., :2].reshape(2, 8))


def test_distances_match_scipy_pdist(rng):
    pos_np = random_structures(rng, 4, 6)
    pos, z = as_torch(pos_np, np.ones(6, dtype=int))
    reference = np.stack([pdist(p) for p in pos_np])
    np.testing.assert_allclose(PairwiseDistances()(pos, z).numpy(), reference, rtol=1e-13)
    np.testing.assert_allclose(InverseDistances()(pos, z).numpy(), 1 / reference, rtol=1e-13)
    np.testing.assert_allclose(SortedDistances()(pos, z).numpy(), np.sort(reference, axis=1), rtol=1e-13)


def test_coulomb_eigenvalues_match_numpy(rng):
    pos_np = random_structures(rng, 3, 5)
    pos, z = as_torch(pos_np, SPECIES)
    reference = np.stack([coulomb_eigenvalues_numpy(p, SPECIES) for p in pos_np])
    np.testing.assert_allclose(CoulombMatrixEigenvalues()(pos, z).numpy(), reference, rtol=1e-11)


def test_acsf_matches_loop_reference(rng):
    """Radial and angular symmetry functions against a direct loop over neighbours."""
    cutoff, eta_r, shifts = 3.0, 2.0, [1.0, 2.0]
    eta_a, zeta, lam = 0.1, 2.0, -1.0
    featurizer = ACSF(
        cutoff, radial_shifts=shifts, radial_eta=eta_r, angular_etas=[eta_a], zetas=[zeta], lambdas=[lam]
    )
    pos_np = random_structures(rng, 1, 5, spread=1.2)[0]
    fc = lambda r: 0.5 * (np.cos(np.pi * r / cutoff) + 1) * (r < cutoff)  # noqa: E731
    d = squareform(pdist(pos_np))
    g2 = np.zeros(2)
    g4 = 0.0
    for i in range(5):
        for j in range(5):
            if j == i:
                continue
            g2 += np.exp(-eta_r * (d[i, j] - np.array(shifts)) ** 2) * fc(d[i, j])
            for k in range(j + 1, 5):
                if k == i:
                    continue
                rij, rik = pos_np[j] - pos_np[i], pos_np[k] - pos_np[i]
                cos = rij @ rik / (d[i, j] * d[i, k])
                g4 += (
                    2 ** (1 - zeta) * (1 + lam * cos) ** zeta
                    * np.exp(-eta_a * (d[i, j] ** 2 + d[i, k] ** 2 + d[j, k] ** 2))
                    * fc(d[i, j]) * fc(d[i, k]) * fc(d[j, k])
                )
    pos, z = as_torch(pos_np[None], SPECIES)
    out = featurizer(pos, z)[0].numpy()
    np.testing.assert_allclose(out, np.concatenate([g2, [g4]]), rtol=1e-12)


def test_acsf_species_channels_add_up_to_agnostic_ones(rng):
    """Summed over species channels, the resolved functions equal the species-agnostic ones."""
    kwargs = dict(cutoff=3.5, angular_etas=[0.1], zetas=[1.0, 4.0])
    agnostic = ACSF(**kwargs)
    resolved = ACSF(**kwargs, species=[1, 6, 7, 8])
    pos, z = as_torch(random_structures(rng, 2, 5, spread=1.2), SPECIES)
    n_radial, n_angular, s = 8, 4, 4
    per_centre = resolved(pos, z).reshape(2, s, -1).sum(1)  # pool over centre species
    radial = per_centre[:, : n_radial * s].reshape(2, n_radial, s).sum(-1)
    angular = per_centre[:, n_radial * s :].reshape(2, n_angular, -1).sum(-1)
    torch.testing.assert_close(torch.cat([radial, angular], 1), agnostic(pos, z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("featurizer", ALL, ids=IDS)
def test_gradients_match_finite_differences(featurizer, rng):
    pos, z = as_torch(random_structures(rng, 2, 5, spread=1.2), SPECIES)
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: featurizer(p, z), (pos,), eps=1e-6, atol=1e-7, rtol=1e-5)


ROTATION_INVARIANT = [f for f, name in zip(ALL, IDS) if not name.startswith("positions")]


@pytest.mark.parametrize("featurizer", ROTATION_INVARIANT, ids=IDS[2:])
def test_invariant_under_rotation_reflection_translation(featurizer, rng):
    pos_np = random_structures(rng, 2, 5)
    rotation = Rotation.random(random_state=7).as_matrix()
    moved = -(pos_np @ rotation.T) + rng.normal(size=3) * 3  # rotation, inversion, translation
    before = featurizer(*as_torch(pos_np, SPECIES))
    after = featurizer(*as_torch(moved, SPECIES))
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_positions_change_under_rotation(rng):
    pos_np = random_structures(rng, 1, 5)
    rotated = pos_np @ Rotation.random(random_state=7).as_matrix().T
    before = AbsolutePositions()(*as_torch(pos_np, SPECIES))
    after = AbsolutePositions()(*as_torch(rotated, SPECIES))
    assert (after - before).abs().max() > 0.1


PERMUTATION_INVARIANT = [SortedDistances(), CoulombMatrixEigenvalues(), ALL[6], ALL[7]]


@pytest.mark.parametrize("featurizer", PERMUTATION_INVARIANT, ids=["sorted", "coulomb", "acsf", "acsf_species"])
def test_invariant_under_permutation(featurizer, rng):
    pos_np = random_structures(rng, 2, 5)
    perm = np.array([3, 0, 4, 1, 2])
    before = featurizer(*as_torch(pos_np, SPECIES))
    after = featurizer(*as_torch(pos_np[:, perm], SPECIES[perm]))
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_pairwise_distances_change_under_permutation(rng):
    pos_np = random_structures(rng, 1, 5)
    perm = np.array([3, 0, 4, 1, 2])
    before = PairwiseDistances()(*as_torch(pos_np, SPECIES))
    after = PairwiseDistances()(*as_torch(pos_np[:, perm], SPECIES[perm]))
    assert (after - before).abs().max() > 0.1
    torch.testing.assert_close(after.sort().values, before.sort().values)


def test_acsf_features_do_not_depend_on_atoms_beyond_cutoff(rng):
    """An atom far away adds nothing but its own (empty) environment: G2 = G4 = 0 for it."""
    featurizer = ACSF(cutoff=3.0)
    pos_np = random_structures(rng, 1, 5, spread=1.0)
    far = np.concatenate([pos_np, [[[50.0, 0.0, 0.0]]]], axis=1)
    before = featurizer(*as_torch(pos_np, SPECIES))
    after = featurizer(*as_torch(far, np.append(SPECIES, 1)))
    torch.testing.assert_close(after, before, rtol=1e-12, atol=1e-12)


def test_to_dense_positions_of_a_batch(rng):
    pos_np = random_structures(rng, 3, 4)
    batch = Batch.from_data_list(
        [Data(pos=torch.tensor(p), z=torch.tensor(SPECIES[:4])) for p in pos_np]
    )
    dense = to_dense_positions(batch.pos, batch.batch)
    np.testing.assert_array_equal(dense.numpy(), pos_np)
    assert to_dense_atomic_numbers(batch.z, batch.batch).tolist() == [SPECIES[:4].tolist()] * 3


def test_to_dense_positions_rejects_structures_of_different_sizes(rng):
    batch = Batch.from_data_list(
        [Data(pos=torch.randn(4, 3), z=torch.ones(4, dtype=torch.long)),
         Data(pos=torch.randn(5, 3), z=torch.ones(5, dtype=torch.long))]
    )
    with pytest.raises(ValueError, match="same number of atoms"):
        to_dense_positions(batch.pos, batch.batch)


def test_featurizer_from_name_builds_every_registered_featurizer():
    assert set(featurizer_names()) >= {
        "positions", "distances", "inverse_distances", "sorted_distances", "coulomb_eigenvalues", "acsf"
    }
    assert isinstance(featurizer_from_name("positions", dims=2), AbsolutePositions)
    assert featurizer_from_name("positions", dims=2).num_features(4) == 8
    assert isinstance(featurizer_from_name("acsf", cutoff=4.0), ACSF)


def test_unknown_featurizer_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown featurizer 'distance'.*'distances'"):
        featurizer_from_name("distance")
    with pytest.raises(ValueError, match="bad arguments"):
        featurizer_from_name("distances", cutoff=3.0)


def test_bad_shapes_and_species_raise_clear_errors(rng):
    pos, z = as_torch(random_structures(rng, 1, 5), SPECIES)
    with pytest.raises(ValueError, match=r"\[B, N, 3\]"):
        PairwiseDistances()(pos[0], z)
    with pytest.raises(ValueError, match="z must have shape"):
        PairwiseDistances()(pos, z[:, :4])
    with pytest.raises(ValueError, match=r"\[7\] are not in species"):
        ACSF(species=[1, 6, 8])(pos, z)
