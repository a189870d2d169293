"""``AtomsDataModule``: where the training, validation and test sets come from, and what is
computed from them.

With one data source (a file, a shipped sample or a generator) the sets are a seeded split of
it; with separate validation and test files (``val_path``, ``test_path``) every training frame
is trained on and those sets are exactly their files. Statistics come from the training set
only, augmentation applies to training batches only, generated data are cached, conflicting
options and bad files are errors naming the key and the file, and ``equimol fit`` takes the
file keys from the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from torch_geometric.transforms import BaseTransform

from equimol.data import AtomsDataset, compute_statistics
from equimol.train import AtomsDataModule
from equimol.train.cli import main

CUTOFF = 3.0
KEYS = {"energy_key": "REF_energy", "forces_key": "REF_forces"}


# ---- a split of one generated data source -----------------------------------------------------


class ShiftX(BaseTransform):
    """A stand-in augmentation: moves every structure by +100 along x."""

    def forward(self, data):
        data.pos = data.pos + torch.tensor([100.0, 0.0, 0.0], dtype=data.pos.dtype)
        return data


@pytest.fixture
def datamodule(tmp_path, lj_datamodule):
    dm = lj_datamodule(tmp_path / "data", n_frames=30, generator_seed=3, split=[20, 6, 4], batch_size=5, seed=1,
                       train_transforms=[ShiftX()])
    dm.setup("fit")
    return dm


def test_statistics_come_from_the_training_split_only(datamodule):
    train = [datamodule.dataset[i] for i in datamodule.split_indices["train"]]
    everything = [datamodule.dataset[i] for i in range(len(datamodule.dataset))]
    assert datamodule.statistics == compute_statistics(train)
    assert datamodule.statistics.num_structures == 20
    assert datamodule.statistics != compute_statistics(everything)


def test_augmentation_applies_to_training_batches_only(datamodule):
    train = next(iter(datamodule.train_dataloader()))
    val = next(iter(datamodule.val_dataloader()))
    assert train.pos[:, 0].min() > 50.0
    assert val.pos[:, 0].max() < 50.0
    assert datamodule.dataset[0].pos[:, 0].max() < 50.0  # the stored graphs are untouched


def test_split_is_seeded_and_disjoint(datamodule, tmp_path, lj_datamodule):
    again = lj_datamodule(tmp_path / "data", n_frames=30, generator_seed=3, split=[20, 6, 4], seed=1)
    again.setup("fit")
    assert again.split_indices == datamodule.split_indices
    parts = [set(v) for v in datamodule.split_indices.values()]
    assert set.union(*parts) == set(range(30)) and sum(map(len, parts)) == 30
    assert len(list((tmp_path / "data").glob("*.traj"))) == 1  # generated once, then read back


def test_empty_data_file_is_an_error_naming_the_file(tmp_path):
    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.xyz"):
        AtomsDataModule(cutoff=3.0, path=str(empty), cache_dir=str(tmp_path)).setup("fit")


def test_data_file_without_energies_is_an_error_naming_the_key(tmp_path):
    path = tmp_path / "no_energy.xyz"
    frames = [Atoms("Ar2", positions=[[0, 0, 0], [0, 0, 1.0 + 0.1 * k]]) for k in range(5)]
    ase.io.write(path, frames)
    with pytest.raises(KeyError, match="energy"):
        AtomsDataModule(cutoff=3.0, path=str(path), cache_dir=str(tmp_path)).setup("fit")


def test_unknown_generator_lists_the_available_ones(tmp_path):
    with pytest.raises(ValueError, match="lj-cluster"):
        AtomsDataModule(cutoff=2.5, generator={"name": "lj-clustr"}, cache_dir=str(tmp_path)).setup("fit")


def test_exactly_one_data_source_is_required():
    with pytest.raises(ValueError, match="exactly one"):
        AtomsDataModule(cutoff=2.5)
    with pytest.raises(ValueError, match="exactly one"):
        AtomsDataModule(cutoff=2.5, path="a.xyz", sample="ethanol_gfn2")


# ---- separate validation and test files (val_path, test_path) --------------------------------


def _cu_frames(emt_copper, n: int, seed: int, swap_to: str | None = None) -> list[Atoms]:
    """``n`` rattled and strained 8-atom fcc Cu cells labelled by EMT under REF_* keys (no
    calculator attached); with ``swap_to``, atom 0 of each is that element instead."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = emt_copper(rng, repeat=(2, 1, 1), strain=0.02, rattle=0.08,
                           substitute={0: swap_to} if swap_to else None)
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        frames.append(atoms)
    return frames


def _energies(graphs) -> np.ndarray:
    """``[B]`` eV: the energy labels of graphs (a data set or a list of ``Data``)."""
    return np.array([float(g.energy) for g in graphs])


def _file_energies(path: Path) -> np.ndarray:
    """``[B]`` eV: the REF_energy of every frame of a file, as written."""
    return np.array([atoms.info["REF_energy"] for atoms in ase.io.read(path, ":")])


@pytest.fixture(scope="module")
def files(tmp_path_factory, emt_copper) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cu")
    paths = {}
    for name, n, seed in (("train", 6, 1), ("val", 3, 2), ("test", 2, 3)):
        paths[name] = folder / f"cu_{name}.xyz"
        ase.io.write(paths[name], _cu_frames(emt_copper, n, seed), format="extxyz")
    return paths


def _datamodule(tmp_path, files, **kwargs) -> AtomsDataModule:
    arguments = {"cutoff": CUTOFF, "path": str(files["train"]), "dtype": "float64", "require": ["energy", "forces"],
                 "cache_dir": str(tmp_path / "cache"), **KEYS, **kwargs}
    dm = AtomsDataModule(**arguments)
    dm.setup("fit")
    return dm


def test_val_path_trains_on_every_training_frame_and_validates_on_the_val_file(tmp_path, files):
    dm = _datamodule(tmp_path, files, val_path=str(files["val"]))
    assert len(dm.train_set) == 6 and len(dm.val_set) == 3 and dm.test_set is None
    np.testing.assert_allclose(_energies(dm.train_set), _file_energies(files["train"]), rtol=0, atol=1e-12)
    np.testing.assert_allclose(_energies(dm.val_set), _file_energies(files["val"]), rtol=0, atol=1e-12)
    val_forces = ase.io.read(files["val"], 1).arrays["REF_forces"]
    np.testing.assert_allclose(dm.val_set[1].forces.numpy(), val_forces, rtol=0, atol=1e-12)
    assert dm.split_indices == {"train": list(range(6)), "val": [0, 1, 2]}
    assert dm.sources == {"train": str(files["train"]), "val": str(files["val"])}


def test_statistics_come_from_the_training_file_only(tmp_path, files):
    dm = _datamodule(tmp_path, files, val_path=str(files["val"]))
    train = AtomsDataset(files["train"], CUTOFF, **KEYS, dtype=dm.dtype)
    val = AtomsDataset(files["val"], CUTOFF, **KEYS, dtype=dm.dtype)
    assert dm.statistics == compute_statistics(train)
    assert dm.statistics.num_structures == 6
    assert dm.statistics != compute_statistics([*train, *val])


def test_test_path_is_the_test_set_with_or_without_a_val_file(tmp_path, files):
    test_energies = _file_energies(files["test"])
    both = _datamodule(tmp_path, files, val_path=str(files["val"]), test_path=str(files["test"]))
    assert (len(both.train_set), len(both.val_set), len(both.test_set)) == (6, 3, 2)
    np.testing.assert_allclose(_energies(both.test_set), test_energies, rtol=0, atol=1e-12)

    # a test file alone: the training file is split into training and validation sets
    alone = _datamodule(tmp_path, files, test_path=str(files["test"]), split=[4, 2], seed=0)
    assert (len(alone.train_set), len(alone.val_set)) == (4, 2)
    assert sorted(alone.split_indices["train"] + alone.split_indices["val"]) == list(range(6))
    np.testing.assert_allclose(_energies(alone.test_set), test_energies, rtol=0, atol=1e-12)


def test_split_of_the_main_source_without_a_val_file(tmp_path, files):
    # no file: a two-entry split gives training and validation sets and no test set
    two = _datamodule(tmp_path, files, split=[4, 2])
    assert {name: len(idx) for name, idx in two.split_indices.items()} == {"train": 4, "val": 2}
    assert two.test_set is None
    # a test file alone: the default split of the main source is [0.9, 0.1]
    test_only = _datamodule(tmp_path, files, test_path=str(files["test"]))
    assert {name: len(idx) for name, idx in test_only.split_indices.items()} == {"train": 5, "val": 1, "test": 2}


def test_val_file_with_species_absent_from_training_is_accepted(tmp_path, files, emt_copper):
    with_silver = tmp_path / "cu_ag_val.xyz"
    ase.io.write(with_silver, _cu_frames(emt_copper, 2, 4, swap_to="Ag"), format="extxyz")
    dm = _datamodule(tmp_path, files, val_path=str(with_silver))
    assert dm.statistics.species == [29]
    assert {int(z) for g in dm.val_set for z in g.z} == {29, 47}


@pytest.mark.parametrize(
    ("options", "keys"),
    [({"val_path": "val.xyz", "split": [0.9, 0.1]}, ("data.split", "data.val_path")),
     ({"test_path": "test.xyz", "split": [0.8, 0.1, 0.1]}, ("data.split", "data.test_path"))],
)
def test_split_conflicting_with_a_file_is_an_error_naming_both_keys(options, keys):
    with pytest.raises(ValueError) as error:
        AtomsDataModule(cutoff=CUTOFF, path="train.xyz", **options)
    assert all(key in str(error.value) for key in keys), str(error.value)


def test_missing_or_empty_val_file_is_an_error_naming_the_key_and_the_path(tmp_path, files):
    with pytest.raises(FileNotFoundError, match=r"data\.val_path: .*no_such_val\.xyz"):
        _datamodule(tmp_path, files, val_path=str(tmp_path / "no_such_val.xyz"))
    empty = tmp_path / "empty_val.xyz"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"data\.val_path: .*empty_val\.xyz.*empty"):
        _datamodule(tmp_path, files, val_path=str(empty))


def test_val_file_without_the_labels_of_the_training_data_is_an_error_naming_file_and_key(
    tmp_path, files, emt_copper
):
    no_forces = tmp_path / "val_no_forces.xyz"
    frames = _cu_frames(emt_copper, 2, 5)
    for atoms in frames:
        del atoms.arrays["REF_forces"]
    ase.io.write(no_forces, frames, format="extxyz")
    # forces required: AtomsDataset's own error, prefixed with the key
    with pytest.raises(KeyError, match=r"data\.test_path: .*val_no_forces\.xyz.*REF_forces"):
        _datamodule(tmp_path, files, test_path=str(no_forces))
    # forces optional but present in training: still refused, so the losses have the same terms
    with pytest.raises(ValueError, match=r"data\.val_path: .*val_no_forces\.xyz.*'REF_forces'"):
        _datamodule(tmp_path, files, val_path=str(no_forces), require=["energy"])


# ---- the file keys on the command line of equimol fit ----------------------------------------


@pytest.fixture
def fit_config(tmp_path, files, write_fit_config) -> Path:
    """A one-epoch fit of a pair network on the training file, batches of 3."""
    data = {"cutoff": CUTOFF, "path": str(files["train"]), **KEYS, "batch_size": 3}
    return write_fit_config(tmp_path / "config.yaml", data=data, model={"cutoff": CUTOFF})


def test_fit_takes_val_path_from_the_command_line_and_records_the_files(tmp_path, files, fit_config):
    root = tmp_path / "run"
    main(["fit", "--config", str(fit_config), "--trainer.default_root_dir", str(root),
          "--data.init_args.val_path", str(files["val"])])
    assert (root / "checkpoints" / "last.ckpt").is_file()
    record = json.loads((root / "statistics.json").read_text())
    assert record["sources"] == {"train": str(files["train"]), "val": str(files["val"])}
    assert record["split_sizes"] == {"train": 6, "val": 3}
    assert record["statistics"]["num_structures"] == 6
    assert json.loads((root / "split.json").read_text()) == {"train": list(range(6)), "val": [0, 1, 2]}
    resolved = yaml.safe_load((root / "config.yaml").read_text())
    assert resolved["data"]["init_args"]["val_path"] == str(files["val"])
    assert resolved["data"]["init_args"]["split"] is None


def test_misspelt_val_path_key_fails_naming_the_key(tmp_path, files, fit_config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(fit_config), "--trainer.default_root_dir", str(tmp_path / "run"),
              "--data.init_args.val_pth", str(files["val"])])
    assert exit_.value.code != 0
    assert "val_pth" in capsys.readouterr().err
