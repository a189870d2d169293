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


def test_study_vae_passes_its_options_to_the_study(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """``equimol study vae``: every option reaches :func:`run_vae_study` (replaced here, so
    nothing trains) and the table goes to stdout."""
    from equimol.cli import main as equimol_main
    from equimol.studies import vae_study

    calls = []

    def fake_study(*args, **kwargs):
        calls.append((args, kwargs))
        return [{"model": "m", **{key: 0.5 for key, _, _ in vae_study.COLUMNS}}]

    monkeypatch.setattr(vae_study, "run_vae_study", fake_study)
    threads = torch.get_num_threads()
    try:
        code = equimol_main([
            "study", "vae", "--gammas", "0.1", "0.3", "--ood_gamma", "0.7", "--n_frames", "10", "--dim", "3",
            "--epochs", "2", "--latent_dim", "4", "--seed", "5", "--out", "runs/x",
        ])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert calls == [(([0.1, 0.3], 0.7, 10, 3, 2, 4, 5), {"out_dir": "runs/x", "cache": None})]
    out = capsys.readouterr().out
    assert out.startswith("| model |") and "| m |" in out


def test_vae_study_module_is_the_same_command() -> None:
    """``python -m equimol.studies.vae_study`` runs ``equimol study vae``: same options, same
    one-line errors."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "equimol.studies.vae_study", "--latent-dim", "4"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("equimol study") and "--latent_dim" in lines[0], result.stderr
