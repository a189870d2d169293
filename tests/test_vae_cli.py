"""A VAE config trains through ``equimol fit`` like a potential: checkpoint and offline W&B run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from equimol.studies.invariance import load_config
from equimol.train.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY_DATA = {
    "n_particles": 16, "dim": 2, "box_length": 8.0, "n_frames": 8,
    "n_equilibration_sweeps": 5, "n_preliminary_sweeps": 0, "decorrelation_sweeps": 1,
}  # fmt: skip


def test_invariant_vae_config_trains_with_equimol_fit(tmp_path: Path) -> None:
    main([
        "fit", "--config", str(ROOT / "configs" / "vae" / "invariant.yaml"),
        "--trainer.max_epochs", "2",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path),
        "--data.init_args.cache", str(tmp_path / "configurations.pt"),
        "--data.init_args.generator_kwargs", json.dumps(TINY_DATA),
        "--data.init_args.batch_size", "8",
    ])
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == 1 and checkpoint["global_step"] > 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert "InvariantVAE" in (runs[0] / "files" / "config.yaml").read_text()


@pytest.mark.parametrize("config", sorted((ROOT / "configs" / "study").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_study_config_loads(config: Path) -> None:
    loaded = load_config(config)
    assert loaded.models
