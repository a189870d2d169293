"""The invariance study on a small toy2d grid: built-in invariance is exact, augmentation helps.

One study (configs/study/toy2d_small.yaml, W&B off) is run once through the ``equimol`` command
and its results folder is read back by the tests below.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from equimol.cli import main as equimol_main
from equimol.studies import load_config
from equimol.studies._invariance_config import ModelEntry, TrainingSettings
from equimol.studies._invariance_data import build_graphs, fixed_permutation, load_frames, split_graphs
from equimol.studies._invariance_training import labels, predict, prepare_model, train_model, validation_loss

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "study" / "toy2d_small.yaml"
BUILT_IN = ("PairNN", "Equivariant l=1")
ROUND_OFF = 1e-10  # eV; float64 sums of energies of order 5 eV


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[tuple[str, str], dict[str, float]]]:
    out = tmp_path_factory.mktemp("invariance")
    code = equimol_main(["study", "invariance", "--config", str(CONFIG), "--out", str(out), "--wandb.enabled", "false"])
    assert code == 0
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    table = {
        (row["model"], row["test_set"]): {
            key: float(value) for key, value in row.items() if key in ("energy_mse", "invariance_error", "forces_mae")
        }
        for row in rows
    }
    return out, table


def _test_sets(table: dict) -> list[str]:
    return sorted({test_set for _, test_set in table})


@pytest.mark.parametrize("model", BUILT_IN)
def test_built_in_invariance_error_is_round_off(study, model: str) -> None:
    _, table = study
    for test_set in _test_sets(table):
        assert table[(model, test_set)]["invariance_error"] < ROUND_OFF, test_set


@pytest.mark.parametrize("model", BUILT_IN)
def test_built_in_models_have_the_same_error_on_every_test_set(study, model: str) -> None:
    _, table = study
    reference = table[(model, "original")]["energy_mse"]
    for test_set in _test_sets(table):
        assert table[(model, test_set)]["energy_mse"] == pytest.approx(reference, rel=1e-8, abs=1e-14), test_set


def test_positions_mlp_fails_on_rotated_structures(study) -> None:
    _, table = study
    original = table[("MLP(positions)", "original")]["energy_mse"]
    assert original < 1e-2  # it did learn the training distribution
    for test_set in ("rotation_90", "random_rotation"):
        assert table[("MLP(positions)", test_set)]["energy_mse"] > 100 * original, test_set
        assert table[("MLP(positions)", test_set)]["invariance_error"] > 0.1, test_set


def test_rotation_augmentation_lowers_the_rotated_error(study) -> None:
    _, table = study
    for test_set in ("rotation_90", "random_rotation"):
        plain = table[("MLP(positions)", test_set)]["energy_mse"]
        augmented = table[("MLP(positions) + online rot", test_set)]["energy_mse"]
        assert augmented < 0.1 * plain, test_set


def test_linear_model_on_inverse_distances_is_exact_for_coulomb_energies(study) -> None:
    _, table = study
    assert table[("Linear(1/r)", "original")]["energy_mse"] < 1e-12
    assert table[("Linear(1/r)", "original")]["forces_mae"] < 1e-6


def test_results_folder_holds_tables_and_figures(study) -> None:
    out, _ = study
    for name in ("results.csv", "results.md", "learning_curve.csv", "learning_curve_fit.csv", "augmentation_cost.csv",
                 "loss_history.csv", "config.yaml", "command.txt", "figures.md"):
        assert (out / name).is_file(), name
    with open(out / "learning_curve.csv") as handle:
        curve = list(csv.DictReader(handle))
    assert sorted((int(row["n_train"]), int(row["seed"])) for row in curve) == [(40, 0), (40, 1), (160, 0), (160, 1)]
    with open(out / "learning_curve_fit.csv") as handle:
        fit_rows = list(csv.DictReader(handle))
    fits = {row["test_set"]: row for row in fit_rows if row["metric"] == "energy_mse"}
    # the positions MLP learns the original structures, never the rotated ones: no slope there to speak of
    assert set(fits) == {"original", "random_rotation"} and abs(float(fits["random_rotation"]["slope"])) < 0.2
    # the target is its own force MAE with 160 structures: reached on the original structures by
    # 160 at the latest, never on rotated ones
    forces = {row["test_set"]: row for row in fit_rows if row["metric"] == "forces_mae"}
    assert 40 <= float(forces["original"]["n_to_target"]) <= 160
    assert float(forces["original"]["cpu_seconds_to_target"]) > 0
    assert float(forces["random_rotation"]["n_to_target"]) == float("inf")
    assert all(float(row["forces_mae_original"]) > 0 for row in curve)
    for name in ("positions", "energy_histogram", "loss_curves", "parity", "error_bars", "learning_curves",
                 "learning_curves_forces_mae", "augmentation_cost"):
        path = out / "figures" / f"{name}.png"
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", name
    markdown = (out / "results.md").read_text()
    assert "| MLP(positions) |" in markdown and "equimol study invariance" in markdown
    assert "Training structures needed to reach the target force MAE" in markdown
    assert "equimol study invariance" in (out / "figures.md").read_text()


def test_misspelt_config_key_is_an_error_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.read_text().replace("  epochs: 30", "  epochz: 30", 1))
    with pytest.raises(ValueError, match="epochz"):
        load_config(bad)
    assert equimol_main(["study", "invariance", "--config", str(bad)]) == 2
    assert "epochz" in capsys.readouterr().err
    bad.write_text(CONFIG.read_text().replace("n_atoms: 4", "n_atom: 4", 1))
    with pytest.raises(ValueError, match="n_atom"):
        load_config(bad)


def test_training_is_reproducible_with_a_seed() -> None:
    config = load_config(CONFIG)
    config.data.generator_args = {"n_samples": 40, "seed": 1}
    train, test = split_graphs(build_graphs(load_frames(config.data), config.data), config.data)
    entry = ModelEntry(name="mlp", model=config.models[0].model)
    settings = TrainingSettings(epochs=2, batch_size=8, seed=3)
    first = predict(train_model(entry, train, settings, planar=True).model, test)["energy"]
    second = predict(train_model(entry, train, settings, planar=True).model, test)["energy"]
    np.testing.assert_array_equal(first, second)


def test_fixed_permutation_is_the_classroom_one() -> None:
    assert fixed_permutation(4) == [3, 0, 1, 2]
    assert fixed_permutation(6) == [5, 0, 1, 2, 3, 4]
    assert torch.equal(torch.sort(torch.tensor(fixed_permutation(9))).values, torch.arange(9))


# --------------------------------------------------------------------------------------
# budgets


@pytest.fixture(scope="module")
def tiny_split() -> tuple[list, list, list[ModelEntry]]:
    """40 toy2d structures (32 for training) and the gradient-trained entries of the small config."""
    config = load_config(CONFIG)
    config.data.generator_args = {"n_samples": 40, "seed": 2}
    train, test = split_graphs(build_graphs(load_frames(config.data), config.data), config.data)
    return train, test, [entry for entry in config.models if entry.fit == "gradient"]


def test_converged_budget_stops_on_patience_and_restores_the_best_weights(tiny_split) -> None:
    train, _, entries = tiny_split
    settings = TrainingSettings(batch_size=24, lr=0.02, budget="converged", patience=3, lr_patience=1,
                                max_epochs=300, val_fraction=0.25, seed=0)
    # the positions MLP and the pair network; the pair network again with its own patience
    for entry in (entries[0], entries[2], dataclasses.replace(entries[2], patience=5)):
        trained = train_model(entry, train, settings, planar=True)
        history = trained.val_loss_history
        patience = entry.patience or settings.patience
        assert trained.stopped_by == "patience" and trained.epochs < settings.max_epochs, entry.name
        assert len(trained.validation) == 8 and len(history) == trained.epochs
        best = min(history)
        # the last `patience` epochs did not improve on the best, so restoring it changes the weights
        assert int(np.argmin(history)) == len(history) - 1 - patience, entry.name
        assert history[-1] > best and trained.best_val_loss == best
        assert validation_loss(trained.model, trained.validation, settings) == pytest.approx(best, rel=1e-9)


def test_equal_time_budget_gives_every_model_the_same_seconds(tiny_split) -> None:
    train, _, entries = tiny_split
    settings = TrainingSettings(batch_size=16, lr=0.005, budget="equal_time", seconds=2.0, seed=0)
    trained = {entry.name: train_model(entry, train, settings, planar=True) for entry in entries}
    seconds = {name: run.seconds for name, run in trained.items()}
    assert all(run.stopped_by == "time" for run in trained.values()), seconds
    assert max(seconds.values()) < 1.1 * min(seconds.values()), seconds
    assert all(settings.seconds <= s < 1.1 * settings.seconds for s in seconds.values()), seconds
    assert all(run.epochs >= 1 for run in trained.values()), {name: run.epochs for name, run in trained.items()}


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (("budget: steps", "budget: convergd"), "convergd"),
        (("  seed: 0\nmodels", "  patiance: 5\n  seed: 0\nmodels"), "patiance"),
        (("  seed: 0\nmodels", "  budget: converged\n  patience: 0\n  seed: 0\nmodels"), "training.patience"),
        (("  seed: 0\nmodels", "  budget: equal_time\n  seconds: 0\n  seed: 0\nmodels"), "training.seconds"),
        (("  seed: 0\nmodels", "  budget: converged\n  val_fraction: 1.0\n  seed: 0\nmodels"), "val_fraction"),
        (("  test_sets: [original, random_rotation]", "  test_sets: [original, random_rotation]\n  seedz: [1]"),
         "seedz"),
        (("    epochs: 10\n", "    epochs: 10\n    patience: 0\n"), r"models\['Equivariant l=1'\].patience"),
        (("  target_n_train: 160", "  target_n_train: 100"), "target_n_train"),
        (("  target_model: MLP(positions)", "  target_model: PairNN"), "target_model"),
    ],
)
def test_budget_keys_are_checked(tmp_path: Path, replace: tuple[str, str], message: str) -> None:
    text = CONFIG.read_text()
    if "budget: steps" not in text:
        text = text.replace("  seed: 0\nmodels", "  budget: steps\n  seed: 0\nmodels")
    assert replace[0] in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace(replace[0], replace[1], 1))
    with pytest.raises(ValueError, match=message):
        load_config(bad)


# --------------------------------------------------------------------------------------
# no model worse than the mean


def test_no_model_of_the_small_grid_ends_worse_than_the_mean(study) -> None:
    """Every model of the one-minute grid, at its budget, beats the mean of the test energies."""
    _, table = study
    config = load_config(CONFIG)
    _, test = split_graphs(build_graphs(load_frames(config.data), config.data), config.data)
    variance = float(np.var([float(graph.energy) for graph in test]))
    for entry in config.models:
        mse = table[(entry.name, "original")]["energy_mse"]
        assert mse < variance, f"{entry.name}: MSE {mse:.3g} eV², variance of the test energies {variance:.3g} eV²"


@pytest.mark.parametrize("path", sorted(CONFIG.parent.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_model_starts_at_the_mean_of_its_training_energies(path: Path) -> None:
    """Before training, every model of every shipped config predicts the training energies with
    a mean error of zero (the untrained equivariant network was 2.2 eV off on toy2d)."""
    config = load_config(path)
    data = config.data
    if data.generator:
        (size_key,) = [key for key in ("n_samples", "n_frames") if key in data.generator_args]
        data.generator_args = {**data.generator_args, size_key: 12}
        if "n_equilibration_steps" in data.generator_args:  # MD: a short equilibration will do here
            data.generator_args["n_equilibration_steps"] = 20
    else:
        data.index = ":12"
    graphs = build_graphs(load_frames(data), data)
    dtype = getattr(torch, data.dtype)
    round_off = 1e-12 * max(abs(float(graph.energy)) for graph in graphs) * 100
    for entry in config.models:
        if entry.fit != "gradient":  # a closed-form fit sets its own bias
            continue
        setup = prepare_model(entry, graphs, config.training, planar=data.planar, dtype=dtype)
        residual = predict(setup.model, setup.graphs)["energy"] - labels(setup.graphs)["energy"]
        assert abs(residual.mean()) < round_off, (entry.name, residual.mean())
        assert np.std(residual) > 0  # a real network, not a constant
