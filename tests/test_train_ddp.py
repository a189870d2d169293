"""DDP on two CPU processes (gloo): training runs, and the validation metrics, reduced across
the processes by torchmetrics, equal those of one process on the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import pytorch_lightning as pl
import torch

from equimol.models.pair import PairNN
from equimol.train import PotentialModule

SCRIPT = textwrap.dedent(
    """
    import functools, json, sys
    import pytorch_lightning as pl, torch
    from equimol.models.pair import PairNN
    from equimol.train import EMA, AtomsDataModule, PotentialModule

    root = sys.argv[1]
    pl.seed_everything(0)
    datamodule = AtomsDataModule(cutoff=2.5, generator={"name": "lj-cluster", "n_frames": 48, "seed": 0},
                                 split=[32, 16], batch_size=8, cache_dir=root + "/data")
    module = PotentialModule(PairNN(cutoff=2.5, hidden=[16]), forces_weight=1.0, lr_scheduler=None,
                             optimizer=functools.partial(torch.optim.AdamW, lr=1e-3))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         inference_mode=False, default_root_dir=root, callbacks=[EMA(decay=0.9)])
    trainer.fit(module, datamodule)
    metrics = trainer.validate(module, datamodule, verbose=False)[0]
    if trainer.is_global_zero:
        torch.save(module.model.state_dict(), root + "/weights.pt")
        json.dump({"metrics": metrics, "global_step": trainer.global_step,
                   "world_size": trainer.world_size}, open(root + "/result.json", "w"))
    """
)


@pytest.mark.slow
def test_ddp_two_processes_trains_and_validation_metrics_match_one_process(tmp_path, lj_datamodule, quiet_trainer):
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["global_step"] == 4  # 32 structures / (2 processes x 8) = 2 steps per epoch

    pl.seed_everything(0)
    datamodule = lj_datamodule(tmp_path / "data", n_frames=48, split=[32, 16], batch_size=8)  # as in SCRIPT
    model = PairNN(cutoff=2.5, hidden=[16])
    model.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))
    module = PotentialModule(model, forces_weight=1.0, lr_scheduler=None)
    trainer = quiet_trainer(tmp_path, accelerator="cpu", devices=1)
    single = trainer.validate(module, datamodule, verbose=False)[0]
    ddp = result["metrics"]
    for name in ("val/loss", "val/energy_per_atom_mae", "val/energy_rmse", "val/forces_mae",
                 "val/forces_rmse", "val/energy_r2"):
        assert ddp[name] == pytest.approx(single[name], rel=1e-4, abs=1e-6), name
