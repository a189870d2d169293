"""A run folder holds one run and its files describe it: ``equimol fit`` refuses a new run in a
folder that holds checkpoints, a resumed run replaces its own ``last.ckpt`` (never
``last-v1.ckpt``), a run that fails before training leaves ``config.yaml``, ``split.json`` and
``statistics.json`` alone, and ``validate``, ``test`` and ``predict`` never rewrite them. One tiny
model is trained for the module; each test works on a copy of its run folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import ase.io
import pytest
import torch
import yaml

from equimol.cli import main as equimol_main
from equimol.data.samples import sample_path


RUN_FILES = ("config.yaml", "split.json", "statistics.json")
CHECKPOINTS = ["best-epoch=000.ckpt", "last.ckpt"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_tiny_ethanol_config) -> tuple[Path, Path]:
    """The config and the folder of a run fitted for one epoch of two steps."""
    root = tmp_path_factory.mktemp("folders")
    config = write_tiny_ethanol_config(
        root / "config.in.yaml", split=(0.8, 0.1, 0.1), limit_train_batches=2, limit_val_batches=1,
        limit_test_batches=1, limit_predict_batches=1,
    )
    assert equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root / "run")]) == 0
    return config, root / "run"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run folder (so also a moved one)."""
    copy = tmp_path / "run"
    shutil.copytree(trained[1], copy)
    return copy


def _files(run: Path) -> dict[str, bytes]:
    return {name: (run / name).read_bytes() for name in RUN_FILES}


def _checkpoints(run: Path) -> list[str]:
    return sorted(path.name for path in (run / "checkpoints").iterdir())


def _fit(config: Path, run: Path, *extra: str) -> int:
    return equimol_main(["fit", "--config", str(config), "--trainer.default_root_dir", str(run), *extra])


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_the_run_folder_records_the_run(trained):
    _, run = trained
    assert _checkpoints(run) == CHECKPOINTS
    assert all((run / name).is_file() for name in RUN_FILES)
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["split"] == [0.8, 0.1, 0.1]
    assert not list(run.glob(".*.tmp"))


def test_a_new_fit_into_a_folder_with_checkpoints_is_refused(trained, run, capsys):
    before = _files(run)
    assert _fit(trained[0], run, "--trainer.max_epochs", "2") == 2
    message = _error(capsys)
    assert message.startswith(f"equimol fit: error: {run / 'checkpoints'} already holds the checkpoints of a run "
                              "(best-epoch=000.ckpt, last.ckpt)"), message
    assert "--ckpt_path last" in message and "--trainer.default_root_dir" in message
    assert _files(run) == before
    assert _checkpoints(run) == CHECKPOINTS


def test_a_fit_from_another_checkpoint_into_a_folder_with_checkpoints_is_refused(trained, run, tmp_path, capsys):
    other = tmp_path / "elsewhere.ckpt"
    shutil.copy(trained[1] / "checkpoints" / "last.ckpt", other)
    before = _files(run)
    assert _fit(trained[0], run, "--ckpt_path", str(other)) == 2
    message = _error(capsys)
    assert "already holds the checkpoints of another run" in message and "--trainer.default_root_dir" in message
    assert _files(run) == before and _checkpoints(run) == CHECKPOINTS


def test_resuming_last_when_only_best_is_left_names_it(trained, run, capsys):
    (run / "checkpoints" / "last.ckpt").unlink()
    assert _fit(trained[0], run, "--ckpt_path", "last") == 2
    message = _error(capsys)
    assert f"{run / 'checkpoints'} has no last.ckpt, only best-epoch=000.ckpt" in message, message
    assert _checkpoints(run) == ["best-epoch=000.ckpt"]


def test_a_resumed_run_replaces_its_last_checkpoint_even_in_a_moved_folder(trained, run):
    """The copy lives in another folder than the one recorded in the checkpoint."""
    assert _fit(trained[0], run, "--ckpt_path", "last", "--trainer.max_epochs", "2") == 0
    names = _checkpoints(run)
    assert "last.ckpt" in names and not any(name.startswith("last-v") for name in names), names
    assert len([name for name in names if name.startswith("best-")]) == 1, names
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_epochs"] == 2


def test_a_resumed_run_that_fails_on_bad_data_leaves_the_run_files(trained, run, tmp_path, capsys):
    """Frames with an element the model does not know: the run fails after its data is read."""
    frames = ase.io.read(sample_path("ethanol_gfn2"), ":20")
    for atoms in frames:
        numbers = atoms.numbers.copy()
        numbers[numbers == 8] = 7
        atoms.numbers = numbers
    bad = tmp_path / "nitrogen.extxyz"
    ase.io.write(bad, frames)
    before = _files(run)
    code = _fit(trained[0], run, "--ckpt_path", "last", "--trainer.max_epochs", "2",
                "--data.init_args.sample", "null", "--data.init_args.path", str(bad))
    assert code == 2
    assert "atomic numbers [7]" in _error(capsys)
    assert _files(run) == before
    assert _checkpoints(run) == CHECKPOINTS


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_subcommands_leave_the_training_runs_files(trained, run, subcommand, tmp_path):
    before = _files(run)
    stamps = {name: (run / name).stat().st_mtime_ns for name in RUN_FILES}
    if subcommand == "predict":  # predictions of the config's test split, written elsewhere
        code = equimol_main(["predict", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--data", str(trained[0]),
                             "--batch_size", "3", "--out", str(tmp_path / "predictions.extxyz")])
    else:  # a config that differs from the training run's, as a later evaluation's would
        code = equimol_main([subcommand, "--config", str(trained[0]), "--trainer.default_root_dir", str(run),
                             "--ckpt_path", "last", "--data.init_args.batch_size", "3"])
    assert code == 0
    assert _files(run) == before
    assert {name: (run / name).stat().st_mtime_ns for name in RUN_FILES} == stamps
    assert _checkpoints(run) == CHECKPOINTS


def test_evaluation_with_last_and_no_checkpoint_is_an_error(trained, tmp_path, capsys):
    assert equimol_main(["validate", "--config", str(trained[0]), "--trainer.default_root_dir",
                         str(tmp_path / "empty"), "--ckpt_path", "last"]) == 2
    assert "holds no last.ckpt" in _error(capsys)


def test_weights_only_false_is_refused(trained, run, capsys):
    assert _fit(trained[0], run, "--ckpt_path", "last", "--weights_only", "false") == 2
    assert "weights_only=False is not supported" in _error(capsys)
