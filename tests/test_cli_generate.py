"""Tests of the ``equimol`` command and its ``generate`` subcommand."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest

from equimol.cli import SUBCOMMANDS, main
from equimol.generate import GENERATORS, toy2d


def test_generate_toy2d_writes_frames_that_read_back_with_their_labels(tmp_path, capsys) -> None:
    out = tmp_path / "t.xyz"
    code = main(["generate", "toy2d", "--out", str(out), "--n_samples", "20", "--seed", "7"])
    assert code == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 20
    expected = toy2d(n_samples=20, seed=7)
    for read, made in zip(frames, expected):
        np.testing.assert_allclose(read.positions, made.positions, atol=1e-7)
        assert read.get_potential_energy() == pytest.approx(made.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(read.get_forces(), made.get_forces(), atol=1e-7)
        assert read.info["seed"] == 7 and read.info["generator"] == "toy2d"
    assert "20 frames" in capsys.readouterr().out


def test_generate_emt_md_accepts_a_size_triple_and_stores_stress(tmp_path) -> None:
    out = tmp_path / "cu.xyz"
    argv = ["generate", "emt-md", "--out", str(out), "--size", "[1, 1, 2]", "--n_frames", "2",
            "--stride", "2", "--n_equilibration_steps", "2", "--progress", "false"]  # fmt: skip
    assert main(argv) == 0
    frames = ase.io.read(out, ":")
    assert len(frames) == 2 and len(frames[0]) == 8
    assert frames[0].get_stress().shape == (6,) and frames[0].pbc.all()


def error_line(capsys, prog: str) -> str:
    """The one stderr line of a failed command, ``<prog>: error: ...``."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("typo", ["--n_sample", "--nsamples", "--n_smaples"])
def test_misspelt_option_fails_naming_it(typo: str, tmp_path, capsys) -> None:
    out = tmp_path / "t.xyz"
    code = main(["generate", "toy2d", "--out", str(out), typo, "20"])
    assert code == 2
    assert typo in error_line(capsys, "equimol generate toy2d")
    assert not out.exists()


def test_option_of_the_wrong_type_fails_naming_it(tmp_path, capsys) -> None:
    code = main(["generate", "toy2d", "--out", str(tmp_path / "t.xyz"), "--n_samples", "many"])
    assert code == 2
    line = error_line(capsys, "equimol generate toy2d")
    assert "n_samples" in line and "many" in line


def test_dashed_option_names_the_underscore_spelling(tmp_path, capsys) -> None:
    code = main(["generate", "toy2d", "--out", str(tmp_path / "t.xyz"), "--n-samples", "3"])
    assert code == 2
    assert "--n_samples" in error_line(capsys, "equimol generate")


def test_unknown_generator_is_named_in_the_error(tmp_path, capsys) -> None:
    code = main(["generate", "toy3d", "--out", str(tmp_path / "t.xyz")])
    assert code == 2
    line = error_line(capsys, "equimol generate")
    assert "toy3d" in line and "toy2d" in line


def test_invalid_value_is_reported_without_a_traceback(tmp_path, capsys) -> None:
    code = main(["generate", "emt-md", "--out", str(tmp_path / "x.xyz"), "--element", "Fe"])
    assert code == 2
    assert "'Fe'" in error_line(capsys, "equimol generate emt-md")


def test_invalid_value_with_traceback_flag_shows_it(tmp_path, capsys) -> None:
    code = main(["generate", "emt-md", "--out", str(tmp_path / "x.xyz"), "--element", "Fe", "--traceback"])
    assert code == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "'Fe'" in err


def test_generate_help_lists_every_generator(capsys) -> None:
    assert main(["generate", "--help"]) == 0
    text = capsys.readouterr().out
    for name in GENERATORS:
        assert name in text


def test_generator_help_lists_its_options(capsys) -> None:
    assert main(["generate", "lj-gravity-mc", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ["--out", "--gamma", "--temperature", "--dim", "--box_length", "--lj", "--seed"]:
        assert option in text


def test_no_arguments_prints_help_and_fails(capsys) -> None:
    assert main([]) != 0
    err = capsys.readouterr().err
    assert "usage: equimol" in err
    for name in SUBCOMMANDS:
        assert name in err


def test_unknown_subcommand_is_named(capsys) -> None:
    assert main(["genrate"]) == 2
    assert "'genrate'" in error_line(capsys, "equimol")
