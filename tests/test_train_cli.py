"""``equimol fit/evaluate`` from config files: every config parses, errors name the bad key,
and the quickstart runs end to end (shortened) with checkpoints, metrics, plots and an
offline W&B run on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from equimol.cli import main as equimol_main
from equimol.train.cli import main
from equimol.engines.evaluate import evaluate_main

_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# every config `equimol fit` takes (configs/study/ holds the study's own configs)
CONFIGS = sorted([*_CONFIG_DIR.glob("*.yaml"), *_CONFIG_DIR.glob("vae/*.yaml"), *_CONFIG_DIR.glob("peers/*.yaml")])


@pytest.mark.parametrize("config", CONFIGS, ids=[str(c.relative_to(_CONFIG_DIR)) for c in CONFIGS])
def test_every_config_parses_and_validates(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] and printed["data"]["class_path"]
    assert printed["trainer"]["inference_mode"] is False
    assert_optimizer_as_written(yaml.safe_load(config.read_text()), printed)


def assert_optimizer_as_written(written: dict, resolved: dict) -> None:
    """The resolved optimizer holds the config's arguments and, for the others, the defaults
    of its own class: not values carried over from the default optimizer's class (a
    ``class_path`` override keeps compatible ``init_args`` of the class it replaces, such as
    AdamW's ``weight_decay=0.01`` inside an ``Adam``)."""
    import importlib
    import inspect

    optimizer = resolved["model"]["init_args"].get("optimizer")
    if not isinstance(optimizer, dict) or "class_path" not in optimizer:
        return
    module, _, name = optimizer["class_path"].rpartition(".")
    defaults = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    given = ((written.get("model") or {}).get("init_args") or {}).get("optimizer") or {}
    given = given.get("init_args") or {} if isinstance(given, dict) else {}
    for key, value in (optimizer.get("init_args") or {}).items():
        expected = given[key] if key in given else defaults[key].default
        normalise = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        assert normalise(value) == normalise(expected), f"optimizer {key}: resolved {value}, expected {expected}"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


_SMALL = """
trainer: {{max_epochs: 1, logger: false}}
model:
  class_path: equimol.train.PotentialModule
  init_args:
    model:
      class_path: equimol.models.pair.PairNN
      init_args: {{cutoff: {model_cutoff}}}
    {extra_model}
data:
  class_path: equimol.train.AtomsDataModule
  init_args:
    cutoff: {data_cutoff}
    generator: {{name: lj-cluster, n_frames: 20}}
    batch_size: {batch_size}
"""


def _config(tmp_path, model_cutoff=2.5, data_cutoff=2.5, extra_model="", batch_size="4"):
    text = _SMALL.format(model_cutoff=model_cutoff, data_cutoff=data_cutoff, extra_model=extra_model,
                         batch_size=batch_size)
    return _write(tmp_path / "config.yaml", text)


def error_line(capsys, prog: str) -> str:
    """The one stderr line of a failed command, ``<prog>: error: ...``."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


def test_misspelt_config_key_fails_naming_the_key(tmp_path, capsys):
    config = _config(tmp_path, extra_model="forces_wieght: 3.0")
    code = equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert code == 2
    assert "model.init_args.forces_wieght" in error_line(capsys, "equimol fit")
    # from Python, the same message and SystemExit(2)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert "forces_wieght" in error_line(capsys, "equimol fit")


def test_wrong_type_in_config_fails_naming_the_key(tmp_path, capsys):
    config = _config(tmp_path, batch_size="eight")
    code = equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert code == 2
    line = error_line(capsys, "equimol fit")
    assert "data.init_args.batch_size" in line and "eight" in line


def test_cutoff_mismatch_between_model_and_data_is_an_error_naming_both(tmp_path, capsys):
    config = _config(tmp_path, model_cutoff=2.5, data_cutoff=3.0)
    with pytest.raises(ValueError, match=r"cutoff mismatch.*2\.5.*3\.0"):
        main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    code = equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "equimol fit: error: cutoff mismatch" in err and "Traceback" not in err


def test_quickstart_runs_end_to_end_with_evaluation_and_offline_wandb(tmp_path):
    root = tmp_path / "run"
    main([
        "fit", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"),
        "--trainer.max_epochs", "2",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.generator.n_frames", "20",
        "--data.init_args.generator.n_equilibration_steps", "10",
        "--data.init_args.generator.stride", "2",
        "--data.init_args.batch_size", "4",
        "--model.init_args.model.init_args.channels", "8",
    ])
    checkpoints = root / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert list(checkpoints.glob("best-*.ckpt"))
    statistics = json.loads((root / "statistics.json").read_text())
    assert statistics["split_sizes"] == {"train": 16, "val": 2, "test": 2}
    assert statistics["statistics"]["species"] == [29]

    # the offline W&B run: its data file, the resolved config, the parity plot
    runs = list((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))
    logged = yaml.safe_load((runs[0] / "files" / "config.yaml").read_text())
    assert logged["data"]["init_args"]["generator"]["n_frames"] == 20
    assert logged["model"]["init_args"]["model"]["class_path"].endswith("EquivariantPotential")
    images = [p.name for p in (runs[0] / "files" / "media" / "images").rglob("*.png")]
    assert any(name.startswith("parity") for name in images), images
    assert any(name.startswith("loss_curve") for name in images), images

    # evaluate the checkpoint on the run's own test split
    out = tmp_path / "evaluation"
    assert evaluate_main(["--ckpt", str(checkpoints / "last.ckpt"), "--data", str(root / "config.yaml"),
                          "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    assert result["num_structures"] == 2
    for name in ("energy_per_atom_mae", "energy_mae", "forces_mae", "forces_rmse", "stress_mae"):
        assert result["metrics"][name] >= 0.0
    assert (out / "parity.png").stat().st_size > 10_000


def test_epoch_timer_writes_one_line_per_epoch(tmp_path):
    """``EpochTimer`` from the command line: one JSON line per epoch with every training step
    counted and the validation time inside the epoch's wall time."""
    config = _config(tmp_path)  # 20 frames, split 0.8/0.1/0.1, batch 4: 4 steps per epoch
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path / "run"),
          "--trainer.max_epochs", "2", "--trainer.callbacks+=equimol.train.callbacks.EpochTimer"])
    lines = (tmp_path / "run" / "epoch_times.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [0, 1]
    for record in records:
        assert record["n_steps"] == 4
        assert 0 < record["val_wall_s"] < record["epoch_wall_s"]
        assert abs(record["train_wall_s"] + record["val_wall_s"] - record["epoch_wall_s"]) < 1e-9
        assert 0 < record["step_median_s"] <= record["step_sum_s"] <= record["train_wall_s"]
