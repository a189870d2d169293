"""The hyperparameter search of the invariance study: it keeps the candidate with the lowest
validation loss, records every candidate, and is checked when the config is read."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest

from equimol.studies import load_config, run_invariance_study
from equimol.studies._invariance_config import LearningCurveSettings, TrainingSettings
from equimol.studies._invariance_data import build_graphs, load_frames, split_graphs
from equimol.studies._invariance_search import candidate_entries, search_entry
from equimol.studies._invariance_training import train_model, validation_loss

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "study" / "toy2d_small.yaml"
SETTINGS = TrainingSettings(batch_size=16, budget="converged", patience=3, lr_patience=1, max_epochs=60,
                            val_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def small() -> tuple[list, dict]:
    """48 toy2d structures (38 for training) and the entries of the small config by name."""
    config = load_config(CONFIG)
    config.data.generator_args = {"n_samples": 48, "noise_std": 0.1, "seed": 3}
    train, _ = split_graphs(build_graphs(load_frames(config.data), config.data), config.data)
    return train, {entry.name: entry for entry in config.models}


def test_candidates_are_every_combination_with_the_values_set(small) -> None:
    _, entries = small
    entry = dataclasses.replace(entries["PairNN"], search={"lr": [1e-3, 1e-2], "hidden": [[8], [16, 16], [32]]})
    candidates = candidate_entries(entry)
    assert len(candidates) == 6
    assert [values for values, _ in candidates][1] == {"lr": 1e-3, "hidden": [16, 16]}
    for values, candidate in candidates:
        assert candidate.lr == values["lr"] and candidate.model["init_args"]["hidden"] == values["hidden"]
        assert candidate.model["init_args"]["cutoff"] == entry.model["init_args"]["cutoff"] and not candidate.search
    assert entry.model["init_args"]["hidden"] == [16, 16]  # the entry itself is untouched


@pytest.mark.parametrize(("name", "search"), [("Linear(1/r)", {"ridge": [10.0, 1e-8, 1e-3]}),
                                               ("PairNN", {"lr": [1e-4, 2e-2]})])
def test_search_keeps_the_candidate_with_the_lowest_validation_loss(small, name: str, search: dict) -> None:
    train, entries = small
    entry = dataclasses.replace(entries[name], search=search)
    trained_models = {}

    def fit(candidate, label):
        trained_models[label] = train_model(candidate, train, SETTINGS, planar=True)
        return trained_models[label]

    result = search_entry(entry, fit)
    losses = {row["settings"]: row["val_loss"] for row in result.rows}
    assert len(losses) == len(search[next(iter(search))])
    kept = min(losses, key=losses.get)
    assert [row["settings"] for row in result.rows if row["chosen"]] == [kept]
    assert result.trained is trained_models[kept]
    # the losses are those of the validation structures, and they tell the candidates apart
    assert validation_loss(result.trained.model, result.trained.validation, SETTINGS) == pytest.approx(losses[kept],
                                                                                                        rel=1e-9)
    assert max(losses.values()) > 1.5 * min(losses.values()), losses
    key = next(iter(search))
    value = result.entry.lr if key == "lr" else result.entry.model["init_args"][key]
    assert f"{key}={value}" == kept


def test_a_search_where_every_candidate_diverges_is_an_error(small) -> None:
    _, entries = small
    entry = dataclasses.replace(entries["PairNN"], search={"lr": [1.0, 2.0]})
    nan = type("Trained", (), {"best_val_loss": float("nan"), "epochs": 1, "stopped_by": "patience",
                               "cpu_seconds": 0.0})()
    with pytest.raises(ValueError, match=r"models\['PairNN'\].search: no candidate"):
        search_entry(entry, lambda candidate, label: nan)


def _linear_search_study(out: Path, search: bool):
    """The small config cut to its linear model, searched over ridge {1e-8, 100}, at ridge 100."""
    config = load_config(CONFIG)
    config.data.generator_args = {"n_samples": 60, "noise_std": 0.1, "seed": 3}
    config.training = dataclasses.replace(SETTINGS, search=search)
    linear = next(e for e in config.models if e.name == "Linear(1/r)")
    linear = dataclasses.replace(linear, model={**linear.model, "init_args": {**linear.model["init_args"],
                                                                             "ridge": 100.0}})
    config.models = [dataclasses.replace(linear, search={"ridge": [1e-8, 100.0]})]
    config.test_sets = ["original"]
    config.learning_curve = LearningCurveSettings(sizes=[20, 45], seeds=[0], models=["Linear(1/r)"],
                                                  test_sets=["original"])
    config.augmentation_cost.model = ""
    config.output_dir = str(out)
    return run_invariance_study(config, log=False)


def test_study_writes_the_search_and_uses_the_kept_candidate(small, tmp_path: Path) -> None:
    result = _linear_search_study(tmp_path, search=True)
    with open(tmp_path / "search.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["settings"] for row in rows] == ["ridge=1e-08", "ridge=100.0"]
    kept = [row for row in rows if row["chosen"] == "True"]
    assert len(kept) == 1 and float(kept[0]["val_loss"]) == min(float(row["val_loss"]) for row in rows)
    assert "Hyperparameter search on the validation split" in (tmp_path / "results.md").read_text()
    grid = next(row for row in result.rows if row["model"] == "Linear(1/r)")
    assert grid["val_loss"] == pytest.approx(float(kept[0]["val_loss"]), rel=1e-12)
    assert kept[0]["settings"] == "ridge=1e-08"
    # training.search: false trains the entry's own ridge (100), the candidate the search rejected
    quick = _linear_search_study(tmp_path / "quick", search=False)
    assert quick.search == [] and "Hyperparameter search" not in (tmp_path / "quick" / "results.md").read_text()
    rejected = next(float(row["val_loss"]) for row in rows if row["settings"] == "ridge=100.0")
    quick_grid = next(row for row in quick.rows if row["model"] == "Linear(1/r)")
    assert quick_grid["val_loss"] == pytest.approx(rejected, rel=1e-12)


@pytest.mark.parametrize(
    ("search", "message"),
    [
        ("{ridge: [1.0e-8, 1.0]}", "only budget 'converged'"),
        ("{ridgee: [1.0]}", r"search.ridgee"),
        ("{ridge: []}", "non-empty list"),
        ("{lr: [-1.0]}", "learning rates must be positive"),
    ],
)
def test_search_keys_are_checked(tmp_path: Path, search: str, message: str) -> None:
    text = CONFIG.read_text()
    anchor = "    fit: closed_form\n"
    assert anchor in text
    text = text.replace(anchor, anchor + f"    search: {search}\n", 1)
    if "only budget" not in message:
        text = text.replace("  seed: 0\nmodels", "  budget: converged\n  seed: 0\nmodels", 1)
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_config(bad)


def test_a_skipped_search_does_not_need_the_converged_budget(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    text = text.replace("    fit: closed_form\n", "    fit: closed_form\n    search: {ridge: [1.0e-8, 1.0]}\n", 1)
    text = text.replace("  seed: 0\nmodels", "  search: false\n  seed: 0\nmodels", 1)
    quick = tmp_path / "quick.yaml"
    quick.write_text(text)
    config = load_config(quick)
    assert config.training.budget != "converged" and not config.training.search
    typo = tmp_path / "typo.yaml"
    typo.write_text(text.replace("search: {ridge:", "search: {ridgee:"))
    with pytest.raises(ValueError, match=r"search.ridgee"):  # a skipped search is still checked
        load_config(typo)
