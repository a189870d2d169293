"""A new fit starts at the mean of the training energies: the untrained network's own offset
(of order the energy scale per atom) is measured and taken out before the first step."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from equimol.models import EquivariantPotential
from equimol.train import PotentialModule
from equimol.train.centring import model_energies


def _ready_module(datamodule, centre: bool) -> PotentialModule:
    """A fresh module after its set-up for a fit (what Lightning calls before the first step)."""
    model = EquivariantPotential(["Ar"], cutoff=2.5, channels=8, l_max=1, num_layers=2)
    module = PotentialModule(model, centre_energies=centre)
    module._trainer = SimpleNamespace(datamodule=datamodule)  # all setup reads of its trainer
    module.setup("fit")
    return module


@pytest.fixture(scope="module")
def lj_data(tmp_path_factory, lj_datamodule):
    datamodule = lj_datamodule(tmp_path_factory.mktemp("centring") / "data", n_frames=40, seed=0)
    datamodule.setup("fit")
    return datamodule


def _mean_offset(module: PotentialModule, datamodule) -> tuple[float, float]:
    graphs = [datamodule.train_set[k] for k in range(len(datamodule.train_set))]
    labels = np.array([float(g.energy) for g in graphs])
    predicted = model_energies(module.model, graphs)
    return float(np.mean(predicted - labels)), float(np.std(labels))


def test_an_untrained_model_starts_at_the_mean_training_energy(lj_data):
    torch.manual_seed(0)
    centred, spread = _mean_offset(_ready_module(lj_data, centre=True), lj_data)
    torch.manual_seed(0)
    plain, _ = _mean_offset(_ready_module(lj_data, centre=False), lj_data)
    # the untrained network's offset is far larger than the spread of the energies...
    assert abs(plain) > spread
    # ...and the centred model's mean error is zero up to float32 rounding
    assert abs(centred) < 1e-4 * max(spread, 1.0)
