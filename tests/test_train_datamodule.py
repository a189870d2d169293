"""``AtomsDataModule``: statistics from the training split only, augmentation on the training
split only, cached generated data, and errors that name the problem."""

from __future__ import annotations

import ase.io
import pytest
import torch
from ase import Atoms
from torch_geometric.transforms import BaseTransform

from equimol.data import compute_statistics
from equimol.train import AtomsDataModule


class ShiftX(BaseTransform):
    """A stand-in augmentation: moves every structure by +100 along x."""

    def forward(self, data):
        data.pos = data.pos + torch.tensor([100.0, 0.0, 0.0], dtype=data.pos.dtype)
        return data


@pytest.fixture
def datamodule(tmp_path):
    dm = AtomsDataModule(cutoff=2.5, generator={"name": "lj-cluster", "n_frames": 30, "seed": 3},
                         split=[20, 6, 4], batch_size=5, seed=1, train_transforms=[ShiftX()],
                         cache_dir=str(tmp_path / "data"))
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


def test_split_is_seeded_and_disjoint(datamodule, tmp_path):
    again = AtomsDataModule(cutoff=2.5, generator={"name": "lj-cluster", "n_frames": 30, "seed": 3},
                            split=[20, 6, 4], seed=1, cache_dir=str(tmp_path / "data"))
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
