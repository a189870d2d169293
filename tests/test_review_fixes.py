"""Behaviour at the edges of the model interface, the calculator, the losses and augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from torch_geometric.data import Batch

from equimol.calculator import EquimolCalculator
from equimol.data import atoms_to_graph
from equimol.data.transforms import RandomRotation
from equimol.models import PairNN
from equimol.train.losses import PotentialLoss
from equimol.train.metrics import PotentialMetrics

CUTOFF = 4.0


def _copper(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
    return atoms, atoms_to_graph(atoms, CUTOFF, labels=labels, dtype=torch.float64)


def test_energy_can_be_backpropagated_in_eval_mode_after_forces_were_computed() -> None:
    model = PairNN(CUTOFF).double().eval()
    _, graph = _copper()
    out = model(graph)
    out["energy"].sum().backward()  # the force computation must not free the energy's graph
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_forces_inside_inference_mode_raise_a_clear_error() -> None:
    model = PairNN(CUTOFF).double().eval()
    _, graph = _copper()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model(graph)


def test_calculator_leaves_the_callers_model_untouched_and_refuses_a_short_cutoff() -> None:
    model = PairNN(CUTOFF).train()
    calculator = EquimolCalculator(model, dtype=torch.float64)
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert calculator.model is not model
    with pytest.raises(ValueError, match="smaller than the model's cutoff"):
        EquimolCalculator(model, cutoff=CUTOFF - 1.0)


def test_stress_of_a_slab_does_not_enter_the_loss_or_the_metrics() -> None:
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.calc = EMT()
    slab_graph = atoms_to_graph(slab, CUTOFF, dtype=torch.float64, on_isolated="ignore",
                                labels={"energy": slab.get_potential_energy(), "forces": slab.get_forces(),
                                        "stress": slab.get_stress()})
    assert slab_graph.stress.abs().max() > 1e-3  # ASE gives the slab a stress label
    _, bulk_graph = _copper()
    batch = Batch.from_data_list([bulk_graph, slab_graph])
    model = PairNN(CUTOFF).double().eval()
    prediction = model(batch, compute_stress=True)
    loss = PotentialLoss(energy_weight=0.0, forces_weight=0.0, stress_weight=1.0)(prediction, batch)
    expected = (prediction["stress"][0] - bulk_graph.stress[0]).square().mean()
    torch.testing.assert_close(loss["stress"], expected)
    metrics = PotentialMetrics()
    metrics.update(prediction, batch)
    expected_mae = (prediction["stress"][0] - bulk_graph.stress[0]).abs().mean()
    assert abs(metrics.compute()["stress_mae"] - float(expected_mae)) < 1e-6


def test_random_augmentation_follows_the_global_seed() -> None:
    _, graph = _copper()

    def draw() -> np.ndarray:
        torch.manual_seed(1234)
        transform = RandomRotation()
        return np.stack([transform(graph).pos.numpy() for _ in range(3)])

    first, again = draw(), draw()
    np.testing.assert_array_equal(first, again)
    torch.manual_seed(99)
    assert not np.allclose(RandomRotation()(graph).pos.numpy(), first[0])
