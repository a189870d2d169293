"""``equimol evaluate`` and ``equimol predict`` on a structure file of one's own: labels under any
key, predictions that ASE reads back as the model's, metrics equal to those computed by hand
from the written file, predictions without labels, a config whose data section leaves out the
cutoff, and frames streamed a batch at a time."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.stress import full_3x3_to_voigt_6_stress

from equimol.cli import main
from equimol.data import MissingKeyError
from equimol.data.samples import sample_path

CUTOFF = 3.0
PERIODIC = (2, 7)  # frames of the labelled file put in a periodic box, with a stress label


def _reference_frames() -> list[ase.Atoms]:
    """Ten ethanol frames with their labels under REF_ keys (no calculator), two of them in a
    periodic 7 Å box with a made-up symmetric stress."""
    frames = ase.io.read(sample_path("ethanol_gfn2"), "200:210")
    rng = np.random.default_rng(0)
    for k, atoms in enumerate(frames):
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        atoms.info["REF_energy"] = energy
        atoms.arrays["REF_forces"] = forces
        atoms.info["config_type"] = "md"
        if k in PERIODIC:
            atoms.set_cell(np.eye(3) * 7.0)
            atoms.center()
            atoms.pbc = True
            stress = rng.normal(0.0, 0.01, (3, 3))
            atoms.info["REF_stress"] = full_3x3_to_voigt_6_stress(stress + stress.T)
    return frames


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def labelled(folder) -> Path:
    path = folder / "reference.xyz"
    ase.io.write(path, _reference_frames())
    return path


@pytest.fixture(scope="module")
def checkpoint(folder, write_fit_config) -> Path:
    """A tiny potential fitted by ``equimol fit`` for two steps on 12 frames: a checkpoint the
    command loads."""
    ase.io.write(folder / "train.xyz", ase.io.read(sample_path("ethanol_gfn2"), "0:12"))
    config = write_fit_config(
        folder / "fit.yaml",
        data={"cutoff": CUTOFF, "path": str(folder / "train.xyz"), "batch_size": 5, "split": [10, 2]},
        model={"species": ["H", "C", "O"], "cutoff": CUTOFF, "channels": 2, "num_layers": 1},
        trainer={"num_sanity_val_steps": 0, "limit_train_batches": 2},
        model_class="equimol.models.equivariant.EquivariantPotential",
    )
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(folder / "run")]) == 0
    return folder / "run" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def evaluated(folder, labelled, checkpoint) -> Path:
    out = folder / "evaluation"
    code = main(["evaluate", "--ckpt", str(checkpoint), "--data", str(labelled), "--energy_key", "REF_energy",
                 "--forces_key", "REF_forces", "--stress_key", "REF_stress", "--out", str(out), "--batch_size", "4"])
    assert code == 0
    return out


@pytest.fixture
def model():
    from equimol.models.equivariant import EquivariantPotential

    torch.manual_seed(1)
    return EquivariantPotential(["H", "C", "O"], cutoff=CUTOFF, channels=2, num_layers=1)


def test_predictions_are_the_models_with_the_reference_beside_them(evaluated, labelled, checkpoint):
    from equimol.calculator import EquimolCalculator

    written = ase.io.read(evaluated / "predictions.extxyz", ":")
    reference = ase.io.read(labelled, ":")
    assert len(written) == len(reference) == 10
    calculator = EquimolCalculator(str(checkpoint))
    for k, (frame, source) in enumerate(zip(written, reference)):
        np.testing.assert_allclose(frame.positions, source.positions, atol=1e-8)
        expected = source.copy()
        expected.calc = calculator
        np.testing.assert_allclose(frame.get_forces(), expected.get_forces(), atol=2e-6)
        assert frame.get_potential_energy() == pytest.approx(expected.get_potential_energy(), abs=1e-4)
        np.testing.assert_allclose(frame.arrays["REF_forces"], source.arrays["REF_forces"], atol=1e-8)
        assert frame.info["REF_energy"] == pytest.approx(source.info["REF_energy"], abs=1e-9)
        assert frame.info["source_frame"] == k and frame.info["config_type"] == "md"
        error = frame.get_forces() - frame.arrays["REF_forces"]
        assert frame.info["forces_rmse"] == pytest.approx(np.sqrt((error**2).mean()), rel=1e-5)
        assert frame.info["energy_error"] == pytest.approx(frame.get_potential_energy() - frame.info["REF_energy"])
        assert frame.info["energy_per_atom_error"] == pytest.approx(frame.info["energy_error"] / len(frame))
        assert "energy_std" not in frame.info and "forces_std" not in frame.arrays  # one model, no spread
        if k in PERIODIC:
            np.testing.assert_allclose(frame.get_stress(), expected.get_stress(), atol=1e-6)
            np.testing.assert_allclose(frame.info["REF_stress"], source.info["REF_stress"], atol=1e-12)
        else:
            assert "stress" not in frame.calc.results and "REF_stress" not in frame.info


def test_metrics_are_those_computed_by_hand_from_the_written_file(evaluated):
    frames = ase.io.read(evaluated / "predictions.extxyz", ":")
    result = json.loads((evaluated / "metrics.json").read_text())
    n = np.array([len(frame) for frame in frames])
    energy = np.array([frame.get_potential_energy() for frame in frames])
    target = np.array([frame.info["REF_energy"] for frame in frames])
    forces = np.concatenate([frame.get_forces() for frame in frames]).ravel()
    forces_target = np.concatenate([frame.arrays["REF_forces"] for frame in frames]).ravel()
    periodic = [frame for frame in frames if frame.pbc.all()]
    stress = np.concatenate([frame.get_stress(voigt=False).ravel() for frame in periodic])
    stress_target = np.concatenate([_full(frame.info["REF_stress"]).ravel() for frame in periodic])

    expected = {}
    for name, (predicted, true) in {"energy_per_atom": (energy / n, target / n), "energy": (energy, target),
                                    "forces": (forces, forces_target), "stress": (stress, stress_target)}.items():
        error = predicted - true
        expected[f"{name}_mae"] = np.abs(error).mean()
        expected[f"{name}_rmse"] = np.sqrt((error**2).mean())
        if name.startswith("energy"):
            expected[f"{name}_r2"] = 1 - (error**2).sum() / ((true - true.mean()) ** 2).sum()
        quantity = result["per_quantity"][name]
        assert quantity["count"] == len(true)
        assert quantity["max_abs_error"] == pytest.approx(np.abs(error).max(), rel=1e-5, abs=1e-9)
    assert list(result["metrics"]) == list(expected)
    for name, value in expected.items():
        assert result["metrics"][name] == pytest.approx(value, rel=1e-5, abs=1e-9), name
    assert result["num_structures"] == result["num_evaluated"] == 10 and result["non_finite"] == []
    assert result["uncertainty"] is None
    for figure in ("parity_energy_per_atom", "parity_forces", "parity_stress", "parity", "errors"):
        assert (evaluated / f"{figure}.png").stat().st_size > 10_000, figure
    assert not (evaluated / "uncertainty.png").exists()


def _full(voigt) -> np.ndarray:
    from ase.stress import voigt_6_to_full_3x3_stress

    return voigt_6_to_full_3x3_stress(np.asarray(voigt))


def test_predict_writes_the_same_predictions_without_labels(evaluated, labelled, checkpoint, folder, capsys):
    out = folder / "predicted.extxyz"
    assert main(["predict", "--ckpt", str(checkpoint), "--data", str(labelled), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    predicted = ase.io.read(out, ":")
    evaluated_frames = ase.io.read(evaluated / "predictions.extxyz", ":")
    assert len(predicted) == len(evaluated_frames)
    for frame, other in zip(predicted, evaluated_frames):
        np.testing.assert_allclose(frame.get_forces(), other.get_forces(), atol=1e-6)
        assert frame.get_potential_energy() == pytest.approx(other.get_potential_energy(), abs=1e-5)
        if frame.pbc.all():
            np.testing.assert_allclose(frame.get_stress(), other.get_stress(), atol=1e-6)
        assert not any(key.startswith("REF_") or key.endswith("_error") for key in [*frame.info, *frame.arrays])


def test_frames_are_read_one_batch_ahead_of_the_written_predictions(tmp_path, model, monkeypatch):
    import equimol.engines.evaluate as evaluate_module

    frames = ase.io.read(sample_path("ethanol_gfn2"), "0:20")
    ase.io.write(tmp_path / "md.xyz", frames)
    counts = {"read": 0, "written": 0}
    at_write: list[tuple[int, int]] = []
    iter_frames, write = evaluate_module.iter_frames, evaluate_module.write_prediction

    def counting_frames(*args, **kwargs):
        for atoms in iter_frames(*args, **kwargs):
            counts["read"] += 1
            yield atoms

    def counting_write(*args, **kwargs):
        at_write.append((counts["read"], counts["written"]))
        counts["written"] += 1
        write(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "iter_frames", counting_frames)
    monkeypatch.setattr(evaluate_module, "write_prediction", counting_write)
    result = evaluate_module.evaluate(model, tmp_path / "md.xyz", tmp_path / "out", batch_size=3,
                                      progress=False, plots=False)
    assert result["num_structures"] == 20 and counts == {"read": 20, "written": 20}
    assert at_write[0] == (3, 0)  # one batch read before anything is written
    assert all(read <= written + 3 for read, written in at_write)  # never more than a batch ahead
    assert len(ase.io.read(tmp_path / "out" / "predictions.extxyz", ":")) == 20


def test_a_config_without_cutoff_takes_the_models_and_its_test_split(tmp_path, labelled, model):
    from equimol.engines.evaluate import evaluate
    from equimol.train import AtomsDataModule

    data = {"path": str(labelled), "energy_key": "REF_energy", "forces_key": "REF_forces", "stress_key": None,
            "split": [6, 2, 2], "seed": 3, "cache_dir": str(tmp_path / "cache")}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data": {"class_path": "equimol.train.AtomsDataModule", "init_args": data}}))
    result = evaluate(model, config, tmp_path / "out", progress=False, plots=False)

    datamodule = AtomsDataModule(cutoff=CUTOFF, **data)
    datamodule.setup("test")
    test_frames = sorted(datamodule.split_indices["test"])
    assert result["num_structures"] == 2 and "test split" in result["data"]
    written = ase.io.read(tmp_path / "out" / "predictions.extxyz", ":")
    assert [frame.info["source_frame"] for frame in written] == test_frames
    assert set(result["metrics"]) >= {"energy_per_atom_mae", "forces_rmse"}

    config.write_text(yaml.safe_dump({"data": {"init_args": {**data, "cutoff": 4.0}}}))
    with pytest.raises(ValueError, match="cutoff mismatch"):
        evaluate(model, config, None, progress=False)


def test_label_keys_name_what_the_frames_have_and_none_leaves_one_out(tmp_path, labelled, model):
    from equimol.engines.evaluate import evaluate

    with pytest.raises(MissingKeyError, match=r"frame 0: required label 'energy' not found under key 'energy'.*"
                                              r"'REF_energy'"):
        evaluate(model, labelled, tmp_path / "out", progress=False)
    result = evaluate(model, labelled, None, energy_key=None, forces_key="REF_forces", stress_key=None,
                      progress=False)
    assert list(result["per_quantity"]) == ["forces"]
