"""A run killed with SIGKILL and resumed with ``--ckpt_path last`` gives the per-epoch losses of
an uninterrupted run to round-off, and continues the same W&B run.

The killed run is a separate ``equimol fit`` process, killed as soon as the checkpoint of
its second epoch is on disk (so somewhere in the third: training, validation or writing a file); the
uninterrupted run trains meanwhile in this process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from equimol.cli import main

EPOCHS = 5
KILL_AFTER_EPOCH = 1  # the checkpoint of the second epoch

CONFIG = f"""
seed_everything: 0
trainer: {{max_epochs: {EPOCHS}, enable_progress_bar: false, enable_model_summary: false}}
model:
  class_path: equimol.train.PotentialModule
  init_args:
    model:
      class_path: equimol.models.equivariant.EquivariantPotential
      init_args: {{species: [H, C, O], cutoff: 3.0, channels: 2, num_layers: 1}}
    optimizer: {{class_path: torch.optim.AdamW, init_args: {{lr: 0.01, weight_decay: 0.0}}}}
data:
  class_path: equimol.train.AtomsDataModule
  init_args: {{cutoff: 3.0, sample: ethanol_gfn2, batch_size: 8, split: [24, 8, 268]}}
ema: {{decay: 0.9}}
"""


def _last(root: Path) -> dict | None:
    path = root / "checkpoints" / "last.ckpt"
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not there yet
        return None


def _history(root: Path) -> dict[str, list[tuple[int, float]]]:
    """The per-epoch losses the LossCurve callback kept in ``last.ckpt``."""
    checkpoint = _last(root)
    states = [state for key, state in checkpoint["callbacks"].items() if key.startswith("LossCurve")]
    return {name: [tuple(point) for point in points] for name, points in states[0]["history"].items()}


def _kill_after_epoch(process: subprocess.Popen, root: Path, epoch: int, stop: threading.Event) -> None:
    while process.poll() is None and not stop.is_set():
        checkpoint = _last(root)
        if checkpoint is not None and checkpoint["epoch"] >= epoch:
            process.send_signal(signal.SIGKILL)
            return
        time.sleep(0.05)


def _wandb_ids(root: Path) -> list[str]:
    return sorted(path.name.rsplit("-", 1)[1] for path in (root / "wandb").glob("offline-run-*"))


def _own_wandb_environment() -> dict[str, str]:
    """This process's environment without its W&B service: a child that inherits it joins this
    process's service, and once killed leaves its run there "in use", which the resumed run
    (here, in this process) would then be refused."""
    return {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, "WANDB_SILENT": "true"}


def test_killed_and_resumed_run_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG)
    whole, parts = tmp_path / "whole", tmp_path / "parts"

    # the run to kill, in its own process, with equimol's default (offline W&B) logger
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "equimol.cli", "fit", "--config", str(config),
         "--trainer.default_root_dir", str(parts)],
        stdout=log, stderr=subprocess.STDOUT, env=_own_wandb_environment(),
    )
    stop = threading.Event()
    killer = threading.Thread(target=_kill_after_epoch, args=(process, parts, KILL_AFTER_EPOCH, stop), daemon=True)
    killer.start()
    try:
        # meanwhile, the uninterrupted run (no logger: the logger changes nothing it computes)
        assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(whole),
                     "--trainer.logger", "false"]) == 0
        process.wait(timeout=300)
    finally:
        stop.set()
        if process.poll() is None:
            process.kill()
        log.close()
    assert process.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    killed_at = _last(parts)["epoch"]
    assert KILL_AFTER_EPOCH <= killed_at < EPOCHS - 1

    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(parts),
                 "--ckpt_path", "last"]) == 0

    expected, resumed = _history(whole), _history(parts)
    for name in ("train/loss", "val/loss"):
        assert [epoch for epoch, _ in resumed[name]] == list(range(EPOCHS)), name
        assert [epoch for epoch, _ in expected[name]] == list(range(EPOCHS)), name
        difference = max(abs(a - b) for (_, a), (_, b) in zip(expected[name], resumed[name], strict=True))
        print(f"{name}: largest difference per epoch {difference:.3g}")
        assert difference <= 1e-6 * max(abs(value) for _, value in expected[name]), (name, expected[name],
                                                                                         resumed[name])
    # the final weights (EMA and raw) agree as well
    final_whole, final_parts = _last(whole), _last(parts)
    for key in ("state_dict", "current_model_state"):
        for name, value in final_whole[key].items():
            if torch.is_floating_point(value):
                torch.testing.assert_close(final_parts[key][name], value, rtol=1e-5, atol=1e-6, msg=name)

    # the resumed run continued the killed run's W&B run: two offline folders, one run id
    ids = _wandb_ids(parts)
    assert len(ids) == 2 and len(set(ids)) == 1, ids


@pytest.mark.parametrize("ckpt_path", ["last", "explicit"])
def test_resume_hands_the_wandb_run_id_to_the_logger(tmp_path, ckpt_path):
    """Without training: the id stored in a checkpoint reaches the WandbLogger's config."""
    from equimol.train.cli import _resume_wandb

    from jsonargparse import Namespace

    root = tmp_path / "run"
    (root / "checkpoints").mkdir(parents=True)
    path = root / "checkpoints" / "last.ckpt"
    torch.save({"equimol_wandb": {"id": "abc123"}}, path)
    config = Namespace(
        ckpt_path="last" if ckpt_path == "last" else str(path),
        trainer=Namespace(default_root_dir=str(root), logger=Namespace(
            class_path="pytorch_lightning.loggers.WandbLogger", init_args=Namespace(id=None, version=None))),
    )
    _resume_wandb(config)
    assert config.trainer.logger.init_args.id == "abc123"
