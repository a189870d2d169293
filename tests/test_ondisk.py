"""On-disk data sets (``equimol convert``, ``OnDiskAtomsDataset``): what is written reads back
exactly, items are the graphs ``AtomsDataset`` builds, a file is data and never code, workers
read the same items, and a data module trains from one with the statistics of the in-memory path.
"""

from __future__ import annotations

import json
import pickle
import struct
import zlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.loader import DataLoader

from equimol.cli import main
from equimol.data import AtomsDataset, OnDiskAtomsDataset, OnDiskFormatError, is_ondisk, read_frames, write_ondisk
from equimol.data.io import iter_frames
from equimol.data.ondisk import MAGIC, ONDISK_VERSION, GraphLoader, read_ondisk_header
from equimol.data.samples import sample_path
from equimol.train import AtomsDataModule

CUTOFF = 3.0


def assert_same_graph(expected, actual) -> None:
    assert sorted(expected.keys()) == sorted(actual.keys())
    for key in expected.keys():
        assert expected[key].dtype == actual[key].dtype, key
        assert torch.equal(expected[key], actual[key]), key


@pytest.fixture(scope="module")
def ethanol(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The shipped ethanol sample (300 frames, energies and forces), converted twice: without
    graphs, and with the graphs of ``CUTOFF``."""
    folder = tmp_path_factory.mktemp("ondisk")
    source = sample_path("ethanol_gfn2")
    plain = folder / "ethanol.eqd"
    write_ondisk(iter_frames(source), plain, source=str(source))
    with_graphs = folder / "ethanol-graphs.eqd"
    write_ondisk(iter_frames(source), with_graphs, source=str(source), cutoff=CUTOFF)
    return source, plain, with_graphs


@pytest.fixture(scope="module")
def copper_frames() -> list[ase.Atoms]:
    """Periodic and mixed-periodic rattled copper with EMT energy, forces and stress (a slab's
    stress is that of its periodic cell: a label like any other here)."""
    rng = np.random.default_rng(5)
    frames = []
    for k in range(12):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.02 * k, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, rng=rng)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(),
                   "stress": atoms.get_stress()}
        if k % 3 == 2:
            atoms.pbc = [True, True, False]
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


# ---- round trip ---------------------------------------------------------------------------------


def test_round_trip_keeps_structures_labels_and_origins_exactly(ethanol):
    source, plain, _ = ethanol
    frames = read_frames(source)
    dataset = OnDiskAtomsDataset(plain, CUTOFF, verify=True)
    assert len(dataset) == len(frames) == 300
    assert dataset.species == [1, 6, 8] and dataset.labels == ("energy", "forces")
    for k in range(0, 300, 7):
        back = dataset.atoms(k)
        assert np.array_equal(back.numbers, frames[k].numbers)
        assert np.array_equal(back.positions, frames[k].positions)  # float64, bit for bit
        assert np.array_equal(back.cell[:], frames[k].cell[:])
        assert np.array_equal(back.pbc, frames[k].pbc)
        assert back.info["energy"] == frames[k].get_potential_energy()
        assert np.array_equal(back.arrays["forces"], frames[k].get_forces())
        assert dataset.origin(k) == (str(source), k)


@pytest.mark.parametrize("stored", [False, True], ids=["graphs-built-when-read", "stored-graphs"])
def test_items_equal_the_graphs_of_atomsdataset(ethanol, stored):
    source, plain, with_graphs = ethanol
    dataset = OnDiskAtomsDataset(with_graphs if stored else plain, CUTOFF)
    assert dataset.stored_graphs is stored
    reference = AtomsDataset(source, CUTOFF)
    for k in range(len(reference)):
        assert_same_graph(reference[k], dataset[k])


def test_periodic_frames_with_stress_round_trip_in_float64(tmp_path, copper_frames):
    path = tmp_path / "cu.eqd"
    summary = write_ondisk(copper_frames, path, cutoff=4.0)
    assert summary.labels == ("energy", "forces", "stress") and summary.num_frames == 12
    reference = AtomsDataset(copper_frames, 4.0, dtype=torch.float64)
    for dataset in (OnDiskAtomsDataset(path, 4.0, dtype=torch.float64),  # stored edges, shifts included
                    OnDiskAtomsDataset(path, 3.0, dtype=torch.float64)):  # another cutoff: built when read
        assert dataset.stored_graphs is (dataset.cutoff == 4.0)
        for k, atoms in enumerate(copper_frames):
            back = dataset.atoms(k)
            assert np.array_equal(back.pbc, atoms.pbc) and np.array_equal(back.cell[:], atoms.cell[:])
            if dataset.stored_graphs:
                assert_same_graph(reference[k], dataset[k])
    assert torch.equal(OnDiskAtomsDataset(path, 3.0)[0].stress, AtomsDataset(copper_frames[:1], 3.0)[0].stress)


def test_frame_selection_and_labels_left_out(ethanol):
    _, plain, _ = ethanol
    tail = OnDiskAtomsDataset(f"{plain}@-10:", CUTOFF, labels=["energy"])
    assert len(tail) == 10 and tail.origin(0)[1] == 290
    assert "forces" not in tail[0] and "energy" in tail[0]
    with pytest.raises(KeyError, match=r"required labels \['stress'\]"):
        OnDiskAtomsDataset(plain, CUTOFF, require=["stress"])


def test_dataloader_with_two_workers_yields_the_same_items(ethanol):
    _, plain, with_graphs = ethanol
    for path in (plain, with_graphs):
        dataset = OnDiskAtomsDataset(path, CUTOFF)
        subset = torch.utils.data.Subset(dataset, range(0, 300, 5))
        direct = list(DataLoader(subset, batch_size=8))
        assert len(direct) == 8
        for loader in (DataLoader(subset, batch_size=8, num_workers=2),
                       GraphLoader(subset, batch_size=8, num_workers=2)):  # one buffer per batch
            batches = list(loader)
            assert len(batches) == 8
            for a, b in zip(direct, batches, strict=True):
                assert_same_graph(a, b)
                assert torch.equal(a.ptr, b.ptr) and a.to_data_list()[-1].num_nodes == b.to_data_list()[-1].num_nodes
    lists = list(GraphLoader(subset, batch_size=8, num_workers=2, as_list=True))
    assert [len(chunk) for chunk in lists] == [8] * 7 + [4]
    assert_same_graph(lists[2][3], dataset[(2 * 8 + 3) * 5])


# ---- the file is data ----------------------------------------------------------------------------


class _Payload:
    """Unpickling this would write a marker file: the test that it never happens."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite the header of ``path`` by ``edit(header)``, keeping the file consistent otherwise."""
    raw = path.read_bytes()
    magic, version, length, _ = struct.unpack("<8sIQI", raw[:24])
    header = json.loads(raw[24 : 24 + length])
    edit(header)
    text = json.dumps(header).encode().ljust(length)  # same length: the data stays where it is
    assert len(text) == length
    path.write_bytes(struct.pack("<8sIQI", magic, version, length, zlib.crc32(text)) + text + raw[24 + length :])


def test_hostile_and_damaged_files_are_clear_errors_and_never_code(ethanol, tmp_path):
    _, plain, _ = ethanol
    marker = tmp_path / "marker"
    cases = {}
    pickled = tmp_path / "pickled.eqd"
    pickled.write_bytes(pickle.dumps(_Payload(marker)))
    cases[pickled] = "not an equimol on-disk data set"
    saved = tmp_path / "saved.eqd"
    torch.save({"x": _Payload(marker)}, saved)
    cases[saved] = "not an equimol on-disk data set"
    raw = plain.read_bytes()
    truncated = tmp_path / "truncated.eqd"
    truncated.write_bytes(raw[: len(raw) - 1000])
    cases[truncated] = "truncated"
    newer = tmp_path / "newer.eqd"
    newer.write_bytes(raw[:8] + struct.pack("<I", ONDISK_VERSION + 1) + raw[12:])
    cases[newer] = "version 2, but this equimol reads version 1; a newer equimol wrote it"
    flipped = tmp_path / "flipped.eqd"
    flipped.write_bytes(raw[:30] + bytes([raw[30] ^ 0xFF]) + raw[31:])
    cases[flipped] = "checksum"
    sneaky = tmp_path / "sneaky.eqd"  # a consistent header asking for an object array
    sneaky.write_bytes(raw)
    _rewrite_header(sneaky, lambda h: h["arrays"]["positions"].update(dtype="|O8"))
    cases[sneaky] = "array 'positions'"
    for path, message in cases.items():
        with pytest.raises(OnDiskFormatError, match=message) as caught:
            OnDiskAtomsDataset(path, CUTOFF)
        assert str(path) in str(caught.value)
    assert not marker.exists()

    header = read_ondisk_header(plain)

    def damage(name: str, byte: int) -> Path:  # one bit of one array of the data section
        where = header["data_start"] + header["arrays"][name]["offset"] + byte
        path = tmp_path / f"damaged-{name}.eqd"
        path.write_bytes(raw[:where] + bytes([raw[where] ^ 0x01]) + raw[where + 1 :])
        return path

    with pytest.raises(OnDiskFormatError, match="damaged: atom_offset of frame 12 is out of order"):
        OnDiskAtomsDataset(damage("atom_offset", 100), CUTOFF)  # the offsets are checked on opening
    positions = damage("positions", 100)
    OnDiskAtomsDataset(positions, CUTOFF)  # the rest only by verify (it reads the whole file)
    with pytest.raises(OnDiskFormatError, match="checksum of array 'positions' does not match"):
        OnDiskAtomsDataset(positions, CUTOFF, verify=True)
    assert raw[:8] == MAGIC and is_ondisk(plain) and not is_ondisk(sample_path("ethanol_gfn2"))


# ---- training ------------------------------------------------------------------------------------


def test_datamodule_trains_from_an_ondisk_file_with_the_statistics_of_the_in_memory_path(
    ethanol, tmp_path, quiet_trainer
):
    from equimol.models.equivariant import EquivariantPotential
    from equimol.train import PotentialModule

    source, plain, _ = ethanol
    common = dict(cutoff=CUTOFF, split=[200, 50, 50], seed=3, batch_size=10, cache_dir=str(tmp_path / "cache"))
    in_memory = AtomsDataModule(path=str(source), **common)
    in_memory.setup("fit")
    ondisk = AtomsDataModule(path=str(plain), num_workers=1, **common)
    ondisk.setup("fit")
    assert isinstance(ondisk.dataset, OnDiskAtomsDataset)
    assert ondisk.split_indices == in_memory.split_indices
    # the same graphs in the same order; a sum of squared forces may differ in its last bit, as
    # the in-memory graphs keep ASE's column-major force arrays
    expected, actual = in_memory.statistics.to_dict(), ondisk.statistics.to_dict()
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert actual[key] == (value if isinstance(value, (int, list)) else pytest.approx(value, rel=1e-13)), key
    assert not list((tmp_path / "cache").glob("ethanol.*"))  # nothing cached from the on-disk file

    model = EquivariantPotential(species=["H", "C", "O"], cutoff=CUTOFF, channels=4, num_layers=1)
    before = [p.detach().clone() for p in model.parameters()]
    trainer = quiet_trainer(tmp_path / "run", max_steps=3, val_check_interval=3, limit_val_batches=1,
                            num_sanity_val_steps=0, enable_checkpointing=False)
    trainer.fit(PotentialModule(model), datamodule=ondisk)
    assert trainer.global_step == 3
    assert np.isfinite(trainer.callback_metrics["val/loss"].item())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert json.loads((tmp_path / "run" / "statistics.json").read_text())["sources"]["train"] == str(plain)


# ---- equimol convert -----------------------------------------------------------------------------


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines, "no error printed"
    return lines[-1]


def test_convert_writes_a_file_with_progress(tmp_path, capsys, copper_frames):
    structures = tmp_path / "cu.xyz"
    ase.io.write(structures, copper_frames)
    out = tmp_path / "cu.eqd"
    assert main(["convert", str(structures), str(out), "--cutoff", "4.0"]) == 0
    captured = capsys.readouterr()
    assert "12 frames" in captured.err  # the progress bar's count
    assert f"wrote {out}: 12 structures" in captured.out and "graphs of cutoff 4 Å" in captured.out
    assert OnDiskAtomsDataset(out, 4.0).stored_graphs
    assert main(["convert", str(structures), str(out), "--no_progress"]) == 2
    assert "exists; choose another name or pass --overwrite" in _error_line(capsys)
    assert main(["convert", str(structures), str(out), "--no_progress", "--overwrite", "--stress_key", "null"]) == 0
    assert OnDiskAtomsDataset(out, 4.0).labels == ("energy", "forces")


def test_convert_errors_name_the_file_and_frame_and_leave_nothing(tmp_path, capsys, copper_frames):
    frames = [atoms.copy() for atoms in copper_frames[:6]]
    for atoms, original in zip(frames, copper_frames[:6], strict=True):
        atoms.calc = SinglePointCalculator(atoms, **original.calc.results)
    frames[4].positions[1] = frames[4].positions[0] + 0.01  # coincident atoms in frame 4
    bad = tmp_path / "bad.xyz"
    ase.io.write(bad, frames)
    out = tmp_path / "out.eqd"
    cases = [
        ([str(bad), str(out)], f"{bad}, frame 4: atoms 0 and 1 are"),
        ([str(bad), str(out), "--energy_key", "REF_energy"],
         f"{bad}, frame 0: required label 'energy' not found under key 'REF_energy'"),
        ([str(tmp_path / "missing.xyz"), str(out)], "missing.xyz: no such structure file"),
        ([str(bad), str(tmp_path / "out.xyz")], "OUTPUT must end in .eqd"),
    ]
    for arguments, message in cases:
        assert main(["convert", *arguments, "--no_progress"]) == 2
        line = _error_line(capsys)
        assert line.startswith("equimol convert: error: ") and message in line, line
    # a label on the first frames only
    frames[4].positions[1] = copper_frames[4].positions[1]
    frames[5].calc = SinglePointCalculator(frames[5], energy=frames[5].calc.results["energy"])
    ase.io.write(bad, frames)
    assert main(["convert", str(bad), str(out)]) == 2
    assert f"{bad}, frame 5: label 'forces' (key 'forces') is missing, but {bad}, frame 0 has it" in _error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.xyz"]  # no output, no temporary files
