"""Loss terms and metrics against direct NumPy computations; energy-only training; stress
labels of structures that are not periodic in every direction; EMA."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from ase.build import fcc111
from ase.calculators.emt import EMT
from torch_geometric.data import Batch, Data

from equimol.data import atoms_to_graph
from equimol.models import PairNN
from equimol.train import EMA, PotentialLoss, PotentialMetrics


def _batch(rng, sizes=(3, 5), stress=False) -> Batch:
    graphs = []
    for n in sizes:
        data = Data(pos=torch.tensor(rng.normal(size=(n, 3))), z=torch.ones(n, dtype=torch.long),
                    energy=torch.tensor([rng.normal()]), forces=torch.tensor(rng.normal(size=(n, 3))))
        if stress:
            data.stress = torch.tensor(rng.normal(size=(1, 3, 3)))
        graphs.append(data)
    return Batch.from_data_list(graphs)


def _prediction(rng, batch: Batch) -> dict[str, torch.Tensor]:
    return {"energy": batch.energy + torch.tensor(rng.normal(size=batch.num_graphs)),
            "forces": batch.forces + torch.tensor(rng.normal(size=batch.forces.shape)),
            "stress": torch.tensor(rng.normal(size=(batch.num_graphs, 3, 3)))}


def test_loss_is_weighted_sum_of_per_atom_energy_force_and_stress_mse(rng):
    batch = _batch(rng, stress=True)
    pred = _prediction(rng, batch)
    loss = PotentialLoss(energy_weight=2.0, forces_weight=3.0, stress_weight=5.0)(pred, batch)
    n = np.array([3.0, 5.0])
    e = ((pred["energy"] - batch.energy).numpy() / n) ** 2
    f = ((pred["forces"] - batch.forces).numpy()) ** 2
    s = ((pred["stress"] - batch.stress).numpy()) ** 2
    assert loss["energy_per_atom"].item() == pytest.approx(e.mean())
    assert loss["forces"].item() == pytest.approx(f.mean())
    assert loss["loss"].item() == pytest.approx(2 * e.mean() + 3 * f.mean() + 5 * s.mean())


def test_huber_loss_is_linear_for_large_errors(rng):
    batch = _batch(rng)
    pred = {"energy": batch.energy + 100.0 * torch.tensor([3.0, 5.0], dtype=torch.float64)}
    loss = PotentialLoss(forces_weight=0.0, kind="huber", huber_delta=0.5)(pred, batch)
    assert loss["loss"].item() == pytest.approx(0.5 * (100.0 - 0.25))


def test_energy_only_loss_needs_no_forces_and_missing_labels_are_named(rng):
    batch = _batch(rng)
    del batch.forces
    pred = {"energy": batch.energy + 1.0}
    assert set(PotentialLoss(forces_weight=0.0)(pred, batch)) == {"energy_per_atom", "loss"}
    with pytest.raises(KeyError, match="forces"):
        PotentialLoss(forces_weight=1.0)(pred, batch)


def test_metrics_match_numpy_over_several_batches(rng):
    metrics = PotentialMetrics()
    errors_e, errors_f, energies, predicted = [], [], [], []
    for _ in range(3):
        batch = _batch(rng)
        pred = _prediction(rng, batch)
        assert set(metrics.update(pred, batch)) == {"energy", "energy_per_atom", "forces"}
        errors_e.append((pred["energy"] - batch.energy).numpy())
        errors_f.append((pred["forces"] - batch.forces).numpy().ravel())
        energies.append(batch.energy.numpy())
        predicted.append(pred["energy"].numpy())
    values = metrics.compute()
    e, f = np.concatenate(errors_e), np.concatenate(errors_f)
    true, pred = np.concatenate(energies), np.concatenate(predicted)
    assert values["energy_mae"] == pytest.approx(np.abs(e).mean())
    assert values["energy_rmse"] == pytest.approx(np.sqrt((e**2).mean()))
    assert values["forces_mae"] == pytest.approx(np.abs(f).mean())
    assert values["forces_rmse"] == pytest.approx(np.sqrt((f**2).mean()))
    r2 = 1 - ((pred - true) ** 2).sum() / ((true - true.mean()) ** 2).sum()
    assert values["energy_r2"] == pytest.approx(r2)
    assert "stress_mae" not in values  # no stress labels, no stress metric


def _emt_graph(atoms, cutoff: float, **options) -> Data:
    """The float64 graph of ``atoms`` with its calculator's energy, forces and stress as labels."""
    labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
    return atoms_to_graph(atoms, cutoff, labels=labels, dtype=torch.float64, **options)


def test_stress_of_a_slab_does_not_enter_the_loss_or_the_metrics(emt_copper) -> None:
    cutoff = 4.0
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.calc = EMT()
    slab_graph = _emt_graph(slab, cutoff, on_isolated="ignore")
    assert slab_graph.stress.abs().max() > 1e-3  # ASE gives the slab a stress label
    bulk_graph = _emt_graph(emt_copper(0), cutoff)
    batch = Batch.from_data_list([bulk_graph, slab_graph])
    model = PairNN(cutoff).double().eval()
    prediction = model(batch, compute_stress=True)
    loss = PotentialLoss(energy_weight=0.0, forces_weight=0.0, stress_weight=1.0)(prediction, batch)
    expected = (prediction["stress"][0] - bulk_graph.stress[0]).square().mean()
    torch.testing.assert_close(loss["stress"], expected)
    metrics = PotentialMetrics()
    metrics.update(prediction, batch)
    expected_mae = (prediction["stress"][0] - bulk_graph.stress[0]).abs().mean()
    assert abs(metrics.compute()["stress_mae"] - float(expected_mae)) < 1e-6


def test_ema_weights_are_used_for_validation_and_saved_as_state_dict(tmp_path, lj_datamodule, quiet_trainer):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from equimol.train import PotentialModule

    pl.seed_everything(0)
    datamodule = lj_datamodule(tmp_path / "data", n_frames=20, split=[16, 4], batch_size=4)
    module = PotentialModule(PairNN(cutoff=2.5, hidden=[8]), lr_scheduler=None,
                             optimizer=functools.partial(torch.optim.SGD, lr=0.1))
    ema = EMA(decay=0.5, warmup=False)
    saver = ModelCheckpoint(dirpath=tmp_path, filename="step3", every_n_train_steps=3, save_top_k=-1)
    trainer = quiet_trainer(tmp_path, max_steps=3, callbacks=[ema, saver])
    trainer.fit(module, datamodule)
    checkpoint = torch.load(tmp_path / "step3.ckpt", weights_only=True)
    name = "model.net.0.weight" if "model.net.0.weight" in checkpoint["state_dict"] else next(
        k for k in checkpoint["state_dict"] if k.endswith("weight"))
    averaged, current = checkpoint["state_dict"][name], checkpoint["current_model_state"][name]
    assert not torch.allclose(averaged, current)  # three SGD steps moved the raw weights
    assert int(checkpoint["averaging_state"]["n_averaged"]) == 3
    # after fitting, the module carries the averaged weights
    torch.testing.assert_close(module.state_dict()[name], averaged)


def test_ema_handles_models_whose_deep_copy_has_extra_buffers(tmp_path, lj_datamodule, quiet_trainer):
    """e3nn's generated code gives a deep copy of a tensor product extra constant buffers;
    averaging, validation swaps and checkpoints match parameters by name and still work."""
    from equimol.models.equivariant import EquivariantPotential
    from equimol.train import PotentialModule
    from equimol.train.module import load_potential

    pl.seed_everything(0)
    datamodule = lj_datamodule(tmp_path / "data", n_frames=12, split=[8, 4], batch_size=4)
    model = EquivariantPotential(["Ar"], cutoff=2.5, l_max=2, channels=4, num_layers=3)
    module = PotentialModule(model, lr_scheduler=None)
    trainer = quiet_trainer(tmp_path, max_steps=2, callbacks=[EMA(decay=0.9)], enable_checkpointing=False)
    trainer.fit(module, datamodule)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    template = EquivariantPotential(["Ar"], cutoff=2.5, l_max=2, channels=4, num_layers=3)
    restored = load_potential(str(tmp_path / "model.ckpt"), model=template)
    for name, value in module.model.state_dict().items():
        torch.testing.assert_close(restored.model.state_dict()[name], value)


def test_energy_r2_matches_scikit_learn_for_small_errors_per_atom():
    from sklearn.metrics import r2_score

    from equimol.train.metrics import CoefficientOfDetermination

    generator = torch.Generator().manual_seed(0)
    target = 0.07 + 0.012 * torch.randn(25, generator=generator)  # eV/atom
    predicted = target + 2e-4 * torch.randn(25, generator=generator)
    metric = CoefficientOfDetermination()
    metric.update(predicted[:10], target[:10])
    metric.update(predicted[10:], target[10:])
    expected = r2_score(target.double().numpy(), predicted.double().numpy())
    assert expected < 0.9999
    assert abs(float(metric.compute()) - expected) < 1e-9


def test_without_train_metrics_only_the_losses_are_logged_in_training(tmp_path, lj_datamodule, quiet_trainer):
    """``train_metrics=False`` skips the training-batch metrics, not the losses, and leaves the
    validation metrics and the trained weights as they are."""
    from equimol.train import PotentialModule

    datamodule = lj_datamodule(tmp_path / "data", n_frames=20, split=[16, 4], batch_size=4)
    logged, weights = {}, {}
    for train_metrics in (True, False):
        pl.seed_everything(0)
        module = PotentialModule(PairNN(cutoff=2.5, hidden=[8]), lr_scheduler=None, train_metrics=train_metrics,
                                 optimizer=functools.partial(torch.optim.Adam, lr=1e-3))
        trainer = quiet_trainer(tmp_path / str(train_metrics), max_epochs=2)
        trainer.fit(module, datamodule)
        logged[train_metrics] = set(trainer.callback_metrics)
        weights[train_metrics] = module.model.state_dict()
    assert {"train/loss", "train/loss_forces", "train/forces_mae", "val/forces_mae"} <= logged[True]
    assert logged[True] - logged[False] == {key for key in logged[True] if key.startswith("train/")
                                             and not key.startswith("train/loss")}
    for name, value in weights[True].items():
        assert torch.isfinite(value).all(), name
        torch.testing.assert_close(weights[False][name], value, rtol=0, atol=0)
