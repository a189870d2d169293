"""Classical MDS, Kabsch alignment and RMSD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from equimol.data.geometry import (
    augment_batch,
    classical_mds,
    coordinates_from_distances,
    kabsch,
    kabsch_align,
    pairwise_distances,
    random_rotation,
    rmsd,
)


def _distances(x: np.ndarray) -> np.ndarray:
    return np.linalg.norm(x[:, None] - x[None], axis=-1)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("reflect", [False, True])
def test_mds_then_kabsch_recovers_configuration_from_exact_distances(rng, dim, reflect):
    x = rng.uniform(0, 8, size=(20, dim))
    if reflect:  # a mirror image has the same distance matrix
        x[:, 0] = -x[:, 0]
    recovered = coordinates_from_distances(_distances(x), x, allow_reflection=True)
    assert rmsd(recovered, x) < 1e-10
    np.testing.assert_allclose(recovered, x, atol=1e-9)


@pytest.mark.parametrize("dim", [2, 3])
def test_mds_reproduces_distances_in_torch_batches(dim):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(5, 12, dim, generator=g, dtype=torch.float64) * 6
    y = classical_mds(pairwise_distances(x), dim)
    assert y.shape == (5, 12, dim)
    torch.testing.assert_close(pairwise_distances(y), pairwise_distances(x), atol=1e-10, rtol=0)
    torch.testing.assert_close(y.mean(1), torch.zeros(5, dim, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize("dim", [2, 3])
def test_kabsch_finds_the_rotation_and_translation_applied(dim):
    g = torch.Generator().manual_seed(2)
    p = torch.randn(4, 10, dim, generator=g, dtype=torch.float64)
    rot = torch.as_tensor(random_rotation(2, planar=dim == 2, size=4))[:, :dim, :dim]
    t = torch.randn(4, dim, generator=g, dtype=torch.float64)
    q = p @ rot.transpose(-1, -2) + t.unsqueeze(1)
    r_found, t_found = kabsch(p, q)
    torch.testing.assert_close(r_found, rot, atol=1e-10, rtol=0)
    torch.testing.assert_close(t_found, t, atol=1e-10, rtol=0)


def test_kabsch_stays_proper_unless_reflection_is_allowed(rng):
    x = rng.normal(size=(15, 3))
    mirrored = x * np.array([-1.0, 1.0, 1.0])
    proper, _ = kabsch(torch.as_tensor(mirrored), torch.as_tensor(x))
    improper, _ = kabsch(torch.as_tensor(mirrored), torch.as_tensor(x), allow_reflection=True)
    assert torch.linalg.det(proper) == pytest.approx(1.0, abs=1e-12)
    assert torch.linalg.det(improper) == pytest.approx(-1.0, abs=1e-12)
    # A rotation cannot undo a mirror image of a chiral set; a reflection can.
    assert rmsd(kabsch_align(mirrored, x), x) > 0.1
    assert rmsd(kabsch_align(mirrored, x, allow_reflection=True), x) < 1e-12


def test_rmsd_of_a_rigid_shift_is_its_length():
    x = torch.zeros(7, 3, dtype=torch.float64)
    assert float(rmsd(x + torch.tensor([3.0, 4.0, 0.0], dtype=torch.float64), x)) == pytest.approx(5.0)


@pytest.mark.parametrize("dim", [2, 3])
def test_random_rotations_are_proper_and_planar_in_2d(dim):
    rot = torch.as_tensor(random_rotation(3, planar=dim == 2, size=50))
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(50, dtype=torch.float64))
    if dim == 2:
        torch.testing.assert_close(rot[:, 2], eye[:, 2])


def test_augmented_batch_keeps_pair_distances_and_the_plane():
    g = torch.Generator().manual_seed(4)
    pos = torch.rand(6, 9, 3, generator=g, dtype=torch.float64) * 8
    pos[..., 2] = 0
    out = augment_batch(pos, 8.0, 2, generator=g)
    assert torch.all(out[..., 2] == 0)
    d_in = pairwise_distances(pos).flatten(1).sort(-1).values
    d_out = pairwise_distances(out).flatten(1).sort(-1).values
    torch.testing.assert_close(d_out, d_in, atol=1e-12, rtol=0)
    assert not torch.allclose(out, pos)


def test_pairwise_distances_have_finite_gradients_at_the_diagonal():
    pos = torch.rand(3, 5, 3, dtype=torch.float64, requires_grad=True)
    pairwise_distances(pos).sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_condensed_distances_follow_pdist_order_and_sort():
    from scipy.spatial.distance import pdist

    x = torch.rand(2, 6, 3, dtype=torch.float64)
    expected = np.stack([pdist(c) for c in x.numpy()])
    np.testing.assert_allclose(pairwise_distances(x, condensed=True).numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(pairwise_distances(x, sort=True).numpy(), np.sort(expected, -1), atol=1e-12)


def test_mds_rejects_a_non_square_matrix():
    with pytest.raises(ValueError, match="classical_mds"):
        classical_mds(np.zeros((3, 4)), 2)
