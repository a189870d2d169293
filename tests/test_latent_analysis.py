"""Latent-space, anomaly, reconstruction and validity analysis."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.lj import LennardJones

from equimol.data.geometry import augment_batch, random_rotation
from equimol.analysis.latent import (
    anomaly_auc,
    cluster_scores,
    distance_error,
    invariance_errors,
    lj_energies,
    matched_rmsd,
    min_pair_distances,
    overlapping_configurations,
    physical_validity,
    plot_latent_pca,
    reconstruction_rmsd,
)
from equimol.models.vae import CoordinateVAE, DistanceMatrixVAE, InvariantVAE


def _blobs(rng, n=60, k=3, dim=4, spread=0.1):
    centres = rng.normal(scale=3.0, size=(k, dim))
    labels = np.repeat(np.arange(k), n)
    return centres[labels] + spread * rng.normal(size=(k * n, dim)), labels


def test_clustering_recovers_separated_groups_and_not_random_labels(rng):
    mu, labels = _blobs(rng)
    scores = cluster_scores(mu, labels)
    assert scores["kmeans_ari"] == pytest.approx(1.0)
    assert scores["gmm_ari"] == pytest.approx(1.0)
    shuffled = cluster_scores(mu, rng.permutation(labels))
    assert abs(shuffled["kmeans_ari"]) < 0.1


def test_anomaly_auc_is_one_for_separated_scores_and_half_for_equal_ones(rng):
    assert anomaly_auc(rng.normal(size=200), rng.normal(size=200) + 10) == 1.0
    assert anomaly_auc(np.ones(50), np.ones(50)) == 0.5


def test_pca_figure_has_one_series_per_label(rng):
    mu, labels = _blobs(rng)
    fig = plot_latent_pca(mu, labels.astype(float), title="blobs")
    assert len(fig.axes[0].collections) == 3


def test_lj_energies_match_ase_lennard_jones_without_cutoff(rng):
    pos = np.zeros((3, 6, 3))
    for b in range(3):
        pos[b, :, :2] = rng.uniform(0, 4, size=(6, 2))
    calc = LennardJones(sigma=1.0, epsilon=1.0, rc=100.0, smooth=False)
    ref = []
    for p in pos:
        atoms = Atoms("Ar6", positions=p)
        atoms.calc = calc
        # ASE shifts the pair energy by its value at rc; undo the (tiny) shift
        shift = 4 * (100.0**-12 - 100.0**-6) * 15
        ref.append(atoms.get_potential_energy() + shift)
    np.testing.assert_allclose(lj_energies(pos, 2), ref, rtol=1e-10)


def test_validity_flags_overlaps_and_high_energies():
    lattice = np.array([[i * 1.12, j * 1.12, 0.0] for i in range(3) for j in range(3)])
    good = np.stack([lattice, lattice + 0.01])
    e_train = lj_energies(good, 2)
    squeezed = lattice.copy()
    squeezed[0] = squeezed[1] - np.array([0.6, 0.0, 0.0])  # 0.6 sigma from atom 1
    result = physical_validity(np.stack([lattice, squeezed]), e_train, dim=2)
    assert result["valid_fraction"] == 0.5
    assert result["no_overlap_fraction"] == 0.5
    assert min_pair_distances(np.stack([squeezed]), 2)[0] == pytest.approx(0.6)


def test_overlapping_configurations_put_one_pair_at_the_requested_distance():
    pos = torch.as_tensor([[[2.0 * i, 0.0, 0.0] for i in range(5)]] * 4, dtype=torch.float64)
    out = overlapping_configurations(pos, dim=2, distance=0.5, seed=1)
    np.testing.assert_allclose(min_pair_distances(out.numpy(), 2), 0.5)
    assert torch.all(out[..., 2] == 0)


def test_distance_error_ignores_rigid_motion_and_relabelling(rng):
    pos = torch.as_tensor(rng.uniform(0, 5, size=(4, 7, 3)))
    moved = augment_batch(pos, 5.0, 3, generator=torch.Generator().manual_seed(0)) + 1.0
    np.testing.assert_allclose(distance_error(moved.numpy(), pos.numpy(), 3), 0.0, atol=1e-12)
    assert np.all(distance_error(1.1 * pos.numpy(), pos.numpy(), 3) > 0.01)


def test_matched_rmsd_undoes_relabelling_and_rigid_motion(rng):
    ref = rng.uniform(0, 5, size=(3, 9, 2))
    perm = ref[:, rng.permutation(9)]
    np.testing.assert_allclose(matched_rmsd(perm, ref, align=False), 0.0, atol=1e-12)
    rot = random_rotation(1, planar=True, size=3)[:, :2, :2]
    moved = np.einsum("bij,bnj->bni", rot, perm) + 3.0
    moved[0, :, 0] *= -1  # and a mirror image
    np.testing.assert_allclose(matched_rmsd(moved, ref, align=True), 0.0, atol=1e-8)
    assert np.all(matched_rmsd(moved, ref, align=False) > 0.5)


def test_distance_matrix_rmsd_goes_through_mds_and_kabsch():
    """A DistanceMatrixVAE whose decoder returned the exact matrix would score RMSD 0."""
    model = DistanceMatrixVAE(6, 5.0, 2, latent_dim=2).double()
    pos = torch.rand(4, 6, 3, dtype=torch.float64) * 5
    pos[..., 2] = 0
    model.reconstruct = lambda p: model.to_positions(model.target(p))  # a perfect autoencoder
    np.testing.assert_allclose(reconstruction_rmsd(model, pos), 0.0, atol=1e-9)


def test_invariance_errors_are_zero_only_where_the_model_is_invariant():
    pos = torch.rand(16, 6, 3, dtype=torch.float64) * 5
    pos[..., 2] = 0
    inv = invariance_errors(InvariantVAE(6, 5.0, 2, latent_dim=3).double(), pos, seed=0)
    assert inv["latent_rotation"] < 1e-10
    assert inv["latent_permutation"] < 1e-10
    assert inv["latent_translation"] < 1e-10
    coord = invariance_errors(CoordinateVAE(6, 5.0, 2, latent_dim=3).double(), pos, seed=0)
    assert coord["latent_rotation"] > 0.1
    assert coord["latent_translation"] > 0.01
    assert coord["latent_permutation"] < 1e-10  # atoms sorted by x
