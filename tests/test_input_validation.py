"""Structures are validated when they are loaded, every error names the file and the frame,
and nothing hangs: coincident atoms, huge cutoffs, degenerate cells and damaged files."""

from __future__ import annotations

import faulthandler
import inspect
import time
from contextlib import contextmanager

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from equimol.data import AtomsDataset, read_frames
from equimol.data.graph import (
    DEFAULT_MIN_DISTANCE,
    CloseAtomsError,
    atoms_to_graph,
    edge_vectors,
    estimated_edge_count,
)
from equimol.train.datamodule import AtomsDataModule

CUTOFF = 4.0


@contextmanager
def _answers_within(seconds: float):
    """The block must finish within ``seconds``; a hang inside C code ends the run with the
    stacks of all threads (after 60 s) rather than blocking it for ever."""
    faulthandler.dump_traceback_later(60.0, exit=True)
    start = time.perf_counter()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.perf_counter() - start
    assert elapsed < seconds, f"took {elapsed:.1f} s"


def _labelled(atoms: Atoms, energy: float = -1.0) -> Atoms:
    atoms = atoms.copy()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)))
    return atoms


def _ethanol_frames(count: int = 3) -> list[Atoms]:
    frames = []
    for k in range(count):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.02, seed=k)
        frames.append(_labelled(atoms, -10.0 - k))
    return frames


def _write(path, frames):
    ase.io.write(path, frames, format="extxyz")
    return path


# -- coincident and overlapping atoms ------------------------------------------------------------


def test_coincident_atoms_in_a_training_file_name_the_file_frame_atoms_and_distance(tmp_path):
    frames = _ethanol_frames()
    frames[1].positions[5] = frames[1].positions[2]
    path = _write(tmp_path / "train.xyz", frames)
    with pytest.raises(CloseAtomsError) as error:
        AtomsDataset(path, CUTOFF)
    expected = f"{path}, frame 1: atoms 2 and 5 are 0 Å apart, closer than min_distance=0.1 Å"
    assert str(error.value).startswith(expected)


def test_atoms_a_hundredth_of_an_angstrom_apart_do_not_pass_silently(tmp_path):
    frames = _ethanol_frames()
    frames[2].positions[7] = frames[2].positions[4] + [0.01, 0.0, 0.0]
    path = _write(tmp_path / "train.xyz", frames)
    with pytest.raises(CloseAtomsError, match=r"frame 2: atoms 4 and 7 are 0\.01 Å apart"):
        AtomsDataset(path, CUTOFF)


def test_data_module_refuses_the_file_before_training(tmp_path):
    frames = _ethanol_frames(10)
    frames[6].positions[1] = frames[6].positions[0]
    path = _write(tmp_path / "train.xyz", frames)
    data = AtomsDataModule(cutoff=CUTOFF, path=str(path), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CloseAtomsError, match=r"train.xyz, frame 6: atoms 0 and 1 are 0 Å apart"):
        data.setup("fit")


def test_min_distance_is_a_config_key_of_the_data_module_and_0_turns_it_off(tmp_path):
    default = inspect.signature(AtomsDataModule).parameters["min_distance"].default
    assert default == DEFAULT_MIN_DISTANCE == inspect.signature(AtomsDataset).parameters["min_distance"].default
    frames = _ethanol_frames(10)
    frames[3].positions[8] = frames[3].positions[6] + [0.05, 0.0, 0.0]
    path = _write(tmp_path / "train.xyz", frames)
    strict = AtomsDataModule(cutoff=CUTOFF, path=str(path), cache_dir=str(tmp_path / "a"), min_distance=0.06)
    with pytest.raises(CloseAtomsError, match=r"frame 3: atoms 6 and 8 are 0\.05 Å apart.*min_distance=0\.06 Å"):
        strict.setup("fit")
    loose = AtomsDataModule(cutoff=CUTOFF, path=str(path), cache_dir=str(tmp_path / "b"), min_distance=0.0)
    loose.setup("fit")
    assert len(loose.dataset) == 10
    with pytest.raises(ValueError, match="min_distance"):
        AtomsDataModule(cutoff=CUTOFF, path=str(path), min_distance=-1.0)


def test_a_cache_built_without_the_check_is_not_reused_with_it(tmp_path):
    frames = _ethanol_frames()
    frames[0].positions[3] = frames[0].positions[2]
    path = _write(tmp_path / "train.xyz", frames)
    AtomsDataset(path, CUTOFF, min_distance=0.0, cache_dir=tmp_path / "cache")
    with pytest.raises(CloseAtomsError):
        AtomsDataset(path, CUTOFF, cache_dir=tmp_path / "cache")


def test_an_atom_next_to_its_own_periodic_image_is_named():
    atoms = Atoms("Cu", positions=[[0.0, 0.0, 0.0]], cell=[[0.05, 0, 0], [0, 3, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(CloseAtomsError, match=r"^cu.xyz, frame 0: atom 0 is 0\.05 Å from its own periodic image"):
        atoms_to_graph(atoms, CUTOFF, source="cu.xyz, frame 0")


def test_a_pair_across_the_cell_boundary_names_the_image():
    atoms = Atoms("Cu2", positions=[[0.01, 1, 1], [2.98, 1, 1]], cell=np.eye(3) * 3.0, pbc=True)
    image = r"atoms 0 and 1 \(its periodic image at lattice shift \[-1, 0, 0\]\) are 0\.03 Å apart"
    with pytest.raises(CloseAtomsError, match=image):
        atoms_to_graph(atoms, CUTOFF)


def test_min_distance_beyond_the_cutoff_is_still_checked():
    atoms = Atoms("H2", positions=[[0, 0, 0], [0.3, 0, 0]])
    with pytest.raises(CloseAtomsError, match="0.3 Å apart"):
        atoms_to_graph(atoms, 0.2, on_isolated="ignore", min_distance=0.5)
    assert atoms_to_graph(atoms, 0.2, on_isolated="ignore", min_distance=0.25).edge_index.shape[1] == 0


def test_the_calculator_refuses_coincident_atoms():
    from equimol.calculator import EquimolCalculator
    from equimol.models.equivariant import EquivariantPotential

    model = EquivariantPotential(["Cu"], cutoff=3.0, l_max=1, channels=4, num_layers=1).double()
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.positions[1] = atoms.positions[0]
    atoms.calc = EquimolCalculator(model)
    with pytest.raises(CloseAtomsError, match=r"^EquimolCalculator: atoms 0 and 1 are 0 Å apart"):
        atoms.get_potential_energy()


# -- huge cutoffs ------------------------------------------------------------------------------


def test_a_huge_cutoff_on_a_molecule_answers_at_once_with_the_complete_graph():
    atoms = molecule("CH3CH2OH")
    with _answers_within(5.0):
        graph = atoms_to_graph(atoms, 1e6, dtype=torch.float64)
    assert graph.edge_index.shape[1] == 9 * 8
    reference = atoms_to_graph(atoms, 50.0, dtype=torch.float64)
    assert sorted(map(tuple, graph.edge_index.T.tolist())) == sorted(map(tuple, reference.edge_index.T.tolist()))
    lengths = edge_vectors(graph.pos, graph.edge_index, graph.edge_shift, graph.cell).norm(dim=1)
    assert lengths.max() < 5.0  # the molecule's largest distance, 4.07 Å


def test_a_data_set_of_molecules_with_cutoff_1e6_loads_at_once(tmp_path):
    path = _write(tmp_path / "train.xyz", _ethanol_frames())
    with _answers_within(10.0):
        dataset = AtomsDataset(path, 1e6)
    assert [g.edge_index.shape[1] for g in dataset] == [72, 72, 72]


@pytest.mark.parametrize("pbc", [True, (True, True, False), (True, False, False)], ids=["bulk", "slab", "wire"])
def test_a_huge_cutoff_on_a_periodic_cell_raises_at_once_naming_cutoff_source_and_edges(pbc):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.pbc = pbc
    with _answers_within(2.0), pytest.raises(ValueError) as error:
        atoms_to_graph(atoms, 1e6, source="cu.xyz, frame 4")
    message = str(error.value)
    assert message.startswith("cu.xyz, frame 4: a cutoff of 1e+06 Å would give about ")
    assert "edges for 4 atoms" in message


def test_a_large_cutoff_on_a_wire_is_fast_and_right():
    """vesin's own mixed-periodic search grows with the cube of the cutoff (10 s at 1000 Å)."""
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1, 0.5, 0.2]], cell=np.eye(3) * 3.0, pbc=[True, False, False])
    with _answers_within(2.0):
        graph = atoms_to_graph(atoms, 1000.0, dtype=torch.float64)
    lengths = edge_vectors(graph.pos, graph.edge_index, graph.edge_shift, graph.cell).norm(dim=1)
    assert lengths.max() < 1000.0 and graph.edge_index.shape[1] == 2664
    assert not graph.edge_shift[:, 1:].any()


def test_edge_estimate_of_a_periodic_cell_is_density_times_sphere():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    estimate = estimated_edge_count(atoms.positions, atoms.cell.array, atoms.pbc, 5.0)
    actual = atoms_to_graph(atoms, 5.0).edge_index.shape[1]
    assert 0.5 < estimate / actual < 2.0


# -- degenerate cells --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cell, pbc",
    [
        ([[3.0, 0, 0], [3.0, 0, 0], [0, 0, 3.0]], True),  # zero volume
        ([[3.0, 0, 0], [0, 3.0, 0], [1.5, 1.5, 0]], True),  # the third vector in the plane
        ([[3.0, 0, 0], [6.0, 0, 0], [0, 0, 0]], (True, True, False)),  # vesin: floating-point exception
    ],
    ids=["zero-volume", "coplanar", "parallel-slab"],
)
def test_a_degenerate_cell_in_a_file_names_the_file_and_frame(tmp_path, cell, pbc):
    good = _labelled(bulk("Cu", "fcc", a=3.6, cubic=True))
    bad = _labelled(Atoms("Cu2", positions=[[0, 0, 0], [1.2, 1.1, 1.0]], cell=cell, pbc=pbc))
    path = _write(tmp_path / "cells.xyz", [good, bad])
    with pytest.raises(ValueError, match=rf"^{path}, frame 1: the cell is degenerate: its vectors along the"):
        AtomsDataset(path, CUTOFF)


# -- damaged files -----------------------------------------------------------------------------


def test_a_huge_number_of_atoms_in_a_header_fails_at_once(tmp_path):
    """ASE counts through the 99999999999 lines the header promises, one by one."""
    path = _write(tmp_path / "big.xyz", _ethanol_frames())
    lines = path.read_text().split("\n")
    lines[11] = "99999999999"  # the header of frame 1
    path.write_text("\n".join(lines))
    with _answers_within(2.0), pytest.raises(ValueError) as error:
        read_frames(path)
    assert str(error.value) == (
        f"{path}, frame 1 (line 12): could not read structures: the header says 99999999999 atoms, "
        "but 20 lines follow the comment line"
    )


def test_a_blank_line_between_frames_is_an_error_not_a_silent_end(tmp_path):
    path = _write(tmp_path / "blank.xyz", _ethanol_frames())
    lines = path.read_text().split("\n")
    lines.insert(11, "")
    path.write_text("\n".join(lines))
    assert len(ase.io.read(path, ":")) == 1  # ASE drops frames 1 and 2 without a word
    with pytest.raises(ValueError, match=rf"^{path}, after frame 0, line 12: could not read structures: a blank"):
        read_frames(path)


def test_a_bad_number_names_its_frame(tmp_path):
    path = _write(tmp_path / "bad.xyz", _ethanol_frames())
    lines = path.read_text().split("\n")
    lines[26] = lines[26].replace(".", ",", 1)  # an atom line of frame 2
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"^{path}, frame 2: could not read structures \(ValueError: "):
        read_frames(path)


def test_bytes_that_are_not_utf8_name_the_line_and_frame(tmp_path):
    path = _write(tmp_path / "bytes.xyz", _ethanol_frames())
    data = bytearray(path.read_bytes())
    line_starts = [0] + [k + 1 for k, byte in enumerate(data) if byte == ord("\n")]
    data[line_starts[14] + 1] = 0xFF  # line 15, in frame 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"^{path}, frame 1 \(line 15\): could not read structures: not UTF-8"):
        read_frames(path)


def test_non_finite_positions_name_file_frame_and_atoms(tmp_path):
    frames = _ethanol_frames()
    frames[1].positions[4, 0] = np.nan
    path = _write(tmp_path / "nan.xyz", frames)
    message = rf"^{path}, frame 1: non-finite positions \(NaN or inf\) at atom indices \[4\]$"
    with pytest.raises(ValueError, match=message):
        read_frames(path)


def test_frame_numbers_of_a_selection_are_those_of_the_file(tmp_path):
    frames = _ethanol_frames(5)
    frames[3].positions[1] = frames[3].positions[0]
    path = _write(tmp_path / "train.xyz", frames)
    with pytest.raises(CloseAtomsError, match=rf"^{path}, frame 3: atoms 0 and 1"):
        AtomsDataset(f"{path}@1:", CUTOFF)
    with pytest.raises(CloseAtomsError, match=rf"^{path}, frame 3: atoms 0 and 1"):
        AtomsDataset(path, CUTOFF, index="::3")
