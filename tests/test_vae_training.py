"""Training the configuration VAEs with Lightning on small Lennard-Jones-under-gravity data."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from equimol.models.vae import CoordinateVAE, DensityGridVAE, DistanceMatrixVAE, InvariantVAE
from equimol.generate.monte_carlo import lj_gravity_mc
from equimol.train.vae import ConfigurationDataModule, VAEModule, stack_configurations

N, L = 8, 5.0
TINY_MC = {
    "n_particles": N,
    "dim": 2,
    "box_length": L,
    "n_frames": 24,
    "n_equilibration_sweeps": 50,
    "n_preliminary_sweeps": 0,
    "decorrelation_sweeps": 3,
}


def _data(**kw) -> ConfigurationDataModule:
    args = {"generator": lj_gravity_mc, "gammas": [0.05, 0.5, 2.0], "generator_kwargs": TINY_MC}
    args.update(kw)
    return ConfigurationDataModule(batch_size=16, **args)


def _trainer(epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_data_module_mixes_gammas_and_splits_without_overlap():
    dm = _data(val_fraction=0.25, test_fraction=0.125)
    dm.setup()
    assert (dm.n_atoms, dm.dim, dm.box_length) == (N, 2, L)
    idx = torch.cat([dm.splits[s] for s in ("train", "val", "test")])
    assert sorted(idx.tolist()) == list(range(72))
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [45, 18, 9]
    pos, gamma = next(iter(dm.train_dataloader()))
    assert pos.shape == (16, N, 3) and pos.dtype == torch.float32
    assert sorted(set(dm.tensors("train")[1].tolist())) == pytest.approx([0.05, 0.5, 2.0])
    assert float(pos[..., :2].min()) >= 0 and float(pos[..., :2].max()) <= L
    assert torch.all(pos[..., 2] == 0)


def test_data_module_caches_and_reloads_the_same_tensors(tmp_path):
    first = _data(cache=str(tmp_path / "data.pt"))
    first.setup()
    second = ConfigurationDataModule(generator=lambda **_: [], gammas=[0.05, 0.5, 2.0],
                                     generator_kwargs=TINY_MC, cache=str(tmp_path / "data.pt"))
    # the key differs (another generator), so the cache is not used and nothing is generated
    with pytest.raises(ValueError, match="no frames"):
        second.setup()
    third = _data(cache=str(tmp_path / "data.pt"))
    third.setup()
    torch.testing.assert_close(third.tensors("val")[0], first.tensors("val")[0])


def test_stack_configurations_rejects_mixed_box_sizes():
    a = lj_gravity_mc(**{**TINY_MC, "n_frames": 2}, gamma=0.1)
    b = lj_gravity_mc(**{**TINY_MC, "n_frames": 2, "box_length": 6.0}, gamma=0.1)
    with pytest.raises(ValueError, match="box_length"):
        stack_configurations(a + b)


@pytest.mark.parametrize(
    "make",
    [
        lambda: CoordinateVAE(N, L, 2, latent_dim=4, hidden=(64, 64)),
        lambda: DistanceMatrixVAE(N, L, 2, latent_dim=4, hidden=64),
        lambda: DensityGridVAE(N, L, 2, latent_dim=4, grid_size=16, channels=(8, 16, 16)),
        lambda: InvariantVAE(N, L, 2, latent_dim=4, features=32, hidden=(64, 64)),
    ],
    ids=["CoordinateVAE", "DistanceMatrixVAE", "DensityGridVAE", "InvariantVAE"],
)
def test_short_training_run_lowers_the_negative_elbo(make):
    model = make()
    dm = _data()
    dm.setup()
    pos, _ = dm.tensors("train")
    model.eval()
    with torch.no_grad():
        before = float(model.elbo(pos)["loss"])
    model.train()
    module = VAEModule(model, beta=1.0, warmup_epochs=2, lr=3e-3)
    _trainer(6).fit(module, datamodule=dm)
    model.eval()
    with torch.no_grad():
        after = float(model.elbo(pos)["loss"])
    assert after < 0.7 * before, (before, after)


def test_kl_weight_ramps_linearly_over_the_warmup_epochs():
    dm = _data()
    module = VAEModule(CoordinateVAE(N, L, 2, latent_dim=2, hidden=(16,)), beta=0.5, warmup_epochs=4)
    seen: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.current_beta())

    trainer = _trainer(6)
    trainer.callbacks.append(Record())
    trainer.fit(module, datamodule=dm)
    per_epoch = len(seen) // 6
    assert seen[0] == 0.0
    assert seen[per_epoch] == pytest.approx(0.125)  # start of epoch 1: 1/4 of beta
    assert seen[-1] == 0.5
    assert all(b <= a + 1e-12 for b, a in zip(seen, seen[1:]))


def test_augmented_training_logs_the_elbo_terms():
    dm = _data()
    module = VAEModule(CoordinateVAE(N, L, 2, latent_dim=2, hidden=(16,)), augment_rotation=True,
                       augment_permutation=True)
    trainer = _trainer(1)
    trainer.fit(module, datamodule=dm)
    logged = trainer.callback_metrics
    for key in ("train/loss", "train/reconstruction", "train/kl", "val/loss", "val/elbo"):
        assert torch.isfinite(logged[key]), key


def test_module_refuses_data_of_another_size():
    dm = _data()
    module = VAEModule(CoordinateVAE(N + 1, L, 2, latent_dim=2, hidden=(16,)))
    with pytest.raises(ValueError, match="N=8"):
        _trainer(1).fit(module, datamodule=dm)
