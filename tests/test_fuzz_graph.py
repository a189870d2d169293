"""Property-based tests of ``equimol.data.graph`` against ASE's own neighbour list.

Structures are drawn at random: 1-8 atoms at fractional coordinates in [-0.3, 1.3) (so some
lie outside the cell), cells with lengths 1.5-8 Å and skewed by up to 0.7 of a length in every
off-diagonal entry (cells smaller than the cutoff included), each axis periodic or not, and
the vectors of open axes either kept or set to zero (as ASE writes 2D cells). Properties:

- the radius graph of ``atoms_to_graph`` is ASE's ``neighbor_list("ijS", atoms, cutoff)``:
  the same sorted (i, j, shift) triples (pairs within 1e-6 Å of the cutoff are left out of the
  comparison: there the two codes may round differently);
- ``min_distance`` raises exactly when ASE finds a pair closer than it, and names that
  pair's distance;
- a cell whose periodic vectors are linearly dependent is a ValueError saying "degenerate"
  (vesin would end the process with a floating-point exception on some of them);
- a huge cutoff (1e3-1e12 Å) gives the complete graph of an open structure at once, and is a
  ValueError naming the cutoff for a periodic one; nothing hangs.

Settings: ``derandomize=True`` (the same examples on every run, no example database),
``deadline=2000`` ms per example, and a watchdog that ends the run if a call never returns;
``max_examples`` 150 (graph against ASE), 100 (min_distance), 60 (degenerate cells) and 60
(huge cutoffs): 370 generated structures per run, plus the explicit examples.
"""

from __future__ import annotations

import faulthandler
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from equimol.data.graph import CloseAtomsError, atoms_to_graph  # noqa: E402

TIE = 1e-6  # Å: pairs this close to the cutoff are compared by neither side
WATCHDOG_S = 60.0

FUZZ = settings(
    max_examples=150,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@contextmanager
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def structures(draw, max_atoms: int = 8):
    lengths = draw(st.lists(st.floats(1.5, 8.0), min_size=3, max_size=3))
    skew = np.array(draw(st.lists(st.floats(-0.7, 0.7), min_size=9, max_size=9))).reshape(3, 3)
    cell = np.diag(lengths) + skew * np.array(lengths)[:, None]
    np.fill_diagonal(cell, lengths)
    heights = abs(np.linalg.det(cell)) / np.array(
        [np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)]
    )
    assume(heights.min() > 0.5)  # skewed, not flattened to nothing
    pbc = draw(st.tuples(st.booleans(), st.booleans(), st.booleans()))
    if draw(st.booleans()):  # open axes with zero vectors, as ASE has them for slabs and wires
        cell[~np.array(pbc)] = 0.0
    n = draw(st.integers(1, max_atoms))
    fractional = np.array(draw(st.lists(st.floats(-0.3, 1.3), min_size=3 * n, max_size=3 * n))).reshape(n, 3)
    basis = cell.copy()  # along an open axis with a zero vector, spread the atoms over 6 Å
    basis[np.linalg.norm(cell, axis=1) == 0] = 6.0 * np.eye(3)[np.linalg.norm(cell, axis=1) == 0]
    positions = fractional @ basis
    return Atoms(numbers=[6] * n, positions=positions, cell=cell, pbc=pbc)


def _ours(atoms: Atoms, cutoff: float) -> dict[tuple, float]:
    with _watchdog():
        graph = atoms_to_graph(atoms, cutoff, dtype=torch.float64, on_isolated="ignore", min_distance=0.0)
    j, i = graph.edge_index.numpy()
    shifts = graph.edge_shift.numpy()
    assert np.array_equal(shifts, np.round(shifts))
    vectors = atoms.positions[j] - atoms.positions[i] + shifts @ atoms.cell.array
    distances = np.linalg.norm(vectors, axis=1)
    keys = list(zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist()), strict=True))
    assert len(set(keys)) == len(keys), "duplicate edges"
    return dict(zip(keys, distances.tolist(), strict=True))


def _ase(atoms: Atoms, cutoff: float) -> dict[tuple, float]:
    i, j, shifts, distances = neighbor_list("ijSd", atoms, cutoff)
    keys = zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist()), strict=True)
    return dict(zip(keys, distances.tolist(), strict=True))


def _away_from(edges: dict[tuple, float], cutoff: float) -> set[tuple]:
    return {key for key, distance in edges.items() if abs(distance - cutoff) > TIE}


@FUZZ
@given(atoms=structures(), cutoff=st.floats(0.3, 6.0))
@example(
    atoms=Atoms("C2", positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=np.eye(3) * 1.5, pbc=True), cutoff=6.0
)
@example(
    atoms=Atoms("C3", positions=[[0, 0, 0], [1, 0, 0], [0, 0, 4]], cell=[[2, 0, 0], [1.9, 0.5, 0], [0, 0, 0]],
                pbc=[True, True, False]),
    cutoff=5.0,
)
def test_radius_graph_is_ases_neighbour_list(atoms, cutoff):
    event(f"{int(atoms.pbc.sum())} periodic axes")
    periodic_heights = [
        atoms.cell.volume / np.linalg.norm(np.cross(atoms.cell[(k + 1) % 3], atoms.cell[(k + 2) % 3]))
        for k in range(3)
        if atoms.pbc.all()
    ]
    if periodic_heights and min(periodic_heights) < cutoff:
        event("cell thinner than the cutoff")
    ours, reference = _ours(atoms, cutoff), _ase(atoms, cutoff)
    ours_set, reference_set = _away_from(ours, cutoff), _away_from(reference, cutoff)
    assert sorted(ours_set) == sorted(reference_set), (
        f"{len(ours_set - reference_set)} extra edges, {len(reference_set - ours_set)} missing"
    )
    for key in ours_set:
        assert abs(ours[key] - reference[key]) < 1e-9
    assert all(abs(distance - cutoff) <= TIE for key, distance in ours.items() if key not in ours_set)
    if not all(atoms.pbc):
        shifts = np.array([key[2] for key in ours] or np.zeros((0, 3)), dtype=int).reshape(-1, 3)
        assert not shifts[:, ~atoms.pbc].any(), "a lattice shift along an open axis"


@settings(FUZZ, max_examples=100)
@given(atoms=structures(max_atoms=6), min_distance=st.floats(0.05, 1.5), cutoff=st.floats(0.0, 4.0))
def test_min_distance_raises_exactly_when_ase_finds_a_closer_pair(atoms, min_distance, cutoff):
    distances = neighbor_list("d", atoms, min_distance)
    assume(not np.any(np.abs(distances - min_distance) < TIE))
    try:
        with _watchdog():
            atoms_to_graph(
                atoms, cutoff, on_isolated="ignore", min_distance=min_distance, source="fuzz.xyz, frame 4"
            )
    except CloseAtomsError as error:
        assert len(distances) > 0, f"raised without a close pair: {error}"
        message = str(error)
        assert message.startswith("fuzz.xyz, frame 4: ")
        assert f"{distances.min():.4g} Å" in message
        return
    assert len(distances) == 0, f"{distances.min()} Å apart, below {min_distance}, passed"


@st.composite
def degenerate_cells(draw):
    periodic = draw(
        st.sampled_from([(True, True, True), (True, True, False), (False, True, True), (True, False, True)])
    )
    axes = [k for k in range(3) if periodic[k]]
    cell = np.array(draw(st.lists(st.floats(-5.0, 5.0), min_size=9, max_size=9))).reshape(3, 3)
    first = cell[axes[0]]
    assume(np.linalg.norm(first) > 0.5)
    weights = draw(st.lists(st.floats(0.1, 2.0), min_size=2, max_size=2))
    signs = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=2, max_size=2))
    kind = draw(st.sampled_from(["parallel", "zero-volume"]))
    if kind == "parallel" or len(axes) == 2:
        cell[axes[1]] = signs[0] * weights[0] * first
    else:  # the third vector in the plane of the other two
        cell[axes[2]] = signs[0] * weights[0] * first + signs[1] * weights[1] * cell[axes[1]]
    return cell, periodic


@settings(FUZZ, max_examples=60)
@given(cell_pbc=degenerate_cells(), n=st.integers(1, 5), cutoff=st.floats(0.5, 6.0))
@example(cell_pbc=(np.array([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 0]]), (True, True, False)), n=2, cutoff=4.0)
def test_degenerate_periodic_cell_is_an_error_naming_the_source(cell_pbc, n, cutoff):
    cell, periodic = cell_pbc
    positions = np.random.default_rng(n).uniform(0, 3, size=(n, 3))
    atoms = Atoms(numbers=[6] * n, positions=positions, cell=cell, pbc=periodic)
    with _watchdog(), pytest.raises(ValueError, match=r"^cells.xyz, frame 9: the cell is degenerate"):
        atoms_to_graph(atoms, cutoff, on_isolated="ignore", source="cells.xyz, frame 9")


@settings(FUZZ, max_examples=60)
@given(atoms=structures(), exponent=st.floats(3.0, 12.0))
@example(atoms=Atoms("C9", positions=np.arange(27.0).reshape(9, 3) * 0.3), exponent=6.0)
def test_huge_cutoff_answers_at_once(atoms, exponent):
    """An open structure: the complete graph. A periodic one (cutoff >= 1e9 Å): a ValueError
    naming the cutoff and the source."""
    with _watchdog():
        if not atoms.pbc.any():
            graph = atoms_to_graph(atoms, 10.0**exponent, min_distance=0.0, on_isolated="ignore")
            n = len(atoms)
            assert graph.edge_index.shape[1] == n * (n - 1)
            return
        cutoff = 10.0 ** max(exponent, 9.0)
        with pytest.raises(ValueError) as error:
            atoms_to_graph(atoms, cutoff, min_distance=0.0, on_isolated="ignore", source="big.xyz, frame 0")
    assert str(error.value).startswith(f"big.xyz, frame 0: a cutoff of {cutoff:g} Å would give about ")
