"""Hand-made features of fixed-size structures: the inputs of the baseline models.

A featurizer is a small ``torch.nn.Module`` without trainable parameters that maps a batch
of structures with the same number of atoms to one fixed-length vector each::

    features = featurizer(pos, z)     # pos: [B, N, 3] Å, z: [B, N] int64 -> [B, F]
    featurizer.num_features(N)        # F

Every featurizer is a differentiable torch function of the positions, so a model built on
it gets forces from autograd. They differ in the symmetries they build in:

=======================  ==========================  ===========  ========  ===========
name                     class                       translation  rotation  permutation
=======================  ==========================  ===========  ========  ===========
``positions``            AbsolutePositions           no           no        no
``distances``            PairwiseDistances           yes          yes       no
``inverse_distances``    InverseDistances            yes          yes       no
``sorted_distances``     SortedDistances             yes          yes       yes
``coulomb_eigenvalues``  CoulombMatrixEigenvalues    yes          yes       yes
``acsf``                 ACSF                        yes          yes       yes
=======================  ==========================  ===========  ========  ===========

(``yes`` under permutation means invariance under relabelling atoms together with their
atomic numbers; reflections are covered wherever rotations are.)

The featurizers compute all pairs (and, for :class:`ACSF`, all triplets) densely, which is
O(N^2) or O(N^3) per structure: meant for the small, fixed-size systems of the baselines
(N up to a few tens of atoms), not for condensed phases. Use :func:`to_dense_positions` to go
from a PyG batch (``pos [N_total, 3]``, ``batch [N_total]``) to ``[B, N, 3]``, and
:func:`featurizer_from_name` to build one from a config.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Sequence

import torch
from torch import nn
from torch_geometric.utils import to_dense_batch

from equimol.data.geometry import pairwise_distances
from equimol.nn import CosineCutoff

__all__ = [
    "Featurizer",
    "AbsolutePositions",
    "PairwiseDistances",
    "InverseDistances",
    "SortedDistances",
    "CoulombMatrixEigenvalues",
    "ACSF",
    "featurizer_from_name",
    "featurizer_names",
    "to_dense_positions",
    "to_dense_atomic_numbers",
]


# --------------------------------------------------------------------------------------
# PyG batch -> dense [B, N, ...]
# --------------------------------------------------------------------------------------


def _to_dense(x: torch.Tensor, batch: torch.Tensor | None, batch_size: int | None, what: str) -> torch.Tensor:
    if batch is None:
        return x.unsqueeze(0)
    dense, mask = to_dense_batch(x, batch, batch_size=batch_size)
    if not bool(mask.all()):
        counts = torch.bincount(batch, minlength=dense.shape[0]).tolist()
        raise ValueError(
            f"{what}: all structures in a batch must have the same number of atoms for a "
            f"fixed-size featurizer, got atom counts {sorted(set(counts))} "
            f"(per structure: {counts[:20]}{'...' if len(counts) > 20 else ''})"
        )
    return dense


def to_dense_positions(
    pos: torch.Tensor, batch: torch.Tensor | None = None, batch_size: int | None = None
) -> torch.Tensor:
    """Positions of a PyG batch of equally sized structures as one dense tensor.

    Args:
        pos: [N_total, 3] Å.
        batch: [N_total] int64 structure index of each atom (sorted, as PyG makes it),
            or None for a single structure.
        batch_size: B, if known (saves a device sync).

    Returns:
        [B, N, 3] Å, differentiable with respect to ``pos``.

    Raises:
        ValueError: if the structures do not all have the same number of atoms.
    """
    if pos.dim() != 2 or pos.shape[-1] != 3:
        raise ValueError(f"pos must have shape [N_total, 3], got {tuple(pos.shape)}")
    return _to_dense(pos, batch, batch_size, "to_dense_positions")


def to_dense_atomic_numbers(
    z: torch.Tensor, batch: torch.Tensor | None = None, batch_size: int | None = None
) -> torch.Tensor:
    """Atomic numbers ``z [N_total]`` of a PyG batch as ``[B, N]`` (same rules as positions)."""
    if z.dim() != 1:
        raise ValueError(f"z must have shape [N_total], got {tuple(z.shape)}")
    return _to_dense(z, batch, batch_size, "to_dense_atomic_numbers")


# --------------------------------------------------------------------------------------
# Base class and the pairwise featurizers
# --------------------------------------------------------------------------------------


class Featurizer(nn.Module):
    """Base class: ``forward(pos [B, N, 3] Å, z [B, N] int64) -> [B, F]``.

    Subclasses implement :meth:`features` and :meth:`num_features`; :meth:`forward`
    checks the shapes first.
    """

    def num_features(self, n_atoms: int) -> int:
        """F, the length of the feature vector of a structure with ``n_atoms`` atoms."""
        raise NotImplementedError

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Features of a batch of structures.

        Args:
            pos: [B, N, 3] Å.
            z: [B, N] int64 atomic numbers.

        Returns:
            [B, F] with F = ``num_features(N)``.
        """
        if pos.dim() != 3 or pos.shape[-1] != 3:
            raise ValueError(
                f"{type(self).__name__}: pos must have shape [B, N, 3] (use to_dense_positions "
                f"for a PyG batch), got {tuple(pos.shape)}"
            )
        if tuple(z.shape) != tuple(pos.shape[:2]):
            raise ValueError(
                f"{type(self).__name__}: z must have shape [B, N] = {tuple(pos.shape[:2])}, "
                f"got {tuple(z.shape)}"
            )
        return self.features(pos, z)


def _num_pairs(n_atoms: int) -> int:
    if n_atoms < 2:
        raise ValueError(f"a pairwise featurizer needs at least 2 atoms, got n_atoms={n_atoms}")
    return n_atoms * (n_atoms - 1) // 2


class AbsolutePositions(Featurizer):
    """The Cartesian coordinates themselves, flattened: ``[B, dims * N]`` Å.

    No symmetry at all: the classroom example of what augmentation has to make up for.

    Args:
        dims: 3 for x, y, z; 2 for x, y only (planar systems lying in the z = 0 plane).
    """

    def __init__(self, dims: int = 3) -> None:
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"AbsolutePositions: dims must be 2 or 3, got {dims!r}")
        self.dims = dims

    def num_features(self, n_atoms: int) -> int:
        return self.dims * n_atoms

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return pos[..., : self.dims].reshape(pos.shape[0], -1)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"


class PairwiseDistances(Featurizer):
    """All distances ``r_ij`` (Å), i < j, in the condensed order of ``scipy.spatial.distance.pdist``.

    Invariant under translations, rotations and reflections, not under permutations. The
    gradient is finite everywhere (zero for two atoms at the same place), see
    :func:`equimol.data.geometry.pairwise_distances`.
    """

    def num_features(self, n_atoms: int) -> int:
        return _num_pairs(n_atoms)

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return pairwise_distances(pos, condensed=True)


class InverseDistances(Featurizer):
    """``1 / r_ij`` (1/Å) in the order of :class:`PairwiseDistances`.

    A sum of pairwise Coulomb-like terms is linear in these features.
    """

    def num_features(self, n_atoms: int) -> int:
        return _num_pairs(n_atoms)

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return pairwise_distances(pos, condensed=True).reciprocal()


class SortedDistances(Featurizer):
    """Pairwise distances sorted in increasing order (Å): invariant under permutations too.

    Sorting is differentiable almost everywhere (it permutes the gradient); where two
    distances are equal the features are continuous but only piecewise smooth, so forces of a
    model on them can jump when two distances cross.
    """

    def num_features(self, n_atoms: int) -> int:
        return _num_pairs(n_atoms)

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return pairwise_distances(pos, sort=True)


class CoulombMatrixEigenvalues(Featurizer):
    """Eigenvalues of the Coulomb matrix (Rupp et al., PRL 108, 058301 (2012)), sorted descending.

    ``M_ii = 0.5 Z_i^2.4`` and ``M_ij = Z_i Z_j / r_ij`` (r in Å), so the features are in
    units of e^2/Å up to the usual convention. Invariant under translations, rotations,
    reflections and permutations; ``num_features(N) = N``.

    Gradients come from ``torch.linalg.eigvalsh``. They are exact for distinct eigenvalues
    but unstable (infinite in the limit) when two eigenvalues are degenerate, for example in
    symmetric configurations of identical atoms; the sorted spectrum is continuous but only
    piecewise smooth there.
    """

    def num_features(self, n_atoms: int) -> int:
        return n_atoms

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        charges = z.to(pos.dtype)
        eye = torch.eye(pos.shape[1], dtype=pos.dtype, device=pos.device)
        distances = pairwise_distances(pos) + eye  # 1 on the diagonal, which is masked
        off_diagonal = charges[:, :, None] * charges[:, None, :] / distances * (1 - eye)
        matrix = off_diagonal + torch.diag_embed(0.5 * charges.pow(2.4))
        return torch.flip(torch.linalg.eigvalsh(matrix), dims=[-1])


# --------------------------------------------------------------------------------------
# Atom-centred symmetry functions
# --------------------------------------------------------------------------------------


def _float_list(name: str, values: Sequence[float], positive: bool = False) -> list[float]:
    values = [float(v) for v in values]
    if not values:
        raise ValueError(f"ACSF: {name} must not be empty")
    if positive and any(v <= 0 for v in values):
        raise ValueError(f"ACSF: {name} must be positive, got {values}")
    return values


class ACSF(Featurizer):
    """Behler-Parrinello atom-centred symmetry functions, pooled over atoms.

    For each centre atom i (distances in Å, ``fc`` Behler's cosine cutoff
    ``0.5 (cos(pi r / rc) + 1)``, :class:`equimol.nn.CosineCutoff`):

    * radial ``G2_i = sum_j exp(-eta (r_ij - r_s)^2) fc(r_ij)``, one per shift ``r_s``;
    * angular ``G4_i = 2^(1 - zeta) sum_{j < k} (1 + lambda cos theta_ijk)^zeta
      exp(-eta (r_ij^2 + r_ik^2 + r_jk^2)) fc(r_ij) fc(r_ik) fc(r_jk)``, one per
      (eta, zeta, lambda) combination.

    With ``species`` given, the radial functions are resolved by the species of j and the
    angular ones by the unordered species pair {j, k}, and the per-atom vectors are pooled
    separately for each centre species, so the structure vector has
    ``len(species) * (n_radial * S + n_angular * S (S + 1) / 2)`` entries (S species);
    without, everything is species-agnostic and pooled over all atoms. The pooled vector is
    invariant under translations, rotations, reflections and permutations and does not
    depend on N (the feature count is the same for any size).

    All pairs and triplets are computed densely ([B, N, N] and [B, N, N, N] tensors), which
    is fine for the small fixed-size systems of the baselines (N up to about 30) and too
    costly for large ones.

    Args:
        cutoff: rc in Å.
        radial_shifts: ``r_s`` in Å; default 8 shifts evenly spaced from 0.5 Å to rc.
        radial_eta: width parameter of the radial Gaussians in 1/Å^2; default
            ``1 / spacing^2`` of the shifts.
        angular_etas: in 1/Å^2.
        zetas: angular resolutions, each >= 1.
        lambdas: each +1 or -1.
        species: atomic numbers to resolve, or None for species-agnostic functions.
        reduce: ``"sum"`` or ``"mean"`` over the atoms of a structure (of a centre species).
    """

    def __init__(
        self,
        cutoff: float = 5.0,
        radial_shifts: list[float] | None = None,
        radial_eta: float | None = None,
        angular_etas: list[float] = [0.05],  # noqa: B006 (never mutated; jsonargparse-friendly)
        zetas: list[float] = [1.0, 2.0, 4.0],  # noqa: B006
        lambdas: list[float] = [-1.0, 1.0],  # noqa: B006
        species: list[int] | None = None,
        reduce: str = "sum",
    ) -> None:
        super().__init__()
        if not (cutoff > 0 and math.isfinite(cutoff)):
            raise ValueError(f"ACSF: cutoff must be a positive number of Å, got {cutoff!r}")
        self.cutoff = float(cutoff)
        self.envelope = CosineCutoff(self.cutoff)
        shifts = (
            _float_list("radial_shifts", radial_shifts)
            if radial_shifts is not None
            else torch.linspace(0.5, self.cutoff, 8, dtype=torch.float64).tolist()
        )
        if radial_eta is None:
            spacing = (max(shifts) - min(shifts)) / max(len(shifts) - 1, 1) or 1.0
            radial_eta = 1.0 / spacing**2
        if radial_eta <= 0:
            raise ValueError(f"ACSF: radial_eta must be positive, got {radial_eta!r}")
        self.radial_eta = float(radial_eta)
        zetas = _float_list("zetas", zetas)
        if any(zeta < 1 for zeta in zetas):
            raise ValueError(f"ACSF: zetas must be >= 1 (smooth at cos = -lambda), got {zetas}")
        lambdas = _float_list("lambdas", lambdas)
        if any(lam not in (-1.0, 1.0) for lam in lambdas):
            raise ValueError(f"ACSF: lambdas must be +1 or -1, got {lambdas}")
        combos = list(itertools.product(_float_list("angular_etas", angular_etas, True), zetas, lambdas))
        self.angular_combos: list[tuple[float, float, float]] = combos  # (eta, zeta, lambda)
        if reduce not in ("sum", "mean"):
            raise ValueError(f"ACSF: reduce must be 'sum' or 'mean', got {reduce!r}")
        self.reduce = reduce
        if species is not None:
            species = sorted({int(s) for s in species})
            if not species or any(s < 1 or s > 118 for s in species):
                raise ValueError(f"ACSF: species must be atomic numbers 1..118, got {species}")
        self.species = species
        self.register_buffer("shifts", torch.tensor(shifts, dtype=torch.float64), persistent=False)
        # species -> channel index (-1 for species that are not resolved)
        lookup = torch.full((119,), -1, dtype=torch.long)
        if species is not None:
            lookup[torch.tensor(species)] = torch.arange(len(species))
        self.register_buffer("species_index", lookup, persistent=False)

    @property
    def n_species(self) -> int:
        return 1 if self.species is None else len(self.species)

    def num_features(self, n_atoms: int) -> int:
        s = self.n_species
        per_atom = len(self.shifts) * s + len(self.angular_combos) * s * (s + 1) // 2
        return s * per_atom

    def _one_hot(self, z: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, N] -> [B, N, S] species indicator (all ones column when species-agnostic)."""
        if self.species is None:
            return torch.ones(*z.shape, 1, dtype=dtype, device=z.device)
        if bool(((z < 0) | (z > 118)).any()):
            raise ValueError(f"ACSF: atomic numbers must be in 1..118, got {z.unique().tolist()}")
        index = self.species_index[z]
        if bool((index < 0).any()):
            unknown = sorted(set(z[index < 0].tolist()))
            raise ValueError(f"ACSF: atomic numbers {unknown} are not in species={self.species}")
        return nn.functional.one_hot(index, len(self.species)).to(dtype)

    def features(self, pos: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, n, _ = pos.shape
        dtype = pos.dtype
        onehot = self._one_hot(z, dtype)  # [B, N, S]
        s = onehot.shape[-1]
        eye = torch.eye(n, dtype=dtype, device=pos.device)
        vectors = pos[:, None, :, :] - pos[:, :, None, :]  # r_ij = pos_j - pos_i, [B, N, N, 3]
        r = pairwise_distances(pos) + eye  # [B, N, N]; 1 on the diagonal, which is masked
        not_self = 1.0 - eye
        fc = self.envelope(r) * not_self  # [B, i, j]

        # radial: [B, i, n_radial, S]
        gauss = torch.exp(-self.radial_eta * (r[..., None] - self.shifts.to(dtype)) ** 2)
        radial = torch.einsum("bijr,bij,bja->bira", gauss, fc, onehot).reshape(b, n, -1)

        # angular: cos theta_ijk between r_ij and r_ik, [B, i, j, k]
        unit = vectors / r[..., None]
        cos = torch.einsum("bijx,bikx->bijk", unit, unit)
        # exp(-eta (r_ij^2 + r_ik^2 + r_jk^2)) fc_ij fc_ik fc_jk = g_ij g_ik g_jk, which
        # vanishes unless i, j, k are distinct (fc is zero on the diagonal)
        triplet_weights = {}
        for eta in sorted({eta for eta, _, _ in self.angular_combos}):
            g = torch.exp(-eta * r * r) * fc  # [B, i, j]
            triplet_weights[eta] = g[:, :, :, None] * g[:, :, None, :] * g[:, None, :, :]
        bases = {lam: (1.0 + lam * cos).clamp_min(0.0) for lam in {lam for _, _, lam in self.angular_combos}}
        terms = torch.stack(
            [
                2.0 ** (1.0 - zeta) * bases[lam].pow(zeta) * triplet_weights[eta]
                for eta, zeta, lam in self.angular_combos
            ],
            dim=1,
        )  # [B, n_angular, i, j, k]
        pairs = torch.einsum("bcijk,bja,bkd->bicad", terms, onehot, onehot)  # ordered j, k
        upper_a, upper_d = torch.triu_indices(s, s, device=pos.device)
        # each unordered {j, k} appears twice in the ordered sum over species pair (a, a);
        # for a != d the ordered sum over (j in a, k in d) already counts it once.
        factor = torch.where(upper_a == upper_d, 0.5, 1.0).to(dtype)
        angular = (pairs[..., upper_a, upper_d] * factor).reshape(b, n, -1)

        per_atom = torch.cat([radial, angular], dim=-1)  # [B, N, per-atom features]
        pooled = torch.einsum("bia,bif->baf", onehot, per_atom)  # per centre species
        if self.reduce == "mean":
            pooled = pooled / onehot.sum(1).clamp_min(1.0)[..., None]
        return pooled.reshape(b, -1)

    def extra_repr(self) -> str:
        return (
            f"cutoff={self.cutoff}, n_radial={len(self.shifts)}, n_angular={len(self.angular_combos)}, "
            f"species={self.species}, reduce={self.reduce!r}"
        )


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

_FEATURIZERS: dict[str, type[Featurizer]] = {
    "positions": AbsolutePositions,
    "distances": PairwiseDistances,
    "inverse_distances": InverseDistances,
    "sorted_distances": SortedDistances,
    "coulomb_eigenvalues": CoulombMatrixEigenvalues,
    "acsf": ACSF,
}


def featurizer_names() -> list[str]:
    """The names :func:`featurizer_from_name` accepts."""
    return sorted(_FEATURIZERS)


def featurizer_from_name(name: str, **kwargs: Any) -> Featurizer:
    """Build a featurizer from its config name and constructor arguments.

    Args:
        name: one of :func:`featurizer_names` (``"positions"``, ``"distances"``,
            ``"inverse_distances"``, ``"sorted_distances"``, ``"coulomb_eigenvalues"``,
            ``"acsf"``).
        **kwargs: passed to the class (for example ``dims=2`` for ``"positions"``).

    Raises:
        ValueError: for an unknown name or arguments the class does not take.
    """
    try:
        cls = _FEATURIZERS[name]
    except KeyError:
        raise ValueError(
            f"unknown featurizer {name!r}; expected one of {featurizer_names()}"
        ) from None
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ValueError(f"featurizer {name!r} ({cls.__name__}): bad arguments {kwargs}: {error}") from error
