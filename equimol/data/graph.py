"""Structures to graphs: the radius graph of an ``ase.Atoms`` as a PyG ``Data``.

The neighbour list comes from vesin (periodic, mixed-periodic and open boundaries, cells
smaller than the cutoff included). Only integer lattice shifts are stored, so that edge
vectors are recomputed from ``pos`` on every forward pass and forces follow from autograd.

Every structure is checked before its neighbour list is built, and every error names the
structure's source (``"train.xyz, frame 12"``): finite positions, a cell whose periodic vectors
span as many dimensions as there are periodic axes, a cutoff that gives a graph of sensible
size (:data:`MAX_EDGES`, :data:`MAX_NEIGHBOURS`), and no two atoms closer than ``min_distance``
(:data:`DEFAULT_MIN_DISTANCE`). The cost of the neighbour list does not grow with the cutoff
beyond the structure's own size: along non-periodic axes no pair is farther apart than the
atoms' extent, so the search radius of an open structure is cut to just above that extent,
and the open axes of a mixed-periodic cell are replaced by vacuum vectors longer than the
cutoff plus the extent (no periodic image along them is ever within the cutoff). Positions are
wrapped into periodic cells before vesin sees them, and a box so long or flat that vesin
could not share it out into bins of the cutoff's width is searched with a wider radius whose
extra pairs are dropped. None of this changes the graph: it keeps every pair with distance
< cutoff. A structure too spread out for any search (an atom 1e30 Å away) is an error.
"""

from __future__ import annotations

import math
from typing import Literal, Mapping

import ase
import numpy as np
import torch
import vesin
from ase.stress import voigt_6_to_full_3x3_stress
from torch_geometric.data import Data

from equimol import _keys as K

__all__ = [
    "radius_graph",
    "atoms_to_graph",
    "edge_vectors",
    "structure_arrays",
    "estimated_edge_count",
    "IsolatedAtomError",
    "CloseAtomsError",
    "DEFAULT_MIN_DISTANCE",
    "MAX_EDGES",
    "MAX_NEIGHBOURS",
]

#: Default smallest distance, Å, that two atoms (or an atom and a periodic image) may have:
#: far below any physical contact (the H2 bond is 0.74 Å; even hot molecular dynamics rarely
#: brings two nuclei within 0.5 Å), far above the overlaps of broken data (a duplicated atom,
#: a frame written twice into one structure, a wrapping error).
DEFAULT_MIN_DISTANCE = 0.1

#: The most edges one structure's graph may have, as estimated from the cutoff and the
#: atom density before the neighbour list is built (about 16 GB of neighbour-list and graph
#: arrays); a larger estimate is an error naming the cutoff.
MAX_EDGES = 200_000_000

#: The most neighbours an atom may have on average, estimated the same way: a cutoff that
#: gives more (100 times the neighbours of a 15 Å cutoff in a dense solid) is a mistake.
MAX_NEIGHBOURS = 100_000

# Extra length, Å, of the search radius of open structures and of the vacuum vectors that
# stand in for non-periodic axes, beyond the extent of the atoms: no rounding can then make a
# pair inside the extent look farther apart than the radius.
_MARGIN = 1.0

# Periodic cell vectors whose d-volume, relative to the product of their lengths, is below
# this are linearly dependent (a cube has 1; a cell skewed to 1e-8 has no numerical meaning).
_DEGENERATE = 1e-8


class IsolatedAtomError(ValueError):
    """Raised when an atom has no neighbour within the cutoff."""


class CloseAtomsError(ValueError):
    """Raised when two atoms (or an atom and a periodic image) are closer than ``min_distance``."""


def radius_graph(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray | bool,
    cutoff: float,
    neighbour_list: vesin.NeighborList | None = None,
    *,
    source: str = "structure",
    max_edges: int = MAX_EDGES,
) -> tuple[np.ndarray, np.ndarray]:
    """Directed radius graph with periodic images.

    Args:
        positions: [N, 3] Å.
        cell: [3, 3] Å, lattice vectors as rows (ignored along non-periodic directions).
        pbc: [3] bool, or one bool for all directions.
        cutoff: radius in Å; pairs with distance < cutoff are connected. 0 gives no edges.
        neighbour_list: a full vesin ``NeighborList`` of this cutoff to reuse (it keeps its
            buffers between calls: for many small structures in a row, as in MD); default a
            new one, as when the search needs another radius (see the module docstring).
        source: where the structure came from, for error messages.
        max_edges: the most edges the graph may have (see :func:`estimated_edge_count`),
            and the most steps the neighbour search may take; an atom may have at most
            :data:`MAX_NEIGHBOURS` neighbours on average.

    Returns:
        edge_index: [2, E] int64, row 0 the neighbour j, row 1 the centre i.
        shifts: [E, 3] int64 lattice shifts S with ``r_ij = pos[j] - pos[i] + S @ cell``
        (0 along non-periodic axes).
        Self-pairs at zero distance are excluded; an atom's own periodic images are kept.

    Raises:
        ValueError: a negative or non-finite cutoff, a degenerate cell (periodic vectors that
            are zero or linearly dependent), a cutoff that would give more than ``max_edges``
            edges or ``MAX_NEIGHBOURS`` per atom, or atoms so spread out (an atom 1e30 Å
            away, or a million cells away from a periodic cell) that no neighbour search could
            cover them; the message names ``source``.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.ascontiguousarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = np.array(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    cutoff = _check_cutoff(cutoff)
    if len(positions) and cutoff > 0:
        _check_cell(cell, periodic, source)
    edge_index, shifts, _ = _radius_graph(positions, cell, periodic, cutoff, neighbour_list, source, max_edges)
    return edge_index, shifts


def _radius_graph(
    positions: np.ndarray,
    cell: np.ndarray,
    periodic: np.ndarray,
    cutoff: float,
    neighbour_list: vesin.NeighborList | None,
    source: str,
    max_edges: int = MAX_EDGES,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`radius_graph` of checked arrays (float64 positions, a non-degenerate cell, [3]
    bool ``periodic``), with the edges' lengths [E] Å as well."""
    if len(positions) == 0 or cutoff == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64), np.zeros(0)
    positions = np.ascontiguousarray(positions)
    n = len(positions)
    limit = min(max_edges, MAX_NEIGHBOURS * n)
    # an open structure has at most n (n - 1) edges: most need no estimate
    estimate = 0.0
    if periodic.any() or n * (n - 1) > limit:
        estimate = estimated_edge_count(positions, cell, periodic, cutoff)
    if estimate > limit:
        raise ValueError(
            f"{source}: a cutoff of {cutoff:g} Å would give about {estimate:.2g} edges for "
            f"{len(positions)} atoms ({int(periodic.sum())} periodic axes), more than a graph may "
            f"have ({max_edges:.2g} edges, {MAX_NEIGHBOURS:.2g} neighbours per atom); use a "
            "smaller cutoff (the model's, a few Å)"
        )

    extent = _extent(positions)
    if not periodic.any():
        box, box_pbc, points, wraps = cell, [False, False, False], positions, None
        # every pair is within `extent`: a larger search radius finds the same pairs, slower
        radius = extent + _MARGIN if cutoff > 2.0 * (extent + _MARGIN) else cutoff
        # vesin's bins span the bounding box (widened by 1 %, at least 1 Å wide)
        faces = np.maximum(1.01 * np.ptp(positions, axis=0), 1.01)
        fractional = (positions - positions.min(axis=0)) / faces
    else:
        box = cell if periodic.all() else _vacuum_cell(cell, periodic, positions, cutoff)
        box_pbc, radius = [True, True, True], cutoff
        points, wraps, fractional = _wrap(positions, box, source)
        faces = _heights(box)
    search = _search_radius(faces, radius)
    work = _search_steps(faces, search)
    if search > radius:  # a very long or flat box: vesin's bins must be wider than the cutoff
        pairs = max(_same_bin_pairs(fractional, faces, search), estimated_edge_count(points, box, box_pbc, search))
        work = max(work, pairs)
    if work > max_edges:
        raise ValueError(
            f"{source}: the atoms are too spread out for a neighbour list: they span "
            f"{extent:.3g} Å ({len(positions)} atoms, cutoff {cutoff:g} Å), and a search over "
            f"them would take about {work:.2g} steps; is an atom far out of place?"
        )
    if neighbour_list is None or float(neighbour_list.cutoff) != search:
        neighbour_list = vesin.NeighborList(cutoff=search, full_list=True)
    i, j, shifts, distances = neighbour_list.compute(points, box, box_pbc, "ijSd")
    if search > cutoff:
        keep = distances < cutoff
        i, j, shifts, distances = i[keep], j[keep], shifts[keep], distances[keep]
    i, j, shifts = i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)
    if wraps is not None:  # from the wrapped positions back to the positions as given
        shifts += wraps[i] - wraps[j]
    if (~periodic).any() and shifts[:, ~periodic].any():  # impossible: the vacuum is wide enough
        raise RuntimeError(f"{source}: the neighbour list gave a lattice shift along a non-periodic axis")
    return np.stack([j, i]), shifts, distances


def estimated_edge_count(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray | bool, cutoff: float) -> float:
    """About how many directed edges the radius graph of ``cutoff`` Å has, without building it.

    Periodic along all axes: ``N * (N / V) * 4/3 pi r^3``. With ``d`` < 3 periodic axes the
    smaller of two counts: ``N^2`` times the lattice images within the cutoff (the d-ball
    over the d-volume of the periodic cell, 1 image with no periodic axis), and ``N`` times
    the mean density of the atoms' bounding slab, wire or box times the sphere's volume.
    An open structure has at most ``N (N - 1)`` edges.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    periodic = np.array(np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)))
    n = float(len(positions))
    r = np.float64(cutoff)
    with np.errstate(over="ignore"):  # a cutoff of 1e300 Å: infinitely many edges
        sphere = 4.0 / 3.0 * np.pi * r**3
    lattice = cell[periodic]
    d = len(lattice)
    measure = _measure(lattice)
    if measure == 0.0:
        return np.inf
    with np.errstate(over="ignore"):
        if d == 3:
            return float(n * n / measure * sphere)
        ball = (1.0, 2.0 * r, np.pi * r**2)[d]
        by_images = n * n * ball / measure
    complement = _orthonormal_complement(lattice)
    spans = np.ptp(positions @ complement.T, axis=0) if len(positions) else np.zeros(3 - d)
    region = measure * float(np.prod(spans))
    with np.errstate(over="ignore"):
        by_density = n * n / region * sphere if region > 0 else np.inf
    estimate = float(min(by_images, by_density))
    return min(estimate, n * (n - 1.0)) if d == 0 else estimate


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
    checked: at least one atom, finite positions, finite, non-zero and linearly independent
    cell vectors along the periodic axes (ValueError naming ``source`` otherwise). Positions
    and cell are the atoms' own arrays where their dtype allows (no copy): read them, do not
    modify them."""
    positions = np.asarray(atoms.arrays["positions"], dtype=np.float64)  # a view: callers only read it
    if len(positions) == 0:
        raise ValueError(f"{source}: the structure has no atoms")
    if not np.isfinite(positions).all():
        bad = np.unique(np.nonzero(~np.isfinite(positions))[0])
        raise ValueError(f"{source}: non-finite positions (NaN or inf) at atom indices {bad.tolist()}")
    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    _check_cell(cell, pbc, source)
    return positions, cell, pbc


def atoms_to_graph(
    atoms: ase.Atoms,
    cutoff: float,
    labels: Mapping[str, np.ndarray | float] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    on_isolated: Literal["error", "ignore"] = "error",
    min_distance: float = DEFAULT_MIN_DISTANCE,
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
        min_distance: the smallest distance, Å, two atoms may have (periodic images
            included); a closer pair raises :class:`CloseAtomsError` naming both atoms and
            their distance. 0 turns the check off. Default :data:`DEFAULT_MIN_DISTANCE`.
        source: a description of where the structure came from, used in error messages
            (for example ``"train.xyz, frame 12"``).
        neighbour_list: a vesin ``NeighborList`` of this cutoff to reuse (see :func:`radius_graph`).

    Returns:
        ``Data`` with ``pos [N,3]``, ``z [N]``, ``cell [1,3,3]``, ``pbc [1,3]``,
        ``edge_index [2,E]``, ``edge_shift [E,3]`` and the labels given.

    Raises:
        ValueError: the structure or a label is malformed (see :func:`structure_arrays`
            and :func:`radius_graph`); :class:`CloseAtomsError` and
            :class:`IsolatedAtomError` are ValueErrors too. Every message names ``source``.
    """
    cutoff = _check_cutoff(cutoff)
    min_distance = _check_cutoff(min_distance, "min_distance", "0: no check")
    if on_isolated not in ("error", "ignore"):
        raise ValueError(f"on_isolated must be 'error' or 'ignore', got {on_isolated!r}")
    positions, cell, pbc = structure_arrays(atoms, source)
    edge_index, shifts, lengths = _radius_graph(positions, cell, pbc, cutoff, neighbour_list, source)

    if min_distance > 0:
        near = (edge_index, shifts, lengths)
        if cutoff < min_distance:  # the graph does not reach as far as the check: a list of its own,
            # searched at 1 Å at least (a 0.1 Å search cuts a molecule's box into ~10^5 bins)
            near = _radius_graph(positions, cell, pbc, max(min_distance, _MIN_DISTANCE_SEARCH), None, source)
        _check_min_distance(*near, min_distance, source)

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


#: Radius, Å, of the neighbour search of the close-atoms check when the graph's cutoff is shorter.
_MIN_DISTANCE_SEARCH = 1.0


def _check_min_distance(
    edge_index: np.ndarray, shifts: np.ndarray, lengths: np.ndarray, min_distance: float, source: str
) -> None:
    """:class:`CloseAtomsError` naming the closest pair if an edge is shorter than
    ``min_distance``; the edges must cover every pair closer than ``min_distance``."""
    close = lengths < min_distance
    if not close.any():
        return
    j, i = edge_index
    # the closest pair; among equals the first (i < j) in index order
    candidates = np.nonzero(lengths == lengths[close].min())[0]
    k = candidates[np.lexsort((j[candidates], i[candidates]))][0]
    first, second, distance, shift = int(i[k]), int(j[k]), float(lengths[k]), shifts[k]
    if first == second:
        what = f"atom {first} is {distance:.4g} Å from its own periodic image (lattice shift {shift.tolist()})"
    elif shift.any():
        what = (
            f"atoms {first} and {second} (its periodic image at lattice shift {shift.tolist()}) "
            f"are {distance:.4g} Å apart"
        )
    else:
        what = f"atoms {first} and {second} are {distance:.4g} Å apart"
    pairs = int(close.sum()) // 2
    others = f" ({pairs} pairs closer than that)" if pairs > 1 else ""
    raise CloseAtomsError(
        f"{source}: {what}, closer than min_distance={min_distance:g} Å{others}: coincident or "
        "overlapping atoms; fix the structure, or lower min_distance (0 turns the check off)"
    )


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
    return torch.tensor(np.ascontiguousarray(array), dtype=dtype)


# -- checks and the neighbour search's geometry ----------------------------------------


def _check_cutoff(cutoff: float, name: str = "cutoff", meaning: str = "0: no edges") -> float:
    try:
        value = float(cutoff)
    except (TypeError, ValueError):
        value = np.nan
    if not (np.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a number of Å >= 0 ({meaning}), got {cutoff!r}")
    return value


def _check_cell(cell: np.ndarray, periodic: np.ndarray, source: str) -> None:
    """ValueError naming ``source`` unless the periodic cell vectors are finite, non-zero and
    linearly independent (the non-periodic ones are not used)."""
    axes = [k for k in range(3) if periodic[k]]
    rows = cell.tolist()  # plain floats: far faster than NumPy on 3-vectors
    lattice = [rows[k] for k in axes]
    if not all(math.isfinite(x) for row in lattice for x in row):
        raise ValueError(f"{source}: the cell has non-finite (NaN or inf) vectors along periodic axes")
    lengths = [math.hypot(*row) for row in lattice]
    for axis, length in zip(axes, lengths, strict=True):
        if length == 0:
            raise ValueError(
                f"{source}: the cell is degenerate: periodic along axis {axis} but the cell vector is zero"
            )
    if len(lattice) < 2:
        return
    measure = _measure(lattice)
    if measure <= _DEGENERATE * math.prod(lengths):
        what = "volume" if len(lattice) == 3 else "area"
        raise ValueError(
            f"{source}: the cell is degenerate: its vectors along the periodic axes {axes} "
            f"are linearly dependent ({what} {measure:.3g} Å{'³' if len(lattice) == 3 else '²'}); "
            f"cell = {np.round(cell, 6).tolist()}"
        )


def _measure(lattice: np.ndarray | list[list[float]]) -> float:
    """The d-volume spanned by the ``d`` rows of ``lattice``: 1, a length, an area or a volume."""
    rows = lattice.tolist() if isinstance(lattice, np.ndarray) else lattice
    if len(rows) == 0:
        return 1.0
    if len(rows) == 1:
        return math.hypot(*rows[0])
    if len(rows) == 2:
        return math.hypot(*_cross(rows[0], rows[1]))
    return abs(sum(x * y for x, y in zip(rows[0], _cross(rows[1], rows[2]))))


def _extent(positions: np.ndarray) -> float:
    """An upper bound of every interatomic distance: the diagonal of the bounding box, Å."""
    return float(np.linalg.norm(np.ptp(positions, axis=0)))


def _orthonormal_complement(lattice: np.ndarray) -> np.ndarray:
    """``[3 - d, 3]`` orthonormal rows perpendicular to the ``d`` independent rows of ``lattice``."""
    if len(lattice) == 0:
        return np.eye(3)
    _, _, vt = np.linalg.svd(lattice)
    return vt[len(lattice) :]


# vesin bins a box into at most 1e5 cells, and fails (a division by zero that ends the
# process) when it has to share them out over a very long or very flat box; keeping under
# half of that, it never has to.
_MAX_BINS = 5e4
# Atoms farther than this many cells from the cell are broken data, and beyond 2**31 cells
# vesin's bin indices overflow.
_MAX_WRAPS = 1e6


def _heights(box: np.ndarray) -> np.ndarray:
    """The distances between opposite faces of a (non-degenerate) cell, Å."""
    a, b, c = box.tolist()  # plain floats: far faster than NumPy on 3-vectors
    crosses = [_cross(b, c), _cross(c, a), _cross(a, b)]
    volume = abs(sum(x * y for x, y in zip(a, crosses[0])))
    return np.array([volume / math.hypot(*cross) for cross in crosses])


def _cross(u: list[float], v: list[float]) -> tuple[float, float, float]:
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _wrap(positions: np.ndarray, box: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Positions moved into the cell ``box`` (periodic along all axes), the integer number of
    cell vectors each was moved by (None: none was moved), and the fractional coordinates
    after the move."""
    fractional = positions @ np.linalg.inv(box)
    wraps = np.floor(fractional)
    if not wraps.any():
        return positions, None, fractional
    far = np.abs(wraps).max(axis=1)
    if far.max() > _MAX_WRAPS:
        atom = int(np.argmax(far))
        raise ValueError(
            f"{source}: atom {atom} lies {far[atom]:.3g} cell lengths away from the cell "
            f"(position {positions[atom].tolist()} Å); is it far out of place?"
        )
    return positions - wraps @ box, wraps.astype(np.int64), fractional - wraps


def _bins(faces: np.ndarray | list[float], radius: float) -> list[float]:
    """vesin's number of bins along each axis of a box, before it caps their total."""
    return [min(max(math.floor(min(face / radius, 1e30)), 1.0), 1e30) for face in faces]


def _search_radius(faces: np.ndarray, radius: float) -> float:
    """The smallest radius >= ``radius`` for which the box, of face distances ``faces``, has
    at most ``_MAX_BINS`` bins of vesin's (bins are at least a radius wide)."""
    faces = [float(face) for face in faces]
    if math.prod(_bins(faces, radius)) <= _MAX_BINS:
        return radius
    low, high = radius, max(faces)  # one bin at `high`
    while high > low * (1.0 + 1e-9):
        middle = math.sqrt(low * high)
        if math.prod(_bins(faces, middle)) <= _MAX_BINS:
            high = middle
        else:
            low = middle
    return high


def _search_steps(faces: np.ndarray, radius: float) -> float:
    """How many (bin, neighbouring bin) visits vesin makes, empty ones included."""
    faces = [float(face) for face in faces]
    bins = _bins(faces, radius)
    reach = [max(math.ceil(min(radius * count / face, 1e30)), 1) for count, face in zip(bins, faces)]
    return math.prod(bins) * math.prod(2.0 * r + 1.0 for r in reach)


def _same_bin_pairs(fractional: np.ndarray, faces: np.ndarray, radius: float) -> float:
    """The pairs of atoms that share one of vesin's bins at ``radius``: the least it compares."""
    bins = np.array(_bins(faces, radius))
    index = np.clip(np.floor(fractional * bins), 0, bins - 1).astype(np.int64)
    _, counts = np.unique(index, axis=0, return_counts=True)
    return float(np.sum(counts.astype(np.float64) ** 2))


def _vacuum_cell(cell: np.ndarray, periodic: np.ndarray, positions: np.ndarray, cutoff: float) -> np.ndarray:
    """``cell`` with its non-periodic vectors replaced by vectors perpendicular to the periodic
    ones and to each other, longer than the cutoff plus the atoms' extent across the periodic
    directions: no periodic image along them is then within the cutoff, and the whole cell can
    be periodic."""
    complement = _orthonormal_complement(cell[periodic])
    across = float(np.linalg.norm(np.ptp(positions @ complement.T, axis=0)))
    box = cell.copy()
    box[~periodic] = (cutoff + across + _MARGIN) * complement
    return box
