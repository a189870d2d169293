"""AtomsDataset: reading labelled frames from lists, extxyz files and ASE databases."""

from __future__ import annotations

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import voigt_6_to_full_3x3_stress
from torch.utils.data import Subset
from torch_geometric.loader import DataLoader

import equimol.data.dataset as dataset_module
from equimol.data import AtomsDataset, MissingKeyError, atoms_to_graph, split_indices

CUTOFF = 4.0
XYZ_TOL = 1e-7  # extended XYZ stores 8 decimals


def _ref_frames(frames: list[Atoms]) -> list[Atoms]:
    """The same frames with labels in info['REF_energy'] / arrays['REF_forces'] and no calculator."""
    out = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.arrays["REF_forces"] = atoms.get_forces()
        out.append(copy)
    return out


@pytest.fixture(scope="module")
def frames(emt_copper) -> list[Atoms]:
    """Six rattled 8-atom cells of two compositions (Cu8, and Cu6Ag2 for odd indices) with EMT's
    energy, forces and stress held by the attached calculator, and a 'gamma' info value."""
    rng = np.random.default_rng(0)
    frames = []
    for k in range(6):
        silver = {0: "Ag", 3: "Ag"} if k % 2 else None
        atoms = emt_copper(int(rng.integers(1 << 30)), a=3.7, repeat=(2, 1, 1), rattle=0.08, substitute=silver)
        atoms.info["gamma"] = 0.25 * k
        frames.append(atoms)
    return frames


@pytest.fixture
def xyz_file(tmp_path, frames):
    path = tmp_path / "train.xyz"
    ase.io.write(path, frames, format="extxyz")
    return path


def _assert_graphs_equal(first, second, atol: float = 0.0):
    """Same fields; integer and boolean fields equal, floating fields within ``atol``."""
    assert sorted(first.keys()) == sorted(second.keys())
    for key in first.keys():
        a, b = first[key], second[key]
        assert a.dtype == b.dtype and a.shape == b.shape, key
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=key)
        else:
            assert torch.equal(a, b), key


def test_labels_from_extxyz_calculator_results_equal_emt(xyz_file, frames):
    dataset = AtomsDataset(xyz_file, CUTOFF, require=("energy", "forces", "stress"), dtype=torch.float64)
    assert len(dataset) == len(frames)
    for graph, atoms in zip(dataset, frames, strict=True):
        assert graph.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=XYZ_TOL)
        np.testing.assert_allclose(graph.forces.numpy(), atoms.get_forces(), atol=XYZ_TOL)
        np.testing.assert_allclose(
            graph.stress[0].numpy(), voigt_6_to_full_3x3_stress(atoms.get_stress()), atol=XYZ_TOL
        )
        np.testing.assert_allclose(graph.pos.numpy(), atoms.positions, atol=XYZ_TOL)
        assert graph.z.tolist() == atoms.numbers.tolist()


def test_labels_from_ref_info_and_arrays_keys(tmp_path, frames):
    path = tmp_path / "ref.xyz"
    ase.io.write(path, _ref_frames(frames), format="extxyz")
    dataset = AtomsDataset(
        path,
        CUTOFF,
        energy_key="REF_energy",
        forces_key="REF_forces",
        stress_key=None,
        require=("energy", "forces"),
        dtype=torch.float64,
    )
    for graph, atoms in zip(dataset, frames, strict=True):
        assert graph.energy.item() == pytest.approx(atoms.get_potential_energy(), abs=XYZ_TOL)
        np.testing.assert_allclose(graph.forces.numpy(), atoms.get_forces(), atol=XYZ_TOL)
        assert "stress" not in graph


def test_list_of_atoms_gives_the_same_graphs_as_its_file(xyz_file, frames):
    from_file = AtomsDataset(xyz_file, CUTOFF, info_keys=("gamma",), dtype=torch.float64)
    from_list = AtomsDataset(frames, CUTOFF, info_keys=("gamma",), dtype=torch.float64)
    for first, second in zip(from_file, from_list, strict=True):
        _assert_graphs_equal(first, second, atol=XYZ_TOL)
    assert from_list[3].gamma.shape == (1,) and from_list[3].gamma.item() == pytest.approx(0.75)


def test_graphs_equal_atoms_to_graph(frames):
    dataset = AtomsDataset(frames, CUTOFF, require=(), energy_key=None, forces_key=None, stress_key=None)
    for graph, atoms in zip(dataset, frames, strict=True):
        _assert_graphs_equal(graph, atoms_to_graph(atoms, CUTOFF))


def test_database_rows_give_results_key_values_and_data(tmp_path, frames):
    path = tmp_path / "frames.db"
    with ase.db.connect(path, append=False) as database:
        for atoms in frames:
            database.write(atoms, gamma=atoms.info["gamma"], data={"REF_forces": 2.0 * atoms.get_forces()})
    dataset = AtomsDataset(
        path, CUTOFF, require=("energy", "forces", "stress"), info_keys=("gamma",), dtype=torch.float64
    )
    doubled = AtomsDataset(path, CUTOFF, forces_key="REF_forces", require=("forces",), dtype=torch.float64)
    for k, atoms in enumerate(frames):
        assert dataset[k].energy.item() == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(dataset[k].forces.numpy(), atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(doubled[k].forces.numpy(), 2.0 * atoms.get_forces(), atol=1e-10)
        assert dataset[k].gamma.item() == pytest.approx(atoms.info["gamma"])
    assert dataset.atoms(2).get_potential_energy() == pytest.approx(frames[2].get_potential_energy())


def test_missing_required_label_names_file_frame_key_and_available_keys(tmp_path, frames):
    path = tmp_path / "ref.xyz"
    ase.io.write(path, _ref_frames(frames), format="extxyz")
    with pytest.raises(MissingKeyError) as error:
        AtomsDataset(path, CUTOFF, energy_key="REF_enrgy")
    message = str(error.value)
    assert str(path) in message and "frame 0" in message and "'REF_enrgy'" in message
    assert "REF_energy" in message and "REF_forces" in message and "gamma" in message


def test_required_label_missing_on_one_frame_names_that_frame(tmp_path, frames):
    labelled = _ref_frames(frames)
    del labelled[4].info["REF_energy"]
    with pytest.raises(KeyError, match="frame 4"):
        AtomsDataset(labelled, CUTOFF, energy_key="REF_energy")


def test_optional_label_on_some_frames_only_raises(frames):
    labelled = _ref_frames(frames)
    del labelled[2].arrays["REF_forces"]
    with pytest.raises(KeyError, match=r"'forces'.*5 of 6 frames.*\[2\]"):
        AtomsDataset(labelled, CUTOFF, energy_key="REF_energy", forces_key="REF_forces")
    dataset = AtomsDataset(labelled, CUTOFF, energy_key="REF_energy", forces_key=None)
    assert all("forces" not in graph for graph in dataset)


def test_required_label_with_no_key_raises(frames):
    with pytest.raises(ValueError, match="forces_key is None"):
        AtomsDataset(frames, CUTOFF, forces_key=None, require=("energy", "forces"))
    with pytest.raises(ValueError, match="unknown label 'charge'"):
        AtomsDataset(frames, CUTOFF, require=("charge",))


def test_label_with_wrong_shape_names_the_frame(frames):
    labelled = _ref_frames(frames)
    labelled[3].arrays["REF_forces"] = np.zeros((len(labelled[3]), 2))
    with pytest.raises(ValueError, match=r"frames, frame 3: forces must have shape \(8, 3\)"):
        AtomsDataset(labelled, CUTOFF, energy_key="REF_energy", forces_key="REF_forces")


def test_non_numeric_label_names_the_frame_and_key(frames):
    labelled = _ref_frames(frames)
    labelled[1].info["REF_energy"] = "n/a"
    with pytest.raises(ValueError, match=r"frame 1: label 'energy' \(key 'REF_energy'\) is not numeric"):
        AtomsDataset(labelled, CUTOFF, energy_key="REF_energy")


def test_missing_info_key_names_frame_and_keys(frames):
    with pytest.raises(KeyError, match=r"frame 0: info key 'gama' not found.*'gamma'"):
        AtomsDataset(frames, CUTOFF, info_keys=("gama",))


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the file is empty"),
        ("abc\nnot a structure\n", "could not read structures"),
        ("3\nProperties=species:S:1:pos:R:3\nCu 0 0 0\n", "could not read structures"),
    ],
    ids=["empty", "garbage", "truncated"],
)
def test_malformed_file_error_names_the_file(tmp_path, content, message):
    path = tmp_path / "broken.xyz"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        AtomsDataset(path, CUTOFF)
    assert str(path) in str(error.value)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.xyz"):
        AtomsDataset(tmp_path / "nothere.xyz", CUTOFF)
    with pytest.raises(FileNotFoundError, match="nothere.xyz"):
        AtomsDataset(tmp_path / "nothere.xyz", CUTOFF, cache_dir=tmp_path)


def test_empty_list_raises():
    with pytest.raises(ValueError, match="empty list"):
        AtomsDataset([], CUTOFF)


def test_index_selects_frames_like_ase_read(xyz_file, frames):
    dataset = AtomsDataset(xyz_file, CUTOFF, index="-2:", dtype=torch.float64)
    assert len(dataset) == 2
    assert dataset[0].energy.item() == pytest.approx(frames[-2].get_potential_energy(), abs=XYZ_TOL)


def _forbid_reading_and_graph_building(monkeypatch) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(dataset_module, "atoms_to_graph", forbidden)
    monkeypatch.setattr(dataset_module, "read_frames", forbidden)


def test_at_suffix_selects_frames_like_ase_read(xyz_file, frames):
    dataset = AtomsDataset(f"{xyz_file}@1:3", CUTOFF, dtype=torch.float64)
    assert len(dataset) == 2
    assert dataset[1].energy.item() == pytest.approx(frames[2].get_potential_energy(), abs=XYZ_TOL)
    with pytest.raises(ValueError, match="not both"):
        AtomsDataset(f"{xyz_file}@1:3", CUTOFF, index="-1")


def test_second_construction_loads_the_cache_without_building_graphs(tmp_path, xyz_file, monkeypatch):
    cache = tmp_path / "cache"
    kwargs = dict(require=("energy", "forces", "stress"), info_keys=("gamma",), cache_dir=cache)
    first = AtomsDataset(xyz_file, CUTOFF, **kwargs)
    assert first.cache_file is not None and first.cache_file.parent == cache and first.cache_file.exists()

    _forbid_reading_and_graph_building(monkeypatch)
    second = AtomsDataset(xyz_file, CUTOFF, **kwargs)
    assert second.cache_file == first.cache_file
    assert len(second) == len(first)
    for a, b in zip(first, second, strict=True):
        _assert_graphs_equal(a, b)
    # a different cutoff or dtype is a different cache entry, so it must build graphs
    with pytest.raises(AssertionError, match="cache should have been used"):
        AtomsDataset(xyz_file, CUTOFF + 0.5, **kwargs)
    with pytest.raises(AssertionError, match="cache should have been used"):
        AtomsDataset(xyz_file, CUTOFF, dtype=torch.float64, **kwargs)


def test_cache_misses_when_the_file_changes(tmp_path, frames):
    path = tmp_path / "data.xyz"
    ase.io.write(path, frames[:3], format="extxyz")
    first = AtomsDataset(path, CUTOFF, cache_dir=tmp_path / "cache")
    ase.io.write(path, frames[:4], format="extxyz")
    second = AtomsDataset(path, CUTOFF, cache_dir=tmp_path / "cache")
    assert len(first) == 3 and len(second) == 4
    assert second.cache_file != first.cache_file


def test_cache_of_a_list_depends_on_its_labels(tmp_path, frames, monkeypatch):
    first = AtomsDataset(frames, CUTOFF, cache_dir=tmp_path)
    shifted = []
    for atoms in frames:
        copy = atoms.copy()
        results = dict(atoms.calc.results, energy=atoms.get_potential_energy() + 1.0)
        copy.calc = SinglePointCalculator(copy, **results)
        shifted.append(copy)
    _forbid_reading_and_graph_building(monkeypatch)
    again = AtomsDataset(frames, CUTOFF, cache_dir=tmp_path)  # same frames: loaded
    assert again.cache_file == first.cache_file
    with pytest.raises(AssertionError, match="cache should have been used"):
        AtomsDataset(shifted, CUTOFF, cache_dir=tmp_path)


def test_unreadable_cache_is_rebuilt_with_a_warning(tmp_path, xyz_file):
    first = AtomsDataset(xyz_file, CUTOFF, cache_dir=tmp_path)
    first.cache_file.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable graph cache"):
        second = AtomsDataset(xyz_file, CUTOFF, cache_dir=tmp_path)
    for a, b in zip(first, second, strict=True):
        _assert_graphs_equal(a, b)


def test_transform_acts_on_a_copy_in_getitem(frames):
    def shift(data):
        data.pos += 1.0
        return data

    plain = AtomsDataset(frames, CUTOFF)
    shifted = AtomsDataset(frames, CUTOFF, transform=shift)
    for _ in range(2):  # applied afresh each time, never to the stored graph
        torch.testing.assert_close(shifted[1].pos, plain[1].pos + 1.0)


def test_loader_batches_fields_with_documented_shapes(frames):
    dataset = AtomsDataset(frames, CUTOFF, require=("energy", "forces", "stress"), info_keys=("gamma",))
    batch = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert batch.num_graphs == 4
    assert batch.energy.shape == (4,) and batch.gamma.shape == (4,)
    assert batch.stress.shape == (4, 3, 3) and batch.cell.shape == (4, 3, 3) and batch.pbc.shape == (4, 3)
    assert batch.forces.shape == (32, 3) and batch.batch.shape == (32,)


def test_species_are_sorted_unique_atomic_numbers(frames):
    assert AtomsDataset(frames, CUTOFF).species == [29, 47]
    assert AtomsDataset(frames[::2], CUTOFF).species == [29]


def test_atoms_returns_a_full_precision_copy_of_the_frame(tmp_path, xyz_file, frames):
    dataset = AtomsDataset(xyz_file, CUTOFF, cache_dir=tmp_path)
    cached = AtomsDataset(xyz_file, CUTOFF, cache_dir=tmp_path)
    for source in (dataset, cached):
        atoms = source.atoms(5)
        np.testing.assert_allclose(atoms.positions, frames[5].positions, atol=XYZ_TOL)
        assert atoms.info["gamma"] == frames[5].info["gamma"]
        assert atoms.get_potential_energy() == pytest.approx(frames[5].get_potential_energy())
        atoms.positions += 1.0  # a copy: the data set is unchanged
        np.testing.assert_allclose(source.atoms(5).positions, frames[5].positions, atol=XYZ_TOL)


def test_split_indices_by_fractions_is_disjoint_covering_and_seeded():
    train, val, test = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    assert (len(train), len(val), len(test)) == (81, 10, 10)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(101))
    again = split_indices(101, (0.8, 0.1, 0.1), seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, val, test), again, strict=True))
    other = split_indices(101, (0.8, 0.1, 0.1), seed=4)
    assert not np.array_equal(val, other[1])


def test_split_subsets_feed_a_loader(frames):
    dataset = AtomsDataset(frames, CUTOFF)
    train, val = split_indices(len(dataset), (4, 2), seed=0)
    loader = DataLoader(Subset(dataset, train.tolist()), batch_size=3)
    seen = torch.cat([batch.energy for batch in loader])
    assert torch.equal(seen, torch.cat([dataset[int(k)].energy for k in train]))
    assert set(train.tolist()).isdisjoint(val.tolist())


def test_split_indices_by_sizes():
    parts = split_indices(10, (6, 3, 1), seed=0)
    assert [len(p) for p in parts] == [6, 3, 1]
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(10))


@pytest.mark.parametrize(
    "n, parts, message",
    [
        (10, (6, 3), "sum to 9"),
        (10, (0.5, 0.4), "sum to 0.9"),
        (5, (0.9, 0.05, 0.05), "would be empty"),
        (10, (10, 0), "would be empty"),
        (10, (-1, 11), "negative"),
        (10, (), "empty"),
    ],
)
def test_split_indices_rejects_bad_sizes(n, parts, message):
    with pytest.raises(ValueError, match=message):
        split_indices(n, parts, seed=0)
