"""Symmetry transforms of one structure: rotations, reflections, permutations, translations.

Each transform is a PyG :class:`~torch_geometric.transforms.BaseTransform`: it takes one
structure (a ``Data`` with the fields of ``equimol._keys``, no ``batch``) and returns a
transformed copy, leaving the input untouched. Transforms compose with
``torch_geometric.transforms.Compose`` and can be given to a dataset for augmentation, or
applied once to build a transformed test set.

Everything that transforms moves together, so the labels of the transformed structure are
the labels the reference method would give it, and the radius graph stays valid without
being rebuilt:

=================  ===========================  ==============================================
transform          moves                        graph
=================  ===========================  ==============================================
:class:`Rotate`    ``pos``, ``forces`` and cell ``edge_index`` and ``edge_shift`` unchanged
                   rows as ``x -> R x``;        (the cell turns with the atoms, so every
                   ``stress -> R S R^T``        lattice shift still names the same image)
:class:`Permute`   every per-atom field (``pos``, ``edge_index`` relabelled, each
                   ``z``, ``forces``, ...)      ``edge_shift`` stays with its edge
:class:`Translate` ``pos`` only                 unchanged (edge vectors are differences)
=================  ===========================  ==============================================

Energies are invariant under all of them. Random versions (:class:`RandomRotation`,
:class:`RandomReflection`, :class:`RandomPermutation`, :class:`RandomTranslation`) own a
seeded generator and expose :meth:`sample`, the fixed transform they apply next, so a caller
can know exactly which symmetry operation was used.

A planar (2D) system is a 3D system with ``z = 0``; the ``planar`` options keep it so.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from equimol import _keys as K
from equimol.data.geometry import random_rotation

__all__ = [
    "Rotate",
    "Reflect",
    "Permute",
    "Translate",
    "RandomRotation",
    "RandomReflection",
    "RandomPermutation",
    "RandomTranslation",
    "rotation_about_axis",
    "reflection_matrix",
    "random_reflection_matrix",
]

#: Per-atom fields that a permutation reorders, besides any other attribute PyG sees as a
#: node attribute (first dimension N).
_ATOM_KEYS = (K.POS, K.ATOMIC_NUMBERS, K.FORCES, K.PER_ATOM_ENERGY)
#: Fields that are never per-atom, whatever their shape.
_NOT_ATOM_KEYS = (K.CELL, K.PBC, K.ENERGY, K.STRESS, K.EDGE_INDEX, K.EDGE_SHIFT, "ptr")


# ----------------------------------------------------------------------------------------
# matrices


def rotation_about_axis(axis: Sequence[float], angle: float) -> np.ndarray:
    """The proper rotation by ``angle`` (radians, right-handed) about ``axis``.

    Args:
        axis: [3] direction of the axis (any non-zero length).
        angle: rotation angle in radians.

    Returns:
        [3, 3] float64 matrix R acting as ``r -> R r``. ``rotation_about_axis([0, 0, 1],
        np.pi / 2)`` turns the x axis into the y axis and keeps a planar system planar.
    """
    axis_array = np.asarray(axis, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(axis_array) if axis_array.shape == (3,) else 0.0
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"rotation axis must be a finite non-zero 3-vector, got {axis!r}")
    return Rotation.from_rotvec(axis_array / norm * float(angle)).as_matrix()


def reflection_matrix(normal: Sequence[float]) -> np.ndarray:
    """The Householder reflection ``I - 2 n n^T`` through the plane with unit normal ``n``.

    Args:
        normal: [3] normal of the mirror plane (any non-zero length).

    Returns:
        [3, 3] float64 orthogonal matrix with determinant -1.
    """
    n = np.asarray(normal, dtype=np.float64).reshape(-1)
    norm = np.linalg.norm(n) if n.shape == (3,) else 0.0
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"reflection normal must be a finite non-zero 3-vector, got {normal!r}")
    n = n / norm
    return np.eye(3) - 2.0 * np.outer(n, n)


def random_reflection_matrix(generator: np.random.Generator, planar: bool = False) -> np.ndarray:
    """An improper rotation drawn uniformly from the det = -1 part of O(3) (or of O(2)).

    A uniform rotation times a fixed mirror: ``R @ diag(1, 1, -1)`` in 3D, and
    ``R_z @ diag(-1, 1, 1)`` in the plane (a mirror line within the plane, so ``z = 0`` stays).

    Returns:
        [3, 3] float64 orthogonal matrix with determinant -1.
    """
    mirror = np.diag([-1.0, 1.0, 1.0]) if planar else np.diag([1.0, 1.0, -1.0])
    return random_rotation(generator, planar=planar) @ mirror


# ----------------------------------------------------------------------------------------
# fixed transforms


def _check_single_structure(data: Data, transform: str) -> None:
    if not isinstance(data, Data):
        raise TypeError(f"{transform} acts on a torch_geometric Data, got {type(data).__name__}")
    if getattr(data, K.BATCH, None) is not None:
        raise ValueError(
            f"{transform} acts on a single structure, but the Data has a '{K.BATCH}' field "
            "(a Batch); apply it to each structure (batch.to_data_list()) before batching"
        )
    if getattr(data, K.POS, None) is None:
        raise ValueError(f"{transform}: the Data has no '{K.POS}' field")


class Rotate(BaseTransform):
    """Apply a fixed orthogonal matrix ``R`` to the structure, ``r -> R r``.

    ``pos [N,3] -> pos @ R^T``, ``forces [N,3] -> forces @ R^T``, ``cell [1,3,3] -> cell @ R^T``
    (lattice vectors are rows), ``stress [1,3,3] -> R S R^T``. ``edge_shift`` is unchanged:
    the cell rotates with the atoms, so ``pos[j] - pos[i] + S @ cell`` rotates too. The energy
    is unchanged. ``R`` may be proper (det +1) or improper (det -1, a rotation-reflection).
    Other fields are left as they are.

    Args:
        matrix: [3, 3] orthogonal matrix (array or tensor); stored in float64 and cast to the
            dtype of each structure when applied.
    """

    def __init__(self, matrix: np.ndarray | torch.Tensor | Sequence[Sequence[float]]) -> None:
        array = np.asarray(
            matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else matrix,
            dtype=np.float64,
        )
        if array.shape != (3, 3) or not np.all(np.isfinite(array)):
            raise ValueError(f"{type(self).__name__}: matrix must be a finite 3x3 array, got shape {array.shape}")
        deviation = np.abs(array @ array.T - np.eye(3)).max()
        if deviation > 1e-6:
            raise ValueError(
                f"{type(self).__name__}: matrix is not orthogonal (max |R R^T - I| = {deviation:.2e}); "
                "only rotations and reflections preserve distances"
            )
        self.matrix = torch.from_numpy(array)

    @property
    def determinant(self) -> float:
        """+1 for a proper rotation, -1 for an improper one."""
        return float(torch.linalg.det(self.matrix))

    def forward(self, data: Data) -> Data:
        _check_single_structure(data, type(self).__name__)
        data = copy.copy(data)
        pos = data[K.POS]
        rotation = self.matrix.to(dtype=pos.dtype, device=pos.device)
        data[K.POS] = pos @ rotation.T
        if getattr(data, K.FORCES, None) is not None:
            data[K.FORCES] = data[K.FORCES] @ rotation.T
        if getattr(data, K.CELL, None) is not None:
            data[K.CELL] = data[K.CELL] @ rotation.T
        if getattr(data, K.STRESS, None) is not None:
            data[K.STRESS] = rotation @ data[K.STRESS] @ rotation.T
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(matrix={self.matrix.numpy().round(6).tolist()})"


class Reflect(Rotate):
    """Mirror the structure through the plane through the origin with normal ``normal``.

    The Householder matrix ``I - 2 n n^T`` (determinant -1) applied as in :class:`Rotate`.
    A planar system stays planar for a normal in the xy plane.

    Args:
        normal: [3] normal of the mirror plane (any non-zero length).
    """

    def __init__(self, normal: Sequence[float]) -> None:
        self.normal = tuple(float(x) for x in np.asarray(normal, dtype=np.float64).reshape(-1))
        super().__init__(reflection_matrix(normal))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normal={self.normal})"


class Permute(BaseTransform):
    """Reorder the atoms: new atom ``k`` is old atom ``permutation[k]`` (like ``atoms[perm]``).

    Every per-atom field moves with its atom (``pos``, ``z``, ``forces``, ``per_atom_energy``
    and any other attribute whose first dimension is N, edge fields excepted), so species
    travel with their atoms and the energy is unchanged. ``edge_index`` is relabelled through the inverse permutation
    (old atom ``a`` becomes atom ``inverse[a]``) and each ``edge_shift`` stays with its edge,
    so the edge vectors are exactly the old ones.

    Args:
        permutation: [N] a permutation of ``0..N-1``.
    """

    def __init__(self, permutation: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        array = np.asarray(
            permutation.detach().cpu().numpy() if isinstance(permutation, torch.Tensor) else permutation
        ).reshape(-1)
        n = len(array)
        if n == 0 or array.dtype.kind not in "iu" or not np.array_equal(np.sort(array), np.arange(n)):
            raise ValueError(
                f"Permute: permutation must be integers containing each of 0..{max(n - 1, 0)} "
                f"exactly once, got {array[:20].tolist()}{'...' if n > 20 else ''}"
            )
        perm = torch.from_numpy(array.astype(np.int64))
        self.permutation = perm
        self.inverse = torch.empty_like(perm)
        self.inverse[perm] = torch.arange(n)

    def forward(self, data: Data) -> Data:
        _check_single_structure(data, "Permute")
        n_atoms = data[K.POS].shape[0]
        if self.permutation.numel() != n_atoms:
            raise ValueError(
                f"Permute: the permutation has length {self.permutation.numel()} but the "
                f"structure has {n_atoms} atoms"
            )
        data = copy.copy(data)
        perm = self.permutation.to(data[K.POS].device)
        for key in _atom_keys(data, n_atoms):
            data[key] = data[key][perm]
        if getattr(data, K.EDGE_INDEX, None) is not None:
            data[K.EDGE_INDEX] = self.inverse.to(data[K.EDGE_INDEX].device)[data[K.EDGE_INDEX]]
        return data

    def __repr__(self) -> str:
        shown = self.permutation[:10].tolist()
        return f"Permute(permutation={shown}{'...' if self.permutation.numel() > 10 else ''})"


def _atom_keys(data: Data, n_atoms: int) -> list[str]:
    keys = []
    for key, value in data.items():
        if key in _NOT_ATOM_KEYS or "edge" in key:
            continue
        if key in _ATOM_KEYS or (
            isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n_atoms
        ):
            keys.append(key)
    return keys


class Translate(BaseTransform):
    """Shift all atoms by ``vector`` (Å). Only ``pos`` changes.

    Periodic graphs stay valid: edge vectors are differences of positions plus lattice
    shifts, and atoms that leave the cell are not wrapped back.

    Args:
        vector: [3] displacement in Å.
    """

    def __init__(self, vector: Sequence[float] | np.ndarray | torch.Tensor) -> None:
        array = np.asarray(
            vector.detach().cpu().numpy() if isinstance(vector, torch.Tensor) else vector,
            dtype=np.float64,
        ).reshape(-1)
        if array.shape != (3,) or not np.all(np.isfinite(array)):
            raise ValueError(f"Translate: vector must be a finite 3-vector, got {vector!r}")
        self.vector = torch.from_numpy(array)

    def forward(self, data: Data) -> Data:
        _check_single_structure(data, "Translate")
        data = copy.copy(data)
        pos = data[K.POS]
        data[K.POS] = pos + self.vector.to(dtype=pos.dtype, device=pos.device)
        return data

    def __repr__(self) -> str:
        return f"Translate(vector={self.vector.tolist()})"


# ----------------------------------------------------------------------------------------
# random transforms


class _RandomTransform(BaseTransform):
    """A transform drawn afresh for every structure from the instance's own generator.

    With ``seed=None`` the generator is seeded, at its first use, from PyTorch's global seed
    (``torch.initial_seed()``, which ``seed_everything`` sets), so one seed in a config fixes
    the augmentation too. Inside a ``DataLoader`` worker the generator is re-seeded once from
    that seed and the worker's seed (which PyTorch derives from the loader's generator), so
    that workers do not draw the same operations. Under ``torch.distributed`` the rank is mixed
    in, so processes do not draw the same operations either.
    """

    def __init__(self, seed: int | None) -> None:
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{type(self).__name__}: seed must be a non-negative integer or None, got {seed!r}")
        self.seed = seed
        self._generator: np.random.Generator | None = None
        self._worker: tuple[int, int] | None = None

    def _entropy(self) -> list[int]:
        seed = int(self.seed) if self.seed is not None else torch.initial_seed()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return [seed, rank]

    @property
    def generator(self) -> np.random.Generator:
        """This transform's NumPy generator (per DataLoader worker and process)."""
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != (info.id, info.seed):
            self._generator = np.random.default_rng([*self._entropy(), info.seed])
            self._worker = (info.id, info.seed)
        elif self._generator is None:
            self._generator = np.random.default_rng(self._entropy())
        return self._generator

    def sample(self, data: Data | None = None) -> BaseTransform:
        """The fixed transform that the next call applies (advances the generator)."""
        raise NotImplementedError

    def forward(self, data: Data) -> Data:
        _check_single_structure(data, type(self).__name__)
        return self.sample(data).forward(data)


class _RandomOrthogonal(_RandomTransform):
    """Apply an orthogonal matrix drawn by ``draw(generator, planar=...)`` to each structure."""

    draw: Callable[..., np.ndarray]

    def __init__(self, planar: bool = False, seed: int | None = None) -> None:
        super().__init__(seed)
        self.planar = bool(planar)

    def sample(self, data: Data | None = None) -> Rotate:
        return Rotate(self.draw(self.generator, planar=self.planar))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(planar={self.planar}, seed={self.seed})"


class RandomRotation(_RandomOrthogonal):
    """Rotate each structure by a proper rotation drawn uniformly from SO(3).

    Args:
        planar: rotate about the z axis only (uniform angle), for 2D systems in the xy plane.
        seed: seed of this transform's own NumPy generator (``None``: fresh entropy).
    """

    draw = staticmethod(random_rotation)


class RandomReflection(_RandomOrthogonal):
    """Apply an improper rotation drawn uniformly from the det = -1 part of O(3).

    Args:
        planar: mirror within the xy plane (a mirror line times a rotation about z).
        seed: seed of this transform's own NumPy generator (``None``: fresh entropy).
    """

    draw = staticmethod(random_reflection_matrix)


class RandomPermutation(_RandomTransform):
    """Reorder the atoms of each structure at random (see :class:`Permute`).

    Args:
        same_species_only: permute only among atoms of equal atomic number, so the list of
            species is unchanged (default); ``False`` shuffles all atoms (species travel
            with their atoms either way).
        seed: seed of this transform's own NumPy generator (``None``: fresh entropy).
    """

    def __init__(self, same_species_only: bool = True, seed: int | None = None) -> None:
        super().__init__(seed)
        self.same_species_only = bool(same_species_only)

    def sample(self, data: Data | None = None) -> Permute:
        if data is None:
            raise ValueError("RandomPermutation.sample needs the structure (its atoms and species)")
        z = data[K.ATOMIC_NUMBERS].detach().cpu().numpy()
        n_atoms = data[K.POS].shape[0]
        if not self.same_species_only:
            return Permute(self.generator.permutation(n_atoms))
        permutation = np.arange(n_atoms)
        for species in np.unique(z):
            members = np.nonzero(z == species)[0]
            permutation[members] = self.generator.permutation(members)
        return Permute(permutation)

    def __repr__(self) -> str:
        return f"RandomPermutation(same_species_only={self.same_species_only}, seed={self.seed})"


class RandomTranslation(_RandomTransform):
    """Shift each structure by a vector uniform in the cube ``[-scale, scale]^3`` (Å).

    Args:
        scale: half-width of the cube, Å.
        planar: keep the z component zero (2D systems).
        seed: seed of this transform's own NumPy generator (``None``: fresh entropy).
    """

    def __init__(self, scale: float = 1.0, planar: bool = False, seed: int | None = None) -> None:
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"RandomTranslation: scale must be a non-negative number of Å, got {scale!r}")
        super().__init__(seed)
        self.scale = float(scale)
        self.planar = bool(planar)

    def sample(self, data: Data | None = None) -> Translate:
        vector = self.generator.uniform(-self.scale, self.scale, size=3)
        if self.planar:
            vector[2] = 0.0
        return Translate(vector)

    def __repr__(self) -> str:
        return f"RandomTranslation(scale={self.scale}, planar={self.planar}, seed={self.seed})"
