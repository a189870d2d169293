"""Structures to graphs: the radius graph of an ``ase.Atoms`` as a PyG ``Data``.

The neighbour list comes from vesin (periodic, mixed-periodic and open boundaries, cells
smaller than the cutoff included). Only integer lattice shifts are stored, so that edge
vectors are recomputed from ``pos`` on every forward pass and forces follow from autograd.
"""

from __future__ import annotations

from typing import Literal, Mapping

import ase
import numpy as np
import torch
import vesin
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Data

from equimol import _keys as K

__all__ = ["radius_graph", "atoms_to_graph", "edge_vectors", "structure_arrays", "IsolatedAtomError"]


class IsolatedAtomError(ValueError):
    """Raised when an atom has no neighbour within the cutoff."""


def radius_graph(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool,
    cutoff: float,
    neighbour_list: vesin.NeighborList | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed radius graph with periodic images.

    Args:
        positions: [N, 3] Å.
        cell: [3, 3] Å, lattice vectors as rows (ignored along non-periodic directions).
        pbc: [3] bool, or one bool for all directions.
        cutoff: radius in Å; pairs with distance < cutoff are connected. 0 gives no edges.
        neighbour_list: a full vesin ``NeighborList`` of this cutoff to reuse (it keeps its
            buffers between calls: for many small structures in a row, as in MD); default a
            new one.

    Returns:
        edge_index: [2, E] int64, row 0 the neighbour j, row 1 the centre i.
        shifts: [E, 3] int64 lattice shifts S with ``r_ij = pos[j] - pos[i] + S @ cell``.
        Self-pairs at zero distance are excluded; an atom's own periodic images are kept.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    pbc_list = [bool(p) for p in np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))]
    if len(positions) == 0 or cutoff == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    calculator = neighbour_list or vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = calculator.compute(positions, cell, pbc_list, "ijS")
    edge_index = np.stack([j.astype(np.int64), i.astype(np.int64)])
    return edge_index, shifts.astype(np.int64)


def edge_vectors(
    pos: torch.Tensor,
    edge_index: torch.Tensor,
    edge_shift: torch.Tensor,
    cell: torch.Tensor,
    batch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Edge vectors ``pos[j] - pos[i] + shift @ cell`` of a graph or a batch of graphs.

    Args:
        pos: [N, 3] Å.
        edge_index: [2, E], row 0 neighbour j, row 1 centre i.
        edge_shift: [E, 3] lattice shifts (integer values, float dtype).
        cell: [B, 3, 3] Å (B = 1 for a single graph).
        batch: [N] structure index of each atom, or None for one structure.

    Returns:
        [E, 3] Å, differentiable with respect to ``pos`` and ``cell``.
    """
    j, i = edge_index[0], edge_index[1]
    # index_select rather than pos[j]: the same gather, several times faster on a CPU
    vectors = pos.index_select(0, j) - pos.index_select(0, i)
    if edge_shift.numel() == 0:
        return vectors
    shift = edge_shift.to(pos.dtype)
    if batch is None or cell.shape[0] == 1:
        return vectors + shift @ cell[0]
    # sum_k shift_k cell[b, k, :] as elementwise products: a batched product of E tiny
    # matrices is far slower, forward and backward
    edge_cell = cell.index_select(0, batch.index_select(0, i))
    return vectors + (shift.unsqueeze(2) * edge_cell).sum(1)


def structure_arrays(atoms: ase.Atoms, source: str = "structure") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``positions [N, 3]`` Å (float64), ``cell [3, 3]`` Å and ``pbc [3]`` (bool) of ``atoms``,
    checked: at least one atom, finite positions, a non-zero cell vector along every periodic
    axis (ValueError naming ``source`` otherwise). Positions and cell are the atoms' own arrays
    where their dtype allows (no copy): read them, do not modify them."""
    positions = np.asarray(atoms.arrays["positions"], dtype=np.float64)  # a view: callers only read it
    if len(positions) == 0:
        raise ValueError(f"{source}: the structure has no atoms")
    if not np.isfinite(positions).all():
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"{source}: non-finite positions (NaN or inf) at atom indices {bad.tolist()}")
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    for axis in np.nonzero(pbc)[0]:
        if np.linalg.norm(cell[axis]) == 0:
            raise ValueError(f"{source}: periodic along axis {axis} but the cell vector is zero")
    return positions, cell, pbc


def atoms_to_graph(
    atoms: ase.Atoms,
    cutoff: float,
    labels: Mapping[str, np.ndarray | float] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    on_isolated: Literal["error", "ignore"] = "error",
    source: str = "structure",
    neighbour_list: vesin.NeighborList | None = None,
) -> Data:
    """The radius graph of one structure, in the fields of ``equimol._keys``.

    Args:
        atoms: the structure (positions Å; cell and pbc as in ASE).
        cutoff: radius of the graph, Å.
        labels: optional ``energy`` (eV, scalar), ``forces`` ([N, 3] eV/Å) and ``stress``
            (eV/Å³, Voigt [6] or full [3, 3], ASE sign convention).
        dtype: floating dtype of positions, cell, shifts and labels.
        on_isolated: ``"error"`` raises :class:`IsolatedAtomError` if an atom has no
            neighbour within the cutoff (a model cannot learn its environment);
            ``"ignore"`` keeps such atoms (for example isolated-atom reference energies).
        source: a description of where the structure came from, used in error messages
            (for example ``"train.xyz, frame 12"``).
        neighbour_list: a vesin ``NeighborList`` of this cutoff to reuse (see :func:`radius_graph`).

    Returns:
        ``Data`` with ``pos [N,3]``, ``z [N]``, ``cell [1,3,3]``, ``pbc [1,3]``,
        ``edge_index [2,E]``, ``edge_shift [E,3]`` and the labels given.
    """
    if cutoff < 0 or not np.isfinite(cutoff):
        raise ValueError(f"cutoff must be a number of Å >= 0 (0: no edges), got {cutoff!r}")
    if on_isolated not in ("error", "ignore"):
        raise ValueError(f"on_isolated must be 'error' or 'ignore', got {on_isolated!r}")
    positions, cell, pbc = structure_arrays(atoms, source)
    edge_index, shifts = radius_graph(positions, cell, pbc, cutoff, neighbour_list)

    if on_isolated == "error" and len(atoms) > 1:
        has_neighbour = np.zeros(len(atoms), dtype=bool)
        has_neighbour[edge_index[1]] = True
        if not has_neighbour.all():
            lonely = np.nonzero(~has_neighbour)[0]
            raise IsolatedAtomError(
                f"{source}: atoms {lonely[:10].tolist()}{'...' if len(lonely) > 10 else ''} "
                f"have no neighbour within the cutoff of {cutoff} Å; increase the cutoff, "
                "fix the structure, or pass on_isolated='ignore'"
            )

    data = Data(
        pos=torch.tensor(positions, dtype=dtype),
        z=torch.tensor(atoms.get_atomic_numbers(), dtype=torch.int64),
        cell=torch.tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(pbc).unsqueeze(0),
        edge_index=torch.from_numpy(edge_index),
        edge_shift=torch.from_numpy(shifts).to(dtype),
    )
    for name, value in (labels or {}).items():
        setattr(data, name, _label_tensor(name, value, len(atoms), dtype, source))
    return data


def _label_tensor(name: str, value, n_atoms: int, dtype: torch.dtype, source: str) -> torch.Tensor:
    array = np.asarray(value, dtype=np.float64)
    if name == K.ENERGY:
        if array.size != 1:
            raise ValueError(f"{source}: energy must be one number, got shape {array.shape}")
        array = array.reshape(1)
    elif name == K.FORCES:
        if array.shape != (n_atoms, 3):
            raise ValueError(f"{source}: forces must have shape ({n_atoms}, 3), got {array.shape}")
    elif name == K.STRESS:
        if array.shape == (6,):
            array = voigt_6_to_full_3x3_stress(array)
        if array.shape != (3, 3):
            raise ValueError(f"{source}: stress must be Voigt (6,) or (3, 3), got {array.shape}")
        array = array.reshape(1, 3, 3)
    else:
        raise ValueError(f"{source}: unknown label {name!r}; expected one of {K.LABEL_KEYS}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{source}: label {name!r} contains NaN or inf")
    return torch.tensor(array, dtype=dtype)
