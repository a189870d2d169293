"""The invariance study: augmentation-based against built-in invariance, on the same data.

One data set is split once (80/20, seeded); every model of the grid is trained on the
training split (plain, or augmented with stacked or online random rotations and/or atom
permutations) and evaluated on the same family of transformed test sets made from the
held-out structures (see :func:`equimol.studies._invariance_data.make_test_sets`):
``original``, ``rotation_90`` (pi/2 about z), ``random_rotation``, ``permutation_fixed``
(``[N-1, 0, ..., N-2]``, the classroom ``[3, 0, 1, 2]`` for four atoms),
``random_permutation``, ``reflection`` and ``rotation_permutation``.

For every model and test set it reports the energy MSE and MAE (eV², eV), the force MSE and
MAE where the data have forces (eV²/Å², eV/Å), the invariance error
``mean_k |E(g x_k) - E(x_k)|`` (eV, predictions on the transformed against the original
structures), the number of parameters, the training time and the epochs. It adds learning
curves (test error against training-set size) and the cost of augmentation (the smallest
number ``k`` of stacked transformed copies with which a non-invariant model reaches a target
error on a transformed test set).

Run it from a config::

    equimol study invariance --config configs/study/ethanol.yaml [--out DIR]

or from Python with :func:`run_invariance_study`. The results folder holds ``results.csv``
(one row per model and test set), ``results.md`` (the tables), ``learning_curve.csv``,
``learning_curve_fit.csv`` (slopes and structures needed to reach a target), ``search.csv``
(the validation loss of every candidate of a hyperparameter search),
``augmentation_cost.csv``, ``loss_history.csv``, ``config.yaml``, ``figures/*.png`` and
``figures.md`` (each figure's caption with the command that reproduces it). Every trained
model of the grid is one W&B run (offline by default) in the group named after the study,
plus one ``summary`` run with the tables and figures.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import yaml
from jsonargparse import ArgumentParser, Namespace
from torch_geometric.data import Data

from equimol import _cli_errors as errors
from equimol import _keys as K
from equimol.studies import _invariance_figures as figures
from equimol.studies._invariance_config import (
    TEST_SETS,
    Augmentation,
    InvarianceStudyConfig,
    ModelEntry,
    _to_config,
    build_model,
    config_parser,
    config_to_dict,
    load_config,
)
from equimol.studies._invariance_data import build_graphs, load_frames, make_test_sets, split_graphs
from equimol.studies._invariance_search import search_entry
from equimol.studies._invariance_training import TrainedModel, count_parameters, labels, predict, train_model
from equimol.studies._learning_curves import (
    cost_at_size,
    fit_power_law,
    learning_curve_arrays,
    learning_curve_fit_figure,
    log_geometric_mean,
    samples_to_target,
)

__all__ = [
    "InvarianceStudyConfig",
    "InvarianceStudyResult",
    "load_config",
    "build_model",
    "run_invariance_study",
    "markdown_tables",
    "learning_curve_fits",
    "learning_curve_target",
    "write_results",
    "main",
    "build_parser",
    "study_main",
    "STUDIES",
    "TEST_SETS",
]

logger = logging.getLogger(__name__)

_COLUMNS = (
    "model", "augmentation", "fit", "n_params", "n_train", "train_seconds", "train_cpu_seconds", "epochs", "stopped_by",
    "val_loss", "test_set", "energy_mse", "energy_mae", "forces_mse", "forces_mae", "invariance_error",
)


@dataclass
class InvarianceStudyResult:
    """Everything the study measured.

    Attributes:
        config: the config it ran.
        rows: one dict per (model, test set) with the keys of ``results.csv``: ``model``,
            ``augmentation``, ``fit``, ``n_params``, ``n_train`` (structures in the possibly
            stacked training set), ``train_seconds`` (wall), ``train_cpu_seconds``, ``epochs``,
            ``stopped_by`` (see :class:`~equimol.studies._invariance_training.TrainedModel`),
            ``val_loss`` (the lowest validation loss of a ``converged`` run, whose weights were
            kept: what a hyperparameter search may compare; NaN otherwise), ``test_set``,
            ``energy_mse`` eV², ``energy_mae`` eV, ``forces_mse`` (eV/Å)², ``forces_mae`` eV/Å
            (NaN without force labels), ``invariance_error`` eV.
        learning_curve: one dict per (model, size, seed): ``model``, ``n_train``, ``seed``,
            ``train_seconds``, ``train_cpu_seconds``, ``epochs``, ``stopped_by`` and per test set
            ``mse_{set}`` (energy MSE, eV²), ``energy_mae_{set}`` (eV) and ``forces_mae_{set}``
            (eV/Å); :func:`learning_curve_fits` fits them.
        augmentation_cost: ``model``, ``test_set``, ``target_mse``, ``target``, ``copies``,
            ``mse`` (one per copies entry) and ``copies_needed`` (None if never reached); or
            None when not configured.
        search: one dict per candidate of the model entries with a ``search``: ``model``,
            ``settings``, ``val_loss``, ``epochs``, ``stopped_by``, ``train_cpu_seconds``,
            ``chosen`` (see :func:`~equimol.studies._invariance_search.search_entry`).
        loss_history: model -> training loss per epoch.
        predictions: model -> test set -> predicted energies ``[M]`` eV.
        true_energy: energy labels of the test structures ``[M]`` eV.
        output_dir: where the results were written (None before :func:`write_results`).
        seconds: wall time of the whole study, s.
        cpu_seconds: CPU time of the whole study (this process), s.
    """

    config: InvarianceStudyConfig
    rows: list[dict[str, Any]] = field(default_factory=list)
    learning_curve: list[dict[str, Any]] = field(default_factory=list)
    augmentation_cost: dict[str, Any] | None = None
    search: list[dict[str, Any]] = field(default_factory=list)
    loss_history: dict[str, list[float]] = field(default_factory=dict)
    predictions: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    true_energy: np.ndarray | None = None
    output_dir: Path | None = None
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    def value(self, model: str, test_set: str, metric: str = "energy_mse") -> float:
        """One number of the results, e.g. ``value("MLP(positions)", "rotation_90")``."""
        for row in self.rows:
            if row["model"] == model and row["test_set"] == test_set:
                return float(row[metric])
        raise KeyError(f"no result for model {model!r} on test set {test_set!r}")


# --------------------------------------------------------------------------------------
# metrics


def _errors(prediction: dict[str, np.ndarray], truth: dict[str, np.ndarray]) -> dict[str, float]:
    diff = prediction[K.ENERGY] - truth[K.ENERGY]
    out = {"energy_mse": float(np.mean(diff**2)), "energy_mae": float(np.mean(np.abs(diff)))}
    if K.FORCES in truth and K.FORCES in prediction:
        fdiff = prediction[K.FORCES] - truth[K.FORCES]
        out.update(forces_mse=float(np.mean(fdiff**2)), forces_mae=float(np.mean(np.abs(fdiff))))
    else:
        out.update(forces_mse=math.nan, forces_mae=math.nan)
    return out


def _augmentation_label(augmentation: Augmentation, fit: str) -> str:
    if augmentation.mode == "none":
        return "none"
    short = {"rotation": "rot", "permutation": "perm"}
    what = "+".join(short[name] for name in augmentation.transforms)
    return f"stacked {what} x{augmentation.copies}" if augmentation.mode == "stacked" else f"online {what}"


def _evaluate(
    trained: TrainedModel, entry: ModelEntry, test_sets: dict[str, list], truths: dict[str, dict[str, np.ndarray]]
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    predictions = {name: predict(trained.model, graphs) for name, graphs in test_sets.items()}
    reference = predictions["original"][K.ENERGY]
    rows = []
    for name in test_sets:
        row = {
            "model": entry.name,
            "augmentation": _augmentation_label(entry.augmentation, entry.fit),
            "fit": entry.fit,
            "n_params": count_parameters(trained.model),
            "n_train": trained.n_train,
            "train_seconds": trained.seconds,
            "train_cpu_seconds": trained.cpu_seconds,
            "epochs": trained.epochs,
            "stopped_by": trained.stopped_by,
            "val_loss": trained.best_val_loss,
            "test_set": name,
            **_errors(predictions[name], truths[name]),
            "invariance_error": float(np.mean(np.abs(predictions[name][K.ENERGY] - reference))),
        }
        rows.append(row)
    return rows, {name: p[K.ENERGY] for name, p in predictions.items()}


# --------------------------------------------------------------------------------------
# W&B


def _wandb_logger(
    config: InvarianceStudyConfig, run_name: str, out: Path, entry: ModelEntry | None = None
) -> Any | None:
    if not config.wandb.enabled:
        return None
    from pytorch_lightning.loggers import WandbLogger

    os.environ.setdefault("WANDB_SILENT", "true")
    save_dir = out / "wandb"
    save_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project=config.wandb.project,
        name=run_name,
        group=config.name,
        offline=config.wandb.offline,
        save_dir=str(save_dir),
        config={
            "study": config.name,
            "data": dataclasses.asdict(config.data),
            "training": dataclasses.asdict(config.training),
            **({"model": entry.model, "augmentation": dataclasses.asdict(entry.augmentation), "fit": entry.fit}
               if entry is not None else {}),
        },
        reinit="finish_previous",
    )


def _finish_wandb(logger: Any | None, summary: dict[str, float]) -> None:
    if logger is None:
        return
    logger.log_metrics(summary)
    logger.experiment.finish()


# --------------------------------------------------------------------------------------
# the study


def run_invariance_study(
    config: InvarianceStudyConfig, *, log: bool = True, write: bool = True, command: str | None = None
) -> InvarianceStudyResult:
    """Train and evaluate the grid, the learning curves and the augmentation cost.

    Args:
        config: the study config (:func:`load_config`).
        log: log progress lines (``logging``, level INFO, logger ``equimol.studies.invariance``).
        write: write the results folder (:func:`write_results`) at ``config.output_dir``.
        command: the command line that reproduces the study (written beside the results;
            default ``equimol study invariance --config <output_dir>/config.yaml``).

    Returns:
        The results (also written to ``config.output_dir`` when ``write``).
    """
    start = (time.perf_counter(), time.process_time())
    out = Path(config.output_dir)
    if write:
        out.mkdir(parents=True, exist_ok=True)
    say = (lambda text: logger.info("[%s] %s", config.name, text)) if log else (lambda text: None)
    dtype = getattr(torch, config.data.dtype)
    with _quiet_lightning():
        return _run(config, out, dtype, say, write, command, start)


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-run banners and known-harmless warnings for the many short fits."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        for pattern in (".*val_dataloader.*", ".*LeafSpec.*", ".*does not have many workers.*",
                        ".*litlogger.*", ".*GPU available.*"):
            warnings.filterwarnings("ignore", message=pattern)
        try:
            yield
        finally:
            for each, level in zip(loggers, levels):
                each.setLevel(level)


def _run(
    config: InvarianceStudyConfig,
    out: Path,
    dtype: torch.dtype,
    say: Callable[[str], None],
    write: bool,
    command: str | None,
    start: tuple[float, float],
) -> InvarianceStudyResult:
    frames = load_frames(config.data)
    graphs = build_graphs(frames, config.data)
    train, test = split_graphs(graphs, config.data)
    names = ["original", *[name for name in config.test_sets if name != "original"]]
    test_sets = make_test_sets(test, names, config.data.planar, config.training.seed)
    truths = {name: labels(graphs_) for name, graphs_ in test_sets.items()}
    say(f"{len(train)} training and {len(test)} test structures; test sets {names}")
    result = InvarianceStudyResult(config=config, true_energy=truths["original"][K.ENERGY])
    by_name = {entry.name: entry for entry in config.models}

    for entry in config.models:
        trained, logger = _train_grid_entry(config, entry, train, out, dtype, write, result, by_name, say)
        rows, predictions = _evaluate(trained, entry, test_sets, truths)
        result.rows.extend(rows)
        result.predictions[entry.name] = predictions
        result.loss_history[entry.name] = trained.loss_history
        _finish_wandb(logger, {f"test/{row['test_set']}/{key}": row[key] for row in rows
                               for key in ("energy_mse", "energy_mae", "invariance_error")})
        say(f"{entry.name}: {trained.seconds:.1f} s, {trained.epochs} epochs (stopped by {trained.stopped_by}), MSE "
            + ", ".join(f"{row['test_set']} {row['energy_mse']:.2e}" for row in rows))

    result.learning_curve = _learning_curves(config, by_name, train, test_sets, truths, result, dtype, say)
    result.augmentation_cost = _augmentation_cost(config, by_name, train, test_sets, truths, result, dtype, say)
    result.seconds = time.perf_counter() - start[0]
    result.cpu_seconds = time.process_time() - start[1]
    say(f"done in {result.seconds:.0f} s ({result.cpu_seconds:.0f} s CPU)")
    if write:
        write_results(result, out, command=command)
    return result


def _train_grid_entry(
    config: InvarianceStudyConfig,
    entry: ModelEntry,
    train: list[Data],
    out: Path,
    dtype: torch.dtype,
    write: bool,
    result: InvarianceStudyResult,
    by_name: dict[str, ModelEntry],
    say: Callable[[str], None],
) -> tuple[TrainedModel, Any | None]:
    """Train the grid row of ``entry``: one run, or with a search every candidate (each its own
    W&B run, closed with its validation loss) and the one kept; ``training.search: false`` skips
    the search and trains the entry's own values. The kept candidate replaces
    the entry in ``by_name`` (for the learning curves and the augmentation cost) and the
    search's rows are added to ``result.search``. Returns the trained row and the W&B logger
    that receives its test errors (None without W&B)."""

    def fit(candidate: ModelEntry, label: str) -> TrainedModel:
        logger = _wandb_logger(config, f"{entry.name} [{label}]", out, candidate) if write and label else None
        trained = train_model(candidate, train, config.training, planar=config.data.planar, dtype=dtype,
                              loggers=[logger] if logger is not None else [])
        _finish_wandb(logger, {"val/best_loss": trained.best_val_loss})
        return trained

    if not entry.search or not config.training.search:
        logger = _wandb_logger(config, entry.name, out, entry) if write else None
        trained = train_model(entry, train, config.training, planar=config.data.planar, dtype=dtype,
                              loggers=[logger] if logger is not None else [])
        return trained, logger
    searched = search_entry(entry, fit, say)
    by_name[entry.name] = searched.entry
    result.search.extend(searched.rows)
    chosen = next(row["settings"] for row in searched.rows if row["chosen"])
    say(f"search {entry.name}: kept [{chosen}]")
    logger = _wandb_logger(config, entry.name, out, searched.entry) if write else None
    return searched.trained, logger


def _learning_curves(
    config: InvarianceStudyConfig,
    by_name: dict[str, ModelEntry],
    train: list[Data],
    test_sets: dict[str, list[Data]],
    truths: dict[str, dict[str, np.ndarray]],
    result: InvarianceStudyResult,
    dtype: torch.dtype,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Test errors of ``learning_curve.models`` trained on nested subsets of ``train``, per seed:
    one row per (model, size, seed) with the training cost and, per test set, the energy MSE
    (``mse_{set}``, eV²), energy MAE (``energy_mae_{set}``, eV) and force MAE
    (``forces_mae_{set}``, eV/Å; NaN without force labels)."""
    settings = config.learning_curve
    if not settings.models:
        return []
    sizes = sorted({min(int(n), len(train)) for n in settings.sizes if n > 0})
    rows = []
    for name in settings.models:
        entry = by_name[name]
        for seed in settings.seeds:
            order = np.random.default_rng(seed + 7).permutation(len(train))
            training = dataclasses.replace(config.training, seed=int(seed))
            for n in sizes:
                row: dict[str, Any] = {"model": name, "n_train": n, "seed": int(seed)}
                if n == len(train) and seed == config.training.seed:  # the grid run is this point
                    grid = {r["test_set"]: r for r in result.rows if r["model"] == name}
                    cost = next(iter(grid.values()))
                    errors = {test_set: grid[test_set] for test_set in settings.test_sets}
                else:
                    subset = [train[k] for k in order[:n]]
                    trained = train_model(entry, subset, training, planar=config.data.planar, dtype=dtype,
                                          reference_size=len(train))
                    cost = {"train_seconds": trained.seconds, "train_cpu_seconds": trained.cpu_seconds,
                            "epochs": trained.epochs, "stopped_by": trained.stopped_by}
                    errors = {test_set: _errors(predict(trained.model, test_sets[test_set]), truths[test_set])
                              for test_set in settings.test_sets}
                row.update({key: cost[key] for key in ("train_seconds", "train_cpu_seconds", "epochs", "stopped_by")})
                for test_set, error in errors.items():
                    row[f"mse_{test_set}"] = error["energy_mse"]
                    row[f"energy_mae_{test_set}"] = error["energy_mae"]
                    row[f"forces_mae_{test_set}"] = error["forces_mae"]
                rows.append(row)
                say(f"learning curve {name}, n={n}, seed {seed}: {row['train_seconds']:.0f} s, "
                    f"{row['epochs']} epochs ({row['stopped_by']}); "
                    + ", ".join(f"{t} E MSE {row[f'mse_{t}']:.2e} F MAE {row[f'forces_mae_{t}']:.2e}"
                                for t in settings.test_sets))
    return rows


#: The learning-curve errors that are fitted: metric -> (column prefix, label with unit).
_CURVE_METRICS = {"energy_mse": ("mse", "energy MSE (eV²)"), "forces_mae": ("forces_mae", "force MAE (eV/Å)")}


def _curve_column(metric: str, test_set: str) -> str:
    return f"{_CURVE_METRICS[metric][0]}_{test_set}"


def learning_curve_target(result: InvarianceStudyResult) -> tuple[str, float] | None:
    """The learning curves' target as (metric, value): ``target_mse`` as an energy MSE, or the
    error of ``target_model`` at ``target_n_train`` on the original test set (geometric mean
    over seeds); None when no target is configured or it cannot be measured."""
    settings = result.config.learning_curve
    if settings.target_mse is not None:
        return "energy_mse", float(settings.target_mse)
    if settings.target_model is None or "original" not in settings.test_sets:
        return None
    sizes, errors = learning_curve_arrays(result.learning_curve, settings.target_model,
                                          _curve_column(settings.target_metric, "original"))
    wanted = min(int(settings.target_n_train), int(sizes.max()))
    if wanted not in sizes:
        return None
    log_mean = float(log_geometric_mean(errors[list(sizes).index(wanted)][None, :])[0])
    return (settings.target_metric, 10.0**log_mean) if math.isfinite(log_mean) else None


def learning_curve_fits(result: InvarianceStudyResult) -> list[dict[str, Any]]:
    """Per model, test set and metric (energy MSE, and force MAE where there are forces) of the
    learning curves: the power-law slope against the training-set size (least squares in
    log-log over sizes and seeds), its spread over seeds and standard error; for the target's
    metric also the structures needed to reach the target (``inf``: not within the sizes) and
    the training CPU seconds of a run of that size (interpolated in log-log between the sizes
    around it; NaN without a target)."""
    settings = result.config.learning_curve
    target = learning_curve_target(result)
    fits = []
    for model in dict.fromkeys(row["model"] for row in result.learning_curve):
        _, cpu = learning_curve_arrays(result.learning_curve, model, "train_cpu_seconds")
        for metric in _CURVE_METRICS:
            for test_set in settings.test_sets:
                sizes, errors = learning_curve_arrays(result.learning_curve, model, _curve_column(metric, test_set))
                if not np.isfinite(errors).any():
                    continue
                try:
                    fit = fit_power_law(sizes, errors)
                    slope, spread, stderr = fit.slope, fit.slope_std, fit.slope_stderr
                except ValueError:  # a single size
                    slope = spread = stderr = math.nan
                needed = seconds = value = math.nan
                if target is not None and target[0] == metric:
                    value = target[1]
                    needed = samples_to_target(sizes, errors, value)
                    seconds = cost_at_size(sizes, cpu, needed)
                fits.append({"model": model, "metric": metric, "test_set": test_set, "slope": slope,
                             "slope_std": spread, "slope_stderr": stderr, "target": value,
                             "n_to_target": needed, "cpu_seconds_to_target": seconds})
    return fits


def _augmentation_cost(
    config: InvarianceStudyConfig,
    by_name: dict[str, ModelEntry],
    train: list[Data],
    test_sets: dict[str, list[Data]],
    truths: dict[str, dict[str, np.ndarray]],
    result: InvarianceStudyResult,
    dtype: torch.dtype,
    say: Callable[[str], None],
) -> dict[str, Any] | None:
    """Error of ``augmentation_cost.model`` with k stacked copies, and the smallest k reaching the target."""
    settings = config.augmentation_cost
    if not settings.model:
        return None
    entry = by_name[settings.model]
    if settings.target_mse is not None:
        target, source = float(settings.target_mse), "target_mse"
    else:
        target = settings.target_factor * result.value(settings.target_model, settings.test_set)
        source = f"{settings.target_factor:g} x MSE of {settings.target_model}"
    mses, seconds = [], []
    copies = sorted({int(k) for k in settings.copies})
    training = dataclasses.replace(config.training, budget=settings.budget)
    for k in copies:
        if k == 0 and entry.augmentation.mode == "none" and settings.budget == config.training.budget:
            # the grid run is this point (under another budget it is not: train it again)
            mses.append(result.value(entry.name, settings.test_set))
            seconds.append(result.value(entry.name, settings.test_set, "train_cpu_seconds"))
            continue
        augmentation = Augmentation(mode="stacked" if k > 0 else "none", transforms=list(settings.transforms), copies=k)
        trained = train_model(entry, train, training, planar=config.data.planar, dtype=dtype,
                              augmentation=augmentation)
        energy = predict(trained.model, test_sets[settings.test_set])[K.ENERGY]
        mses.append(float(np.mean((energy - truths[settings.test_set][K.ENERGY]) ** 2)))
        seconds.append(trained.cpu_seconds)
        say(f"augmentation cost {settings.model}, k={k}: MSE on {settings.test_set} {mses[-1]:.2e} "
            f"(target {target:.2e}), {trained.cpu_seconds:.1f} s CPU")
    reached = [k for k, mse in zip(copies, mses) if mse <= target]
    return {
        "model": settings.model,
        "test_set": settings.test_set,
        "transforms": list(settings.transforms),
        "target_mse": target,
        "target": source,
        "copies": copies,
        "mse": mses,
        "train_cpu_seconds": seconds,
        "budget": settings.budget,
        "copies_needed": reached[0] if reached else None,
    }


# --------------------------------------------------------------------------------------
# output


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.2e}"
    return str(value)


def _table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in body]
    return "\n".join(lines)


def markdown_tables(result: InvarianceStudyResult) -> str:
    """The results as Markdown: energy MSE per test set, invariance errors, force errors,
    learning curves and the augmentation cost."""
    config = result.config
    models = list(dict.fromkeys(row["model"] for row in result.rows))
    sets = list(dict.fromkeys(row["test_set"] for row in result.rows))
    first = {model: next(row for row in result.rows if row["model"] == model) for model in models}
    variance = float(np.var(result.true_energy))
    parts = [f"Energy MSE (eV²) on each test set ({len(result.true_energy)} held-out structures, "
             f"{config.name}; the variance of their energies, the MSE of always predicting the mean, "
             f"is {variance:.2e} eV²):", ""]
    converged = config.training.budget == "converged"
    header = ["model", "augmentation", "params", "train CPU s", "epochs", *(["stopped by"] if converged else []), *sets]
    body = [[m, first[m]["augmentation"], str(first[m]["n_params"]), f"{first[m]['train_cpu_seconds']:.1f}",
             str(first[m]["epochs"]), *([first[m]["stopped_by"]] if converged else []),
             *[result.value(m, s) for s in sets]] for m in models]
    parts += [_table(header, body), ""]
    others = [s for s in sets if s != "original"]
    parts += ["Invariance error mean |E(gx) − E(x)| (eV) of each model's own predictions:", ""]
    parts += [_table(["model", *others], [[m, *[result.value(m, s, "invariance_error") for s in others]]
                                           for m in models]), ""]
    if not math.isnan(result.value(models[0], "original", "forces_mae")):
        parts += ["Energy MAE (eV) and force MAE (eV/Å) on the original and randomly rotated test sets:", ""]
        cols = [s for s in ("original", "random_rotation") if s in sets]
        header = ["model", *[f"E MAE {s}" for s in cols], *[f"F MAE {s}" for s in cols]]
        body = [[m, *[result.value(m, s, "energy_mae") for s in cols],
                 *[result.value(m, s, "forces_mae") for s in cols]]
                for m in models]
        parts += [_table(header, body), ""]
    if result.search:
        parts += _search_table(result)
    if result.learning_curve:
        parts += _learning_curve_tables(result)
    cost = result.augmentation_cost
    if cost:
        parts += [f"Cost of augmentation: {cost['model']} trained with k stacked copies "
                  f"({'+'.join(cost['transforms'])}), "
                  + ("the same epochs for every k (compute grows with k + 1)" if cost["budget"] == "epochs"
                     else "the same optimizer steps for every k")
                  + f"; energy MSE (eV²) on {cost['test_set']}; "
                  f"target {cost['target_mse']:.2e} ({cost['target']}):", ""]
        parts += [_table(["k", *[str(k) for k in cost["copies"]]],
                         [["MSE", *cost["mse"]], ["train CPU s", *[f"{s:.1f}" for s in cost["train_cpu_seconds"]]]]),
                  ""]
        needed = cost["copies_needed"]
        reached = str(needed) if needed is not None else f"not reached with up to {max(cost['copies'])}"
        parts += [f"Copies needed to reach the target: {reached}.", ""]
    return "\n".join(parts)


def _search_table(result: InvarianceStudyResult) -> list[str]:
    """Markdown of the hyperparameter search: every candidate's validation loss, the kept one marked."""
    training = result.config.training
    parts = [f"Hyperparameter search on the validation split ({training.val_fraction:.0%} of the training split; "
             f"the loss is {training.energy_weight:g} x energy-per-atom MSE + {training.forces_weight:g} x force MSE; "
             "the test sets are not used); the kept candidate is the row of the tables above:", ""]
    body = [[row["model"], row["settings"], row["val_loss"], str(row["epochs"]), row["stopped_by"],
             f"{row['train_cpu_seconds']:.1f}", "kept" if row["chosen"] else ""] for row in result.search]
    parts += [_table(["model", "candidate", "validation loss", "epochs", "stopped by", "train CPU s", ""], body), ""]
    return parts


def _learning_curve_tables(result: InvarianceStudyResult) -> list[str]:
    """Markdown of the learning curves: the errors per size, the power-law fits and, with a
    target, the structures and training CPU seconds each model needs to reach it."""
    config = result.config
    curve = result.learning_curve
    sizes = sorted({row["n_train"] for row in curve})
    seeds = sorted({row["seed"] for row in curve})
    models = list(dict.fromkeys(row["model"] for row in curve))
    over = f" (geometric mean over seeds {seeds})" if len(seeds) > 1 else ""
    parts: list[str] = []
    for metric, (_, label) in _CURVE_METRICS.items():
        body = []
        for model in models:
            for test_set in config.learning_curve.test_sets:
                n, errors = learning_curve_arrays(curve, model, _curve_column(metric, test_set))
                if not np.isfinite(errors).any():
                    continue
                means = {int(k): float(10.0**log_mean) for k, log_mean in zip(n, log_geometric_mean(errors))}
                body.append([model, test_set, *[means.get(k, math.nan) for k in sizes]])
        if body:
            parts += [f"Learning curves: test {label} against the number of training structures{over}:", ""]
            parts += [_table(["model", "test set", *[str(k) for k in sizes]], body), ""]
    body = []
    for model in models:
        n, cpu = learning_curve_arrays(curve, model, "train_cpu_seconds")
        _, epochs = learning_curve_arrays(curve, model, "epochs")
        body.append([model, *[f"{np.nanmean(c):.0f} ({np.nanmean(e):.0f})" for c, e in zip(cpu, epochs)]])
    parts += [f"Training CPU seconds (epochs) per run{over.replace('geometric ', '')}:", ""]
    parts += [_table(["model", *[str(k) for k in sizes]], body), ""]
    fits = learning_curve_fits(result)
    parts += ["Power-law fits error ~ n^slope (least squares in log-log over sizes and seeds; ± the spread of "
              "the slopes of the seeds):", ""]
    parts += [_table(["model", "error", "test set", "slope", "± seeds"],
                     [[f["model"], _CURVE_METRICS[f["metric"]][1], f["test_set"], f"{f['slope']:.2f}",
                       f"{f['slope_std']:.2f}"] for f in fits]), ""]
    target = learning_curve_target(result)
    if target is not None:
        metric, value = target
        settings = config.learning_curve
        source = (f"{settings.target_model} with {settings.target_n_train} structures"
                  if settings.target_model else "learning_curve.target_mse")
        unit = _CURVE_METRICS[metric][1]
        parts += [f"Training structures needed to reach the target {unit} of {value:.3g} ({source}), and "
                  "the training CPU seconds of a run of that size (interpolated in log-log; not reached "
                  f"within {max(sizes)} structures: –):", ""]
        body = [[f["model"], f["test_set"],
                 "not reached" if math.isinf(f["n_to_target"]) else f"{f['n_to_target']:.0f}",
                 "–" if not math.isfinite(f["cpu_seconds_to_target"]) else f"{f['cpu_seconds_to_target']:.0f}"]
                for f in fits if f["metric"] == metric]
        parts += [_table(["model", "test set", "structures", "train CPU s"], body), ""]
    return parts


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    if not rows:
        return
    columns = list(columns or rows[0].keys())
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_results(result: InvarianceStudyResult, out: str | Path, command: str | None = None) -> Path:
    """Write the CSVs, the Markdown tables, the config, the figures and their captions.

    Args:
        result: what :func:`run_invariance_study` returned.
        out: the results folder (created).
        command: the command that reproduces the results (recorded in ``command.txt``,
            ``results.md`` and ``figures.md``).

    Returns:
        The folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = result.config
    (out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    command = command or f"equimol study invariance --config {out / 'config.yaml'}"
    (out / "command.txt").write_text(command + "\n")
    _write_csv(out / "results.csv", result.rows, _COLUMNS)
    _write_csv(out / "search.csv", result.search)
    _write_csv(out / "learning_curve.csv", result.learning_curve)
    if result.learning_curve:
        _write_csv(out / "learning_curve_fit.csv", learning_curve_fits(result))
    if result.augmentation_cost:
        cost = result.augmentation_cost
        _write_csv(out / "augmentation_cost.csv", [
            {"copies": k, "mse": mse, "train_cpu_seconds": seconds, "test_set": cost["test_set"],
             "target_mse": cost["target_mse"], "budget": cost["budget"]}
            for k, mse, seconds in zip(cost["copies"], cost["mse"], cost["train_cpu_seconds"])
        ])
    history_rows = [{"model": m, "epoch": e + 1, "train_loss": v}
                    for m, h in result.loss_history.items() for e, v in enumerate(h)]
    _write_csv(out / "loss_history.csv", history_rows)
    tables = markdown_tables(result)
    (out / "results.md").write_text(
        f"# Invariance study: {config.name}\n\nReproduce with:\n\n```\n{command}\n```\n\n{tables}\n"
        f"Whole study: {result.seconds:.0f} s wall time, {result.cpu_seconds:.0f} s CPU time.\n"
    )
    captions = _write_figures(result, out / "figures") if config.figures else {}
    lines = [f"# Figures of {config.name}", "", f"Every figure is made by `{command}`.", ""]
    lines += [f"- `figures/{name}`: {caption}" for name, caption in captions.items()]
    (out / "figures.md").write_text("\n".join(lines) + "\n")
    _log_summary(result, out, captions)
    result.output_dir = out
    return out


def _write_figures(result: InvarianceStudyResult, folder: Path) -> dict[str, str]:
    config = result.config
    frames = load_frames(config.data)
    graphs = build_graphs(frames, config.data)
    train, test = split_graphs(graphs, config.data)
    shown = [name for name in ("original", "rotation_90", "permutation_fixed") if name in
             ["original", *config.test_sets]]
    sets = make_test_sets(test, shown, config.data.planar, config.training.seed)
    captions: dict[str, str] = {}
    figures.save(figures.positions_figure({name: sets[name] for name in shown}), folder / "positions.png")
    captions["positions.png"] = (f"x-y positions of the test structures, {', '.join(shown)} (colour: atom index).")
    energies = {"train": labels(train)[K.ENERGY], "test": labels(test)[K.ENERGY]}
    figures.save(figures.energy_histogram_figure(energies), folder / "energy_histogram.png")
    captions["energy_histogram.png"] = "Energy labels of the training and test splits (eV)."
    histories = {name: h for name, h in result.loss_history.items() if h}
    if histories:
        figures.save(figures.loss_curves_figure(histories), folder / "loss_curves.png")
        captions["loss_curves.png"] = "Training loss per epoch of every gradient-trained model (log scale)."
    evaluated = result.predictions[next(iter(result.predictions))]
    parity_sets = [s for s in ("original", "random_rotation", "permutation_fixed") if s in evaluated]
    figures.save(figures.parity_figure(result.true_energy, result.predictions, parity_sets), folder / "parity.png")
    captions["parity.png"] = f"Predicted against true test energies (eV) on {', '.join(parity_sets)}."
    sets_all = list(dict.fromkeys(row["test_set"] for row in result.rows))
    mse = {m: {s: result.value(m, s) for s in sets_all} for m in result.predictions}
    figures.save(figures.error_bars_figure(mse, sets_all), folder / "error_bars.png")
    captions["error_bars.png"] = "Test energy MSE (eV², log scale) per model and test set."
    if result.learning_curve:
        target = learning_curve_target(result)
        for metric, (_, label) in _CURVE_METRICS.items():
            curves = {f"{model} ({test_set})": learning_curve_arrays(result.learning_curve, model,
                                                                     _curve_column(metric, test_set))
                      for model in dict.fromkeys(row["model"] for row in result.learning_curve)
                      for test_set in config.learning_curve.test_sets}
            curves = {key: value for key, value in curves.items() if np.isfinite(value[1]).any()}
            if not curves:
                continue
            name = "learning_curves.png" if metric == "energy_mse" else f"learning_curves_{metric}.png"
            figures.save(learning_curve_fit_figure(curves, ylabel=f"test {label}",
                                                   target=target[1] if target and target[0] == metric else None),
                         folder / name)
            captions[name] = (
                f"Test {label} against training-set size (log-log; points: geometric mean over seeds, bars: their "
                "spread; lines: power-law fits, slopes in the legend).")
    cost = result.augmentation_cost
    if cost:
        figures.save(figures.augmentation_cost_figure(cost["copies"], cost["mse"], cost["target_mse"], cost["test_set"],
                                                      cost["model"]), folder / "augmentation_cost.png")
        captions["augmentation_cost.png"] = (f"Energy MSE on {cost['test_set']} of {cost['model']} against the number "
                                             "of stacked transformed copies; dotted: the target.")
    return captions


def _log_summary(result: InvarianceStudyResult, out: Path, captions: dict[str, str]) -> None:
    config = result.config
    logger = _wandb_logger(config, "summary", out)
    if logger is None:
        return
    columns = list(_COLUMNS)
    logger.log_table("results", columns=columns, data=[[row[c] for c in columns] for row in result.rows])
    if result.learning_curve:
        columns = list(result.learning_curve[0])
        logger.log_table("learning_curve", columns=columns,
                         data=[[row[c] for c in columns] for row in result.learning_curve])
    for name, caption in captions.items():
        logger.log_image(key=f"figures/{name[:-4]}", images=[str(out / "figures" / name)], caption=[caption])
    logger.experiment.finish()


# --------------------------------------------------------------------------------------
# command line


def build_parser() -> ArgumentParser:
    """The parser of ``equimol study invariance``: :func:`~equimol.studies._invariance_config.config_parser`
    (``--config FILE``, ``--out DIR``, any key as a flag) with the command's conventions."""
    return errors.strict(config_parser())


def run_parsed(namespace: Namespace, args: Sequence[str]) -> int:
    """Run the study of a parsed command line (``args``, recorded as the command that
    reproduces it); print the tables to stdout."""
    config = _to_config(namespace)
    command = "equimol study invariance " + " ".join(args)
    result = run_invariance_study(config, command=command)
    print(markdown_tables(result))
    logger.info("results written to %s", result.output_dir)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``equimol study invariance --config FILE [--out DIR] [--key value ...]``; errors raise."""
    args = list(sys.argv[1:] if argv is None else argv)
    with errors.command("equimol study invariance"):
        return run_parsed(build_parser().parse_args(args), args)


#: ``equimol study NAME``: (module, its parser builder, its runner ``(namespace, args) -> int``, help).
STUDIES: dict[str, tuple[str, str, str, str]] = {
    "invariance": (
        "equimol.studies.invariance", "build_parser", "run_parsed",
        "augmentation against built-in invariance: --config FILE [--out DIR]",
    ),
    "vae": (
        "equimol.studies.vae_study", "build_parser", "run_parsed",
        "configuration VAEs on a Lennard-Jones fluid under gravity: [--out DIR]",
    ),
}  # fmt: skip


def study_main(argv: Sequence[str]) -> int:
    """Entry of ``equimol study``: ``argv[0]`` names the study (see :data:`STUDIES`).

    Only the named study's module is imported; errors raise, naming ``equimol study NAME``.
    """
    args = list(argv)
    chosen = args[0] if args and args[0] in STUDIES else None
    with errors.command(f"equimol study {chosen}" if chosen else "equimol study"):
        parser = ArgumentParser(
            prog="equimol study", description="Run a study and write its tables and figures.", **errors.PARSER_KWARGS
        )
        subcommands = parser.add_subcommands(dest="study", required=True, title="studies")
        runners = {}
        for name, (module, build, run, text) in STUDIES.items():
            if name == chosen:
                loaded = importlib.import_module(module)
                sub, runners[name] = getattr(loaded, build)(), getattr(loaded, run)
            else:  # listed by --help; never parsed
                sub = ArgumentParser(description=text)
            subcommands.add_subcommand(name, sub, help=text)
        namespace = parser.parse_args(args)
        return runners[namespace.study](namespace[namespace.study], args[1:])


if __name__ == "__main__":
    from equimol.cli import main as _equimol

    sys.exit(_equimol(["study", "invariance", *sys.argv[1:]]))
