"""The conventions every ``equimol`` subcommand shares: one-line errors with exit code 2,
``--traceback``, no abbreviated options, underscores in option names, short ``--help``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from equimol import _cli_errors
from equimol.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
STUDY = ROOT / "configs" / "study" / "toy2d_small.yaml"


def one_error_line(capsys: pytest.CaptureFixture, code: int, command: str) -> str:
    """The single stderr line of a failed command, checked: exit code 2, one non-empty line
    ``equimol <command>...: error: ...``, no traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"equimol {command}".rstrip()), err
    assert "error:" in lines[0] and lines[0].split("error:", 1)[1].strip(), err
    assert "Traceback" not in err
    return lines[0]


def _typo_config(tmp_path: Path) -> str:
    path = tmp_path / "typo.yaml"
    path.write_text(Path(QUICKSTART).read_text().replace("forces_weight:", "forces_wieght:", 1))
    return str(path)


# one bad input per subcommand -------------------------------------------------------------


def test_generate_typo_is_one_line(tmp_path, capsys) -> None:
    code = main(["generate", "toy2d", "--out", str(tmp_path / "t.xyz"), "--n_smaples", "3"])
    line = one_error_line(capsys, code, "generate")
    assert "--n_smaples" in line
    assert not (tmp_path / "t.xyz").exists()


def test_fit_typo_in_config_is_one_line_naming_the_key(tmp_path, capsys) -> None:
    code = main(["fit", "--config", _typo_config(tmp_path)])
    line = one_error_line(capsys, code, "fit")
    assert "model.init_args.forces_wieght" in line


def test_validate_bad_value_is_one_line_naming_the_key(capsys) -> None:
    code = main(["validate", "--config", QUICKSTART, "--data.init_args.batch_size", "eight"])
    line = one_error_line(capsys, code, "validate")
    assert "data.init_args.batch_size" in line and "eight" in line


def test_test_missing_config_file_is_one_line(tmp_path, capsys) -> None:
    code = main(["test", "--config", str(tmp_path / "missing.yaml")])
    line = one_error_line(capsys, code, "test")
    assert "missing.yaml" in line


def test_predict_missing_data_file_is_one_line(tmp_path, capsys) -> None:
    # the data is checked before the model is loaded: the checkpoint need not exist
    code = main(["predict", "--ckpt", str(tmp_path / "model.ckpt"), "--data", str(tmp_path / "missing.xyz"),
                 "--out", str(tmp_path / "predictions.extxyz")])
    line = one_error_line(capsys, code, "predict")
    assert "missing.xyz" in line and "no such structure file" in line
    assert not (tmp_path / "predictions.extxyz").exists()


def test_predict_unknown_sample_is_one_line(capsys) -> None:
    code = main(["predict", "--ckpt", "x.ckpt", "--data", "sample:ethanol"])
    line = one_error_line(capsys, code, "predict")
    assert "'ethanol'" in line and "ethanol_gfn2" in line


def test_predict_typo_in_a_flag_is_one_line(tmp_path, capsys) -> None:
    code = main(["predict", "--ckpt", "x.ckpt", "--data", "sample:ethanol_gfn2", "--bacth_size", "8"])
    line = one_error_line(capsys, code, "predict")
    assert "bacth_size" in line


def test_evaluate_missing_checkpoint_is_one_line(tmp_path, capsys) -> None:
    code = main(["evaluate", "--ckpt", str(tmp_path / "none.ckpt"), "--data", "sample:ethanol_gfn2"])
    line = one_error_line(capsys, code, "evaluate")
    assert "none.ckpt" in line


def test_compile_missing_checkpoint_is_one_line(tmp_path, capsys) -> None:
    code = main(["compile", str(tmp_path / "none.ckpt"), str(tmp_path / "out.pt2")])
    line = one_error_line(capsys, code, "compile")
    assert "none.ckpt" in line
    assert not (tmp_path / "out.pt2").exists()


def test_study_invariance_typo_is_one_line(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(STUDY.read_text().replace("  epochs: 30", "  epochz: 30", 1))
    code = main(["study", "invariance", "--config", str(bad)])
    line = one_error_line(capsys, code, "study invariance")
    assert "epochz" in line


def test_study_vae_bad_value_is_one_line(capsys) -> None:
    code = main(["study", "vae", "--dim", "4"])
    line = one_error_line(capsys, code, "study vae")
    assert "dim" in line and "4" in line


def test_unknown_subcommand_is_one_line(capsys) -> None:
    code = main(["fitt", "--config", QUICKSTART])
    line = one_error_line(capsys, code, "")
    assert "'fitt'" in line and "fit" in line.split("choose from", 1)[1]


# tracebacks -----------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_traceback_flag_shows_the_traceback(where, tmp_path, capsys) -> None:
    args = ["evaluate", "--ckpt", str(tmp_path / "none.ckpt"), "--data", "sample:ethanol_gfn2"]
    args = ["--traceback", *args] if where == "before" else [*args, "--traceback"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "none.ckpt" in err


def test_traceback_environment_variable_shows_the_traceback(monkeypatch, capsys) -> None:
    monkeypatch.setenv("EQUIMOL_TRACEBACK", "1")
    assert main(["study", "vae", "--dim", "4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err


# option spelling ------------------------------------------------------------------------


def test_trainer_option_prefix_is_rejected(capsys) -> None:
    code = main(["fit", "--config", QUICKSTART, "--trainer.max_epoch", "1", "--print_config"])
    line = one_error_line(capsys, code, "fit")
    assert "--trainer.max_epoch" in line


@pytest.mark.parametrize(
    ("command", "args", "prefix"),
    [
        (["generate", "toy2d"], ["--out", "x.xyz", "--n_sample", "3"], "--n_sample"),
        (["evaluate"], ["--ckpt", "x.ckpt", "--data", "x.xyz", "--batch_siz", "3"], "--batch_siz"),
        (["predict"], ["--ckpt", "x.ckpt", "--data", "x.xyz", "--energy_ke", "E"], "--energy_ke"),
        (["study", "vae"], ["--epoch", "3"], "--epoch"),
        (["study", "invariance"], ["--config", str(STUDY), "--training.epoch", "3"], "--training.epoch"),
    ],
)
def test_option_prefixes_are_rejected_everywhere(command, args, prefix, capsys) -> None:
    line = one_error_line(capsys, main([*command, *args]), " ".join(command[:1]))
    assert prefix in line


def test_dashed_option_names_its_new_spelling(capsys) -> None:
    code = main(["evaluate", "--ckpt", "x.ckpt", "--data", "x.xyz", "--batch-size", "4"])
    line = one_error_line(capsys, code, "evaluate")
    assert "--batch-size" in line and "--batch_size" in line


def test_one_line_reduces_a_nested_jsonargparse_message() -> None:
    message = "\n".join([
        'Parser key "data":',
        "  Does not validate against any of the Union subtypes",
        "  Subtypes: [<class 'pytorch_lightning.core.datamodule.LightningDataModule'>, <class 'NoneType'>]",
        "  Errors:",
        "    - Problem with given class_path 'equimol.train.AtomsDataModule':",
        '        Parser key "batch_size":',
        "          Expected a <class 'int'>. Got value: eight",
        "    - Expected a <class 'NoneType'>",
        "  Given value type: <class 'jsonargparse._util.NestedArg'>",
    ])  # fmt: skip
    assert _cli_errors.one_line(message) == "data.init_args.batch_size: expected int, got eight"


# help -----------------------------------------------------------------------------------


def test_fit_help_is_short_and_starts_with_model_and_data(capsys) -> None:
    assert main(["fit", "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 110
    text = "\n".join(lines)
    first = {key: next(k for k, line in enumerate(lines) if key in line)
             for key in ("equimol.train.PotentialModule", "energy_weight", "batch_size", "--trainer.KEY")}
    assert first["equimol.train.PotentialModule"] < first["energy_weight"] < first["--trainer.KEY"]
    assert first["batch_size"] < first["--trainer.KEY"]
    assert "AtomsDataModule" in text and "--help_all" in text
    for group in ("--checkpoint.KEY", "--ema.KEY", "--early_stopping.KEY"):
        assert sum(group in line for line in lines) == 1


def test_fit_help_lists_the_classes_of_a_config(capsys) -> None:
    assert main(["fit", "--config", str(ROOT / "configs" / "vae" / "invariant.yaml"), "--help"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) <= 110
    text = "\n".join(lines)
    assert "equimol.train.vae.VAEModule" in text and "InvariantVAE" in text and "ConfigurationDataModule" in text


def test_study_help_lists_both_studies(capsys) -> None:
    assert main(["study", "--help"]) == 0
    out = capsys.readouterr().out
    assert "invariance" in out and "vae" in out


def test_top_level_help_lists_subcommands_and_traceback(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--traceback" in out
    for name in SUBCOMMANDS:
        assert name in out


# logging --------------------------------------------------------------------------------


def test_library_log_messages_reach_stderr_and_results_stdout(monkeypatch, capsys) -> None:
    def hello(argv: list[str]) -> int:
        logging.getLogger("equimol.studies.hello").info("progress %d", 1)
        print("result")
        return 0

    monkeypatch.setattr("equimol.cli._load", lambda name: hello)
    assert main(["study", "hello"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "result\n"
    assert captured.err == "progress 1\n"
