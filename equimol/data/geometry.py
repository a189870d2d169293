"""Geometry of point sets: distances, classical MDS, Kabsch alignment, RMSD, random rotations
and the random rigid motions and relabellings used for augmentation and invariance checks.

Every function works on torch tensors with optional leading batch dimensions
(``[..., N, d]``), in float32 or float64, and the distance-to-coordinate functions also accept
NumPy arrays (returning NumPy); :func:`random_rotation`, the one rotation sampler of equimol,
draws NumPy matrices from a NumPy generator. Nothing here imports the rest of equimol, so
models, transforms and analysis code can all use it.

The route from a distance matrix back to coordinates is:

1. :func:`classical_mds` -- double-centre the squared distances into a Gram matrix
   ``B = -1/2 J D^2 J`` (``J = I - 11^T/N``), take its top-``d`` eigenpairs, and return
   ``X = V sqrt(Lambda)``. ``X`` reproduces the distances but lives in an arbitrary frame
   (centred, rotated, possibly reflected: distances are blind to handedness).
2. :func:`kabsch` / :func:`kabsch_align` -- the rotation (proper, or improper when
   ``allow_reflection=True``) and translation that best superpose ``X`` on a reference.
3. :func:`rmsd` -- the root-mean-square deviation between the aligned set and the reference.
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = [
    "pairwise_distances",
    "classical_mds",
    "kabsch",
    "kabsch_align",
    "rmsd",
    "coordinates_from_distances",
    "random_rotation",
    "augment_batch",
]

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _as_tensor(x: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(tensor, was_numpy): NumPy input becomes a float64 tensor."""
    if isinstance(x, np.ndarray):
        return torch.as_tensor(x, dtype=torch.float64), True
    if isinstance(x, torch.Tensor):
        return x, False
    raise TypeError(f"expected a numpy array or torch tensor, got {type(x).__name__}")


def _back(x: torch.Tensor, was_numpy: bool) -> np.ndarray | torch.Tensor:
    return x.detach().cpu().numpy() if was_numpy else x


def pairwise_distances(pos: torch.Tensor, condensed: bool = False, sort: bool = False) -> torch.Tensor:
    """All pairwise distances, with a finite gradient everywhere.

    Args:
        pos: [..., N, d] positions (Å).
        condensed: return only the ``N (N - 1) / 2`` distances ``r_ij`` with ``i < j``, in the
            condensed (row-major) order of ``scipy.spatial.distance.pdist``.
        sort: return the condensed distances sorted ascending (implies ``condensed``):
            invariant to rotations, reflections, translations and permutations of the atoms;
            the gradient follows the sorting permutation.

    Returns:
        [..., N, N] distances (Å), exactly zero on the diagonal; [..., N (N - 1) / 2] with
        ``condensed`` or ``sort``. The diagonal is masked before the square root, and the
        squared distances are clamped at 1e-30, so back-propagation through coinciding points
        gives zeros, not NaN.
    """
    diff = pos.unsqueeze(-2) - pos.unsqueeze(-3)
    sq = (diff * diff).sum(-1)
    n = pos.shape[-2]
    eye = torch.eye(n, dtype=torch.bool, device=pos.device)
    sq = torch.where(eye, torch.ones_like(sq), sq)
    distances = torch.where(eye, torch.zeros_like(sq), sq.clamp_min(1e-30).sqrt())
    if not (condensed or sort):
        return distances
    i, j = torch.triu_indices(n, n, offset=1, device=pos.device)
    distances = distances[..., i, j]
    return distances.sort(dim=-1).values if sort else distances


def classical_mds(distances: Array, dim: int) -> Array:
    """Coordinates whose pairwise distances match ``distances`` (classical scaling).

    Args:
        distances: [..., N, N] symmetric distance matrix (Å), zero diagonal.
        dim: number of output dimensions ``d`` (2 or 3 for configurations).

    Returns:
        [..., N, d] centred coordinates (Å) in an arbitrary orientation and handedness.
        Negative eigenvalues (a matrix that is not exactly Euclidean, e.g. a decoder's output)
        are clipped to zero, which gives the best rank-``d`` Euclidean approximation of the
        Gram matrix.
    """
    d, was_numpy = _as_tensor(distances)
    n = d.shape[-1]
    if d.shape[-2] != n:
        raise ValueError(f"classical_mds: distances must be [..., N, N], got {tuple(d.shape)}")
    if not 1 <= dim <= n:
        raise ValueError(f"classical_mds: dim must be in [1, N={n}], got {dim}")
    sq = d * d
    # Double centring: B = -1/2 J D^2 J with J = I - 1/N.
    sq = sq - sq.mean(-1, keepdim=True) - sq.mean(-2, keepdim=True) + sq.mean((-1, -2), keepdim=True)
    gram = -0.5 * sq
    gram = 0.5 * (gram + gram.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(gram)  # ascending
    evals = evals[..., -dim:].flip(-1).clamp_min(0.0)
    evecs = evecs[..., -dim:].flip(-1)
    return _back(evecs * evals.sqrt().unsqueeze(-2), was_numpy)


def kabsch(
    mobile: torch.Tensor, reference: torch.Tensor, allow_reflection: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal superposition of ``mobile`` on ``reference`` (Kabsch algorithm, via SVD).

    Finds ``R`` and ``t`` minimising ``sum_i |R p_i + t - q_i|^2``.

    Args:
        mobile: [..., N, d] points ``p`` to move.
        reference: [..., N, d] target points ``q``, in the same atom order.
        allow_reflection: if True, ``R`` may be improper (``det R = -1``); use it for
            coordinates from :func:`classical_mds`, which cannot know the handedness. If False,
            ``R`` is a proper rotation (the sign of the last singular vector is flipped when
            needed).

    Returns:
        ``(R [..., d, d], t [..., d])``; apply as ``mobile @ R.transpose(-1, -2) + t``.
    """
    if mobile.shape != reference.shape:
        raise ValueError(
            f"kabsch: mobile {tuple(mobile.shape)} and reference {tuple(reference.shape)} differ"
        )
    mc = mobile.mean(-2, keepdim=True)
    rc = reference.mean(-2, keepdim=True)
    h = (mobile - mc).transpose(-1, -2) @ (reference - rc)  # [..., d, d]
    u, _, vh = torch.linalg.svd(h)
    v = vh.transpose(-1, -2)
    ut = u.transpose(-1, -2)
    if not allow_reflection:
        sign = torch.sign(torch.linalg.det(v @ ut))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        flip = torch.ones(h.shape[:-1], dtype=h.dtype, device=h.device)
        flip[..., -1] = sign
        v = v * flip.unsqueeze(-2)
    rot = v @ ut
    t = rc.squeeze(-2) - (mc @ rot.transpose(-1, -2)).squeeze(-2)
    return rot, t


def kabsch_align(mobile: Array, reference: Array, allow_reflection: bool = False) -> Array:
    """``mobile`` [..., N, d] moved onto ``reference`` [..., N, d] by :func:`kabsch`."""
    m, was_numpy = _as_tensor(mobile)
    r, _ = _as_tensor(reference)
    r = r.to(m.dtype)
    rot, t = kabsch(m, r, allow_reflection=allow_reflection)
    return _back(m @ rot.transpose(-1, -2) + t.unsqueeze(-2), was_numpy)


def rmsd(a: Array, b: Array) -> Array:
    """Root-mean-square deviation ``sqrt(mean_i |a_i - b_i|^2)`` over atoms.

    Args:
        a, b: [..., N, d] in the same frame and atom order (align first).

    Returns:
        [...] RMSD, same unit as the input.
    """
    ta, was_numpy = _as_tensor(a)
    tb, _ = _as_tensor(b)
    out = ((ta - tb.to(ta.dtype)) ** 2).sum(-1).mean(-1).sqrt()
    return _back(out, was_numpy)


def coordinates_from_distances(
    distances: Array, reference: Array, allow_reflection: bool = True
) -> Array:
    """Classical MDS of ``distances`` [..., N, N], then Kabsch-aligned onto ``reference``
    [..., N, d] (same atom order). Returns [..., N, d]."""
    ref, _ = _as_tensor(reference)
    x = classical_mds(distances, ref.shape[-1])
    return kabsch_align(x, reference, allow_reflection=allow_reflection)


def random_rotation(
    generator: np.random.Generator | int | None = None, planar: bool = False, size: int | None = None
) -> np.ndarray:
    """Proper rotations drawn uniformly: Haar measure on SO(3), or on SO(2) about the z axis.

    Args:
        generator: a NumPy generator (or a seed for one) to draw from.
        planar: rotate about the z axis only, by an angle uniform in [0, 2 pi), so the plane
            z = 0 is kept.
        size: number of rotations; ``None`` for a single one.

    Returns:
        [3, 3] (``size=None``) or [size, 3, 3] float64 matrices with determinant +1, drawn by
        :meth:`scipy.spatial.transform.Rotation.random`. Apply to row vectors as
        ``pos @ R.T``.
    """
    rng = np.random.default_rng(generator)
    if planar:
        angle = rng.uniform(0.0, 2.0 * math.pi, size=size)
        return Rotation.from_rotvec(np.multiply.outer(angle, [0.0, 0.0, 1.0])).as_matrix()
    return Rotation.random(size, random_state=rng).as_matrix()


def augment_batch(
    pos: torch.Tensor,
    box_length: float,
    dim: int,
    rotate: bool = True,
    permute: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random rotations about the box centre and random relabellings of ``pos [B, N, 3]`` Å.

    Rotations are about the z axis in 2D (``dim=2``) and uniform in 3D; each configuration
    gets its own rotation and permutation. Rotated configurations may leave the box: the
    augmentation is about the representation, not the physics (gravity and walls are not
    rotation invariant).
    """
    b, n, _ = pos.shape
    out = pos
    if rotate:
        # a NumPy generator seeded from the torch one, so ``generator`` fixes the rotations too
        seed = int(torch.randint(2**63 - 1, (), generator=generator))
        rot = torch.as_tensor(random_rotation(seed, planar=dim == 2, size=b), dtype=pos.dtype, device=pos.device)
        centre = pos.new_zeros(3)
        centre[:dim] = 0.5 * box_length
        out = (out - centre) @ rot.transpose(-1, -2) + centre
    if permute:
        perm = torch.argsort(torch.rand(b, n, generator=generator), dim=-1).to(pos.device)
        out = torch.gather(out, 1, perm.unsqueeze(-1).expand_as(out))
    return out
