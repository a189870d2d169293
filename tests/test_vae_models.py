"""Shapes, contracts and symmetries of the configuration VAEs."""

from __future__ import annotations

import pytest
import torch

from equimol.data.geometry import augment_batch, pairwise_distances, random_rotation
from equimol.models.vae import (
    ConfigurationVAE,
    CoordinateVAE,
    DensityGridVAE,
    DistanceMatrixVAE,
    InvariantVAE,
    grid_peaks,
    occupancy_grid,
)

N, L = 8, 5.0


def _make(cls: type[ConfigurationVAE], dim: int) -> ConfigurationVAE:
    extra = {"grid_size": 16} if cls is DensityGridVAE else {}
    return cls(n_atoms=N, box_length=L, dim=dim, latent_dim=4, **extra)


def _positions(batch: int, dim: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(batch, N, 3, generator=g, dtype=dtype) * L
    if dim == 2:
        pos[..., 2] = 0
    return pos


ALL = [CoordinateVAE, DistanceMatrixVAE, DensityGridVAE, InvariantVAE]


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("cls", ALL)
def test_every_vae_shares_the_interface(cls, dim):
    model = _make(cls, dim)
    pos = _positions(3, dim)
    mu, logvar = model.encode(pos)
    assert mu.shape == logvar.shape == (3, 4)
    z = model.reparameterise(mu, logvar, torch.Generator().manual_seed(0))
    out = model(pos)
    assert set(out) >= {"recon", "mu", "logvar"}
    assert model.decode(z).shape == out["recon"].shape
    terms = model.elbo(pos, beta=0.5)
    assert torch.allclose(terms["loss"], terms["reconstruction"] + 0.5 * terms["kl"])
    assert float(terms["kl"].detach()) >= 0
    per = model.elbo(pos, reduce=False)
    assert per["loss"].shape == (3,)
    decoded = model.sample(2, torch.Generator().manual_seed(0))
    assert decoded.shape == (2, N, 3)
    if dim == 2:
        assert torch.all(decoded[..., 2] == 0)


def test_reparameterisation_is_seeded_and_has_the_posterior_moments():
    model = _make(CoordinateVAE, 2)
    mu = torch.full((20000, 4), 1.5)
    logvar = torch.full((20000, 4), 2 * torch.log(torch.tensor(0.3)))
    a = model.reparameterise(mu, logvar, torch.Generator().manual_seed(5))
    b = model.reparameterise(mu, logvar, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert float(a.mean()) == pytest.approx(1.5, abs=0.01)
    assert float(a.std()) == pytest.approx(0.3, abs=0.01)


def test_distance_matrix_decoder_is_symmetric_with_zero_diagonal():
    model = _make(DistanceMatrixVAE, 2)
    d = model.decode(torch.randn(5, 4))
    torch.testing.assert_close(d, d.transpose(-1, -2))
    assert torch.all(torch.diagonal(d, dim1=-2, dim2=-1) == 0)
    assert torch.all(d >= 0)


def test_distance_matrix_input_ignores_atom_labels():
    model = _make(DistanceMatrixVAE, 2)
    pos = _positions(4, 2)
    perm = augment_batch(pos, L, 2, rotate=False, permute=True, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(model.represent(perm), model.represent(pos))


def test_coordinate_vae_sorted_by_x_ignores_labels_and_unsorted_does_not():
    pos = _positions(4, 2)
    perm = augment_batch(pos, L, 2, rotate=False, permute=True, generator=torch.Generator().manual_seed(1))
    sorted_model = _make(CoordinateVAE, 2)
    torch.testing.assert_close(sorted_model.represent(perm), sorted_model.represent(pos))
    raw = CoordinateVAE(N, L, 2, 4, order="none")
    assert not torch.allclose(raw.represent(perm), raw.represent(pos))


@pytest.mark.parametrize("dim", [2, 3])
def test_invariant_vae_latent_mean_is_invariant_to_rotation_permutation_translation(dim):
    model = _make(InvariantVAE, dim).double().eval()
    pos = _positions(6, dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(7)
    rot = torch.as_tensor(random_rotation(7, planar=dim == 2, size=6))
    shift = torch.zeros(6, 1, 3, dtype=torch.float64)
    shift[..., :dim] = torch.randn(6, 1, dim, generator=g, dtype=torch.float64)
    moved = augment_batch(pos @ rot.transpose(-1, -2) + shift, L, dim, rotate=False, permute=True, generator=g)
    mu, logvar = model.encode(pos)
    mu_moved, logvar_moved = model.encode(moved)
    torch.testing.assert_close(mu_moved, mu, atol=1e-12, rtol=0)
    torch.testing.assert_close(logvar_moved, logvar, atol=1e-12, rtol=0)
    # ... and the reconstruction loss of the moved input is the same, too
    torch.testing.assert_close(model.elbo(moved)["loss"], model.elbo(pos)["loss"], atol=1e-9, rtol=0)
    # the check can fail: a reflection in 2D is also a symmetry, a scaling is not
    assert not torch.allclose(model.encode(1.1 * pos)[0], mu, atol=1e-6)


def test_occupancy_grid_is_one_at_a_particle_and_bounded():
    # cell centres at (k + 1/2) 5/8: particles on the centres of cells (2, 2) and (5, 5)
    pos = torch.tensor([[[1.5625, 1.5625], [3.4375, 3.4375]]], dtype=torch.float64)
    grid = occupancy_grid(pos, 5.0, 8, 0.2)
    assert grid.shape == (1, 8, 8)
    assert float(grid.max()) <= 1.0 and float(grid.min()) >= 0.0
    assert float(grid[0, 2, 2]) == pytest.approx(1.0) and float(grid[0, 5, 5]) == pytest.approx(1.0)
    assert float(grid[0, 0, 7]) < 1e-6


def test_grid_peaks_find_the_particles_back():
    pos = torch.tensor([[[1.3, 1.1], [3.7, 3.9], [1.0, 4.0]]], dtype=torch.float64)
    peaks = grid_peaks(occupancy_grid(pos, 5.0, 32, 0.3)[0].numpy(), 3, 5.0, 0.6)
    found = torch.as_tensor(sorted(map(tuple, peaks)), dtype=torch.float64)
    expected = torch.as_tensor(sorted(map(tuple, pos[0].tolist())), dtype=torch.float64)
    torch.testing.assert_close(found, expected, atol=0.05, rtol=0)


@pytest.mark.parametrize("cls", ALL)
def test_models_reject_positions_of_the_wrong_shape(cls):
    model = _make(cls, 2)
    with pytest.raises(ValueError, match=cls.__name__):
        model.encode(torch.zeros(2, N + 1, 3))


def test_decoded_distance_matrix_gives_coordinates_with_those_distances():
    model = _make(DistanceMatrixVAE, 2).double()
    pos = _positions(3, 2, dtype=torch.float64)
    exact = model.target(pos)  # [B, N, N] / L, Euclidean
    coords = model.to_positions(exact)
    torch.testing.assert_close(pairwise_distances(coords[..., :2]) / L, exact, atol=1e-10, rtol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_occupancy_grid_matches_the_direct_union_of_gaussians(dim):
    g = torch.Generator().manual_seed(3)
    pos = torch.rand(2, 5, dim, generator=g, dtype=torch.float64) * 4.0
    grid = occupancy_grid(pos, 4.0, 8, 0.4)
    centres = (torch.arange(8, dtype=torch.float64) + 0.5) * 0.5
    cells = torch.stack(torch.meshgrid(*([centres] * dim), indexing="ij"), -1).reshape(-1, dim)
    sq = ((cells[None, :, None] - pos[:, None]) ** 2).sum(-1)  # [B, cells, N]
    direct = 1 - torch.prod(1 - torch.exp(-sq / (2 * 0.4**2)), dim=-1)
    torch.testing.assert_close(grid.reshape(2, -1), direct, atol=1e-12, rtol=0)
