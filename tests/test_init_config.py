"""``equimol init`` (a config from one's own extxyz file), the cutoff written once, and
``equimol committee``: keys and species are detected, the written config trains, stress is
trained only for periodic cells with stress labels, bad input fails naming the file and key,
and a committee's members differ in seed but share the split, and are not trained twice."""

from __future__ import annotations

import json
import re
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml

from equimol.cli import main as equimol
from equimol.data.io import read_frames
from equimol.data.samples import sample_path
from equimol.train.init_config import init_main

# a tiny, quiet fit of a written config
TINY = ["--model.init_args.model.init_args.channels", "4", "--model.init_args.model.init_args.num_layers", "1",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false"]


def _ref_frames(count: int) -> list[ase.Atoms]:
    """Ethanol frames whose labels are stored as plain arrays under REF_ keys (no calculator)."""
    frames = []
    for atoms in read_frames(sample_path("ethanol_gfn2"))[:count]:
        copy = ase.Atoms(atoms.numbers, positions=atoms.positions)
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.info["config_type"] = "md"
        copy.arrays["REF_forces"] = atoms.get_forces()
        frames.append(copy)
    return frames


@pytest.fixture(scope="module")
def ethanol_ref(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ref") / "ethanol_ref.xyz"
    ase.io.write(path, _ref_frames(40), format="extxyz")
    return path


@pytest.fixture(scope="module")
def ethanol_config(ethanol_ref, tmp_path_factory):
    """``equimol init`` on the REF_ file: (config path, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("init") / "ethanol.yaml"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert init_main([str(ethanol_ref), "--out", str(out), "--root_dir", str(out.parent / "run")]) == 0
    return out, printed.getvalue()


def test_init_detects_ref_keys_and_species_and_writes_a_commented_config(ethanol_config):
    out, printed = ethanol_config
    assert "energy: found under 'REF_energy' (info) on all 40 frames" in printed
    assert "forces: found under 'REF_forces' (arrays) on all 40 frames" in printed
    assert "stress: no labels found" in printed
    assert "species: H, C, O (3 elements)" in printed
    assert "periodic: molecules (no periodic cell)" in printed
    distance = float(printed.split("smallest interatomic distance: ")[1].split(" Å")[0])
    assert 0.85 < distance < 1.2  # an X-H bond of hot ethanol
    text = out.read_text()
    config = yaml.safe_load(text)
    model = config["model"]["init_args"]["model"]["init_args"]
    data = config["data"]["init_args"]
    assert model["species"] == ["H", "C", "O"]  # by atomic number
    assert model["cutoff"] in (4.0, 5.0)
    assert "cutoff" not in data  # written once, in the model
    assert text.count("cutoff:") == 1
    assert data["energy_key"] == "REF_energy" and data["forces_key"] == "REF_forces" and data["stress_key"] is None
    assert data["require"] == ["energy", "forces"] and data["split"] == [0.8, 0.1, 0.1]
    assert config["model"]["init_args"]["stress_weight"] == 0.0
    assert config["trainer"]["logger"]["init_args"]["offline"] is True
    assert config["trainer"]["default_root_dir"] == str(out.parent / "run")
    assert config["ema"]["decay"] > 0 and config["early_stopping"]["patience"] > 0
    # every choice comes with its reason
    cutoff_line = next(k for k, line in enumerate(text.splitlines()) if line.strip().startswith("cutoff:"))
    assert "#" in text.splitlines()[cutoff_line] + text.splitlines()[cutoff_line - 1]
    assert sum(line.lstrip().startswith("#") or " # " in line for line in text.splitlines()) >= 25


def test_a_data_cutoff_that_differs_from_the_models_still_fails(ethanol_config, tmp_path, capsys):
    out, _ = ethanol_config
    args = ["--config", str(out), *TINY, "--trainer.default_root_dir", str(tmp_path / "run"),
            "--data.init_args.cutoff", "3.0"]
    assert equimol(["fit", *args]) == 2
    err = capsys.readouterr().err
    assert re.search(r"equimol fit: error: cutoff mismatch: the model's cutoff is [45]\.0 Å .* 3\.0 Å", err), err
    assert not (tmp_path / "run" / "checkpoints").exists()


def _copper(emt_copper, count: int, stress: bool) -> list[ase.Atoms]:
    frames = [emt_copper(seed) for seed in range(count)]
    if not stress:
        for atoms in frames:
            del atoms.calc.results["stress"]
    return frames


@pytest.mark.parametrize("stress", [True, False], ids=["with-stress", "without-stress"])
def test_periodic_data_trains_stress_only_with_stress_labels(emt_copper, tmp_path, capsys, stress):
    path = tmp_path / "cu.xyz"
    ase.io.write(path, _copper(emt_copper, 12, stress), format="extxyz")
    out = tmp_path / "cu.yaml"
    assert equimol(["init", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "periodic: periodic cells" in printed and "species: Cu (1 element)" in printed
    config = yaml.safe_load(out.read_text())
    data, module = config["data"]["init_args"], config["model"]["init_args"]
    assert module["model"]["init_args"]["cutoff"] == 5.0
    assert data["energy_key"] == "energy" and data["forces_key"] == "forces"
    if stress:
        assert module["stress_weight"] > 0 and data["stress_key"] == "stress" and "stress" in data["require"]
    else:
        assert module["stress_weight"] == 0.0 and data["stress_key"] is None and "stress" not in data["require"]
        assert "stress: no labels found" in printed


def test_stress_of_molecules_is_not_trained_and_isolated_atoms_are_warned_of(tmp_path, capsys):
    frames = _ref_frames(6)
    for atoms in frames:
        atoms.info["REF_stress"] = np.zeros(6)
    path = tmp_path / "mol.xyz"
    ase.io.write(path, frames, format="extxyz")
    out = tmp_path / "mol.yaml"
    assert equimol(["init", str(path), "--out", str(out), "--cutoff", "1.0"]) == 0
    captured = capsys.readouterr()
    assert "stress: found under 'REF_stress'" in captured.out
    assert "stress labels under 'REF_stress' are left out" in captured.err
    assert "frames have atoms without any neighbour" in captured.err  # C-H bonds are ~1.1 Å
    config = yaml.safe_load(out.read_text())
    assert config["model"]["init_args"]["stress_weight"] == 0.0
    assert config["model"]["init_args"]["model"]["init_args"]["cutoff"] == 1.0


def test_a_file_without_energy_labels_is_an_error_naming_the_keys_present(tmp_path, capsys):
    frames = _ref_frames(3)
    for atoms in frames:
        del atoms.info["REF_energy"]
        atoms.info["dft_temperature"] = 300.0
    path = tmp_path / "no_energy.xyz"
    ase.io.write(path, frames, format="extxyz")
    assert equimol(["init", str(path), "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("equimol init: error:") and len(err.splitlines()) == 1
    assert str(path) in err and "no energy labels" in err
    assert "'REF_forces'" in err and "'config_type'" in err and "'dft_temperature'" in err
    assert not (tmp_path / "x.yaml").exists()
    # a key given that the frames do not have names the key and the file
    assert equimol(["init", str(path), "--energy_key", "E_dft", "--out", str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err
    assert "'E_dft'" in err and str(path) in err and "'REF_forces'" in err


def test_an_existing_out_is_kept_unless_overwrite(ethanol_ref, tmp_path, capsys):
    out = tmp_path / "taken.yaml"
    out.write_text("mine: 1\n")
    assert equimol(["init", str(ethanol_ref), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert out.read_text() == "mine: 1\n"
    assert equimol(["init", str(ethanol_ref), "--out", str(out), "--overwrite", "--val", f"{ethanol_ref}@-8:"]) == 0
    data = yaml.safe_load(out.read_text())["data"]["init_args"]
    assert data["val_path"] == f"{ethanol_ref}@-8:" and "split" not in data


def _member_state(checkpoint: str) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_the_config_trains_as_a_committee_whose_members_differ_in_seed_share_the_split_and_train_once(
    ethanol_config, tmp_path, capsys
):
    """The written config trains (its data takes the model's cutoff); the members of a committee
    of it differ in seed and weights but not in split; a second run trains nothing again, and
    resumes a member left unfinished."""
    out = tmp_path / "committee"
    args = ["committee", "--config", str(ethanol_config[0]), "--size", "2", "--out", str(out), *TINY]
    assert equimol(args) == 0
    model_cutoff = yaml.safe_load(ethanol_config[0].read_text())["model"]["init_args"]["model"]["init_args"]["cutoff"]
    run = out / "member_0"
    assert json.loads((run / "statistics.json").read_text())["cutoff"] == model_cutoff
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["init_args"]["cutoff"] == model_cutoff
    printed = capsys.readouterr().out
    committee = json.loads((out / "committee.json").read_text())
    members = committee["members"]
    assert [member["seed"] for member in members] == [0, 1]
    checkpoints = [member["checkpoint"] for member in members]
    assert all(Path(path).is_file() and Path(path).parent == out / f"member_{k}" / "checkpoints"
               for k, path in enumerate(checkpoints))
    assert "equimol evaluate --ckpt " + checkpoints[0] + " --ckpt " + checkpoints[1] in printed
    splits = [json.loads((out / f"member_{k}" / "split.json").read_text()) for k in range(2)]
    assert splits[0] == splits[1] and [len(splits[0][part]) for part in ("train", "val", "test")] == [32, 4, 4]
    first, second = (_member_state(path) for path in checkpoints)
    assert any(not torch.equal(first[key], second[key]) for key in first)  # other seeds, other weights

    # again: nothing is trained; member 1 left unfinished resumes from its last.ckpt
    stamps = [Path(path).stat().st_mtime_ns for path in checkpoints]
    (out / "member_1" / "member.json").unlink()
    assert equimol([*args, "--trainer.max_epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"member 0: finished, skipped ({out / 'member_0'})" in printed
    assert "member 1: resuming with seed 1" in printed
    assert Path(checkpoints[0]).stat().st_mtime_ns == stamps[0]
    last = torch.load(out / "member_1" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (1, 4)  # a second epoch of 2 steps after the first
    assert json.loads((out / "member_1" / "split.json").read_text()) == splits[0]


def test_a_failing_member_stops_the_committee_naming_it(ethanol_config, tmp_path, capsys):
    out = tmp_path / "committee"
    code = equimol(["committee", "--config", str(ethanol_config[0]), "--size", "2", "--out", str(out), *TINY,
                    "--data.init_args.energy_key", "no_such_key"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"committee member 0 ({out / 'member_0'}) failed" in err and "no_such_key" in err
    assert not (out / "committee.json").exists()
