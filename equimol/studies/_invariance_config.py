"""The typed configuration of the invariance study, read from YAML by jsonargparse.

Every key is checked against these dataclasses (and every model's ``init_args`` against the
signature of its class), so a misspelt key stops the study with a message that names it.
A config looks like ``configs/study/toy2d.yaml``::

    name: invariance-toy2d
    output_dir: runs/invariance/toy2d
    data: {generator: toy2d, generator_args: {n_samples: 500}, cutoff: 10.0, planar: true}
    training: {epochs: 150, batch_size: 32, lr: 0.003, seed: 0}
    models:
      - name: MLP(positions)
        model:
          class_path: equimol.models.feature_mlp.FeatureMLP
          init_args: {n_atoms: 4, featurizer: positions}
        augmentation: {mode: stacked, transforms: [rotation], copies: 3}
    test_sets: [original, rotation_90, random_rotation, permutation_fixed]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, get_args

import torch
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace

__all__ = [
    "TEST_SETS",
    "DataSettings",
    "TrainingSettings",
    "Augmentation",
    "ModelEntry",
    "LearningCurveSettings",
    "AugmentationCostSettings",
    "WandbSettings",
    "InvarianceStudyConfig",
    "config_parser",
    "load_config",
    "build_model",
]

#: Name of a transformed test set (all are made from the same held-out structures).
TestSetName = Literal[
    "original",
    "rotation_90",
    "random_rotation",
    "permutation_fixed",
    "random_permutation",
    "reflection",
    "rotation_permutation",
]

#: Every test-set name, in the order of the tables.
TEST_SETS: tuple[str, ...] = get_args(TestSetName)


@dataclass
class DataSettings:
    """Where the structures come from, their graphs and the train/test split.

    Exactly one of ``generator`` (a name of ``equimol.generate.GENERATORS`` with
    ``generator_args``), ``file`` (an extended-XYZ file or ASE database) or ``sample`` (a
    name of ``equimol.data.samples.available_samples()``) must be given.

    Attributes:
        generator: generator name, for example ``toy2d`` or ``lj-cluster``.
        generator_args: keyword arguments of the generator (``n_samples``, ``seed``...).
        file: path of a structure file.
        sample: name of a shipped sample, for example ``ethanol_gfn2``.
        index: frames to read from ``file``/``sample`` (ASE syntax, ``":"``, ``":200"``).
        cutoff: radius of the graphs, Å (models with a ``cutoff`` must use the same).
        planar: the system lies in the z = 0 plane: random rotations and reflections keep it
            there (rotations about z, mirror lines in the plane).
        test_fraction: fraction of the structures held out for testing.
        split_seed: seed of the train/test split.
        dtype: floating dtype of graphs and models (``float64`` makes round-off tiny).
    """

    generator: Optional[str] = None
    generator_args: dict[str, Any] = field(default_factory=dict)
    file: Optional[str] = None
    sample: Optional[str] = None
    index: str = ":"
    cutoff: float = 5.0
    planar: bool = False
    test_fraction: float = 0.2
    split_seed: int = 0
    dtype: Literal["float32", "float64"] = "float64"


@dataclass
class TrainingSettings:
    """How every gradient-trained model is trained (Lightning ``Trainer`` + ``PotentialModule``).

    Attributes:
        epochs: passes over the (possibly stacked) training set.
        batch_size: structures per batch.
        lr: initial learning rate of AdamW.
        weight_decay: AdamW weight decay.
        scheduler: ``cosine`` (anneal to ``lr * min_lr_ratio`` over the epochs), ``plateau``
            (halve on a training-loss plateau) or ``none``.
        min_lr_ratio: final learning rate of the cosine schedule, relative to ``lr``.
        energy_weight: weight of the energy-per-atom loss term, (eV/atom)^-2.
        forces_weight: weight of the force loss term, (eV/Å)^-2 (0: energies only).
        standardize_features: standardise the inputs of models that offer
            ``fit_feature_scaling`` (the feature MLPs) with the training set's features.
        budget: what every model is given:

            - ``steps`` (default): the same number of optimizer steps,
              ``epochs * ceil(n_train / batch_size)`` of the plain training split, so a stacked
              set of ``k`` copies gets ``epochs / (k + 1)`` passes and a small learning-curve
              subset more passes (compute held fixed, data varied);
            - ``epochs``: ``epochs`` passes over its own training set;
            - ``converged``: training until the validation loss has not improved for
              ``patience`` epochs (or ``max_epochs``), with a plateau schedule
              (``lr_factor`` after ``lr_patience`` epochs without improvement; ``scheduler``
              is not used), the best weights restored; ``val_fraction`` of the training
              split is held out for validation;
            - ``equal_time``: the same wall-clock ``seconds`` each (its set-up included),
              with ``scheduler`` ``cosine`` annealed over that time.
        patience: ``converged``: epochs without a lower validation loss before stopping.
        lr_patience: ``converged``: epochs without a lower validation loss before the
            learning rate is multiplied by ``lr_factor``.
        lr_factor: ``converged``: that factor, in (0, 1).
        max_epochs: ``converged``: the cap on the epochs (a run that reaches it did not
            converge by the patience rule; the results say so).
        val_fraction: ``converged``: fraction of the training split held out for validation
            (seeded by ``seed``; taken before any augmentation).
        seconds: ``equal_time``: wall-clock seconds per model.
        seed: seed of weights, batch order and augmentation.
        search: run the ``search`` of the model entries that have one (``false``: train
            each entry at its own values, the quick run; the searches are still checked).
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 0.0
    scheduler: Literal["cosine", "plateau", "none"] = "cosine"
    min_lr_ratio: float = 0.01
    energy_weight: float = 1.0
    forces_weight: float = 1.0
    standardize_features: bool = True
    budget: Literal["steps", "epochs", "converged", "equal_time"] = "steps"
    patience: int = 20
    lr_patience: int = 5
    lr_factor: float = 0.5
    max_epochs: int = 2000
    val_fraction: float = 0.1
    seconds: float = 30.0
    seed: int = 0
    search: bool = True


@dataclass
class Augmentation:
    """How a model is shown the symmetry: not at all, by stacked copies, or online.

    Attributes:
        mode: ``none``; ``stacked`` (a fixed training set: the original structures plus
            ``copies`` transformed copies of each, drawn once); ``online`` (a new random
            transform of every structure every time it is loaded).
        transforms: which symmetry operations: ``rotation`` (random, planar for 2D
            systems), ``permutation`` (random relabelling of atoms of equal species), or both.
        copies: number of transformed copies for ``stacked``.
    """

    mode: Literal["none", "stacked", "online"] = "none"
    transforms: list[Literal["rotation", "permutation"]] = field(default_factory=lambda: ["rotation"])
    copies: int = 3


@dataclass
class ModelEntry:
    """One row of the results: a named model and its augmentation.

    Attributes:
        name: the row label (unique).
        model: ``class_path`` and ``init_args`` of any ``torch.nn.Module`` with the
            ``Potential`` interface (a user's own class included). jsonargparse checks the
            ``init_args`` against the class's signature; :func:`load_config` keeps the entry
            as the dict ``{class_path, init_args}``, and every training run builds a fresh
            module from it with :func:`build_model`.
        augmentation: see :class:`Augmentation`.
        fit: ``gradient`` (Lightning training) or ``closed_form`` (call the model's ``fit``
            on the training graphs, as for ``LinearModel``; no Trainer).
        epochs: overrides ``training.epochs`` for this model (``steps`` and ``epochs`` budgets).
        lr: overrides ``training.lr`` for this model.
        patience: overrides ``training.patience`` for this model (``converged``): with online
            augmentation every epoch shows new structures and the validation loss falls
            slowly and noisily, so the rule that stops a plain model at its best stops an
            augmented one early.
        lr_patience: overrides ``training.lr_patience`` for this model (``converged``).
        search: candidate values to choose from on the validation split (``converged``
            budget only), e.g. ``{lr: [1.0e-3, 3.0e-3], hidden: [[64, 64], [128, 128]]}``: a key
            is ``lr`` or an ``init_args`` key of the model. Every combination is trained on the
            training split less its validation structures; the one with the lowest validation
            loss is the row (and the model of its learning curve and augmentation cost). The
            test sets are never looked at. See :mod:`equimol.studies._invariance_search`.
    """

    name: str
    model: torch.nn.Module
    augmentation: Augmentation = field(default_factory=Augmentation)
    fit: Literal["gradient", "closed_form"] = "gradient"
    epochs: Optional[int] = None
    lr: Optional[float] = None
    patience: Optional[int] = None
    lr_patience: Optional[int] = None
    search: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class LearningCurveSettings:
    """Test error against training-set size, over seeds, with power-law fits.

    Every model named in ``models`` is trained on nested random subsets of the training split
    (sizes ``sizes``) for every seed of ``seeds`` (the seed draws the subsets and seeds the
    training), within ``training.budget``. Per model and test set the study fits
    ``MSE ~ n**slope`` in log-log (the slope and its spread over the seeds) and, with
    a target, interpolates the number of training structures (and the training CPU time)
    each model needs to reach it.

    The target is either absolute (``target_mse``, an energy MSE) or set by one model:
    ``target_model`` at ``target_n_train`` structures, its ``target_metric`` on the original
    test set (geometric mean over the seeds), e.g. "the force MAE the equivariant network
    reaches with 100 structures".

    Attributes:
        sizes: training-set sizes (sizes larger than the split are clipped to it).
        seeds: seeds; the grid run is reused for ``training.seed`` at the full size.
        models: names of the model entries to train at every size (empty: no curves).
        test_sets: test sets whose errors are recorded.
        target_mse: an absolute energy MSE target (eV²), or None.
        target_model: the model whose error at ``target_n_train`` sets the target, or None.
        target_n_train: the training-set size of that error (one of ``sizes``).
        target_metric: ``forces_mae`` (eV/Å) or ``energy_mse`` (eV²): the error compared
            with the target model's.
    """

    sizes: list[int] = field(default_factory=lambda: [25, 50, 100, 200, 400])
    seeds: list[int] = field(default_factory=lambda: [0])
    models: list[str] = field(default_factory=list)
    test_sets: list[TestSetName] = field(default_factory=lambda: ["original", "random_rotation"])
    target_mse: Optional[float] = None
    target_model: Optional[str] = None
    target_n_train: Optional[int] = None
    target_metric: Literal["forces_mae", "energy_mse"] = "forces_mae"


@dataclass
class AugmentationCostSettings:
    """How many stacked transformed copies a model needs to reach a target error.

    The entry named ``model`` is trained with ``k`` stacked copies (its ``augmentation.
    transforms``, default rotations) for every ``k`` in ``copies``; the cost is the smallest
    ``k`` whose energy MSE on ``test_set`` is at most the target. The target is ``target_mse``
    (eV^2) if given, else ``target_factor`` times the MSE that the entry ``target_model``
    reaches on ``test_set``.

    Attributes:
        model: name of the entry to augment (empty: skip this part).
        copies: the numbers of copies to try.
        test_set: where the error is measured.
        transforms: the symmetry operations of the copies.
        target_model: the entry whose error sets the target.
        target_factor: multiple of that error accepted as "reached".
        target_mse: an absolute target in eV^2 instead.
        budget: ``epochs``: every ``k`` trains ``training.epochs`` passes over its stacked set,
            so the compute grows with ``k + 1`` like the data (the time is reported);
            ``steps``: the number of optimizer steps of the plain run for every ``k``.
    """

    model: str = ""
    copies: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8])
    test_set: TestSetName = "random_rotation"
    transforms: list[Literal["rotation", "permutation"]] = field(default_factory=lambda: ["rotation"])
    target_model: str = ""
    target_factor: float = 1.0
    target_mse: Optional[float] = None
    budget: Literal["epochs", "steps"] = "epochs"


@dataclass
class WandbSettings:
    """Weights & Biases logging: one run per trained model, all in the group ``name``.

    Attributes:
        enabled: log to W&B (a CSV log of every run is written either way).
        project: W&B project.
        offline: write runs to disk only (``wandb sync`` uploads them later).
    """

    enabled: bool = True
    project: str = "equimol"
    offline: bool = True


@dataclass
class InvarianceStudyConfig:
    """The whole study: data, training, models, test sets, extra experiments, output.

    Attributes:
        name: study name (W&B group, figure titles).
        output_dir: results folder (CSV, Markdown, figures, logs).
        data: see :class:`DataSettings`.
        training: see :class:`TrainingSettings`.
        models: the rows of the results, see :class:`ModelEntry`.
        test_sets: names among :data:`TEST_SETS`; ``original`` is always evaluated.
        learning_curve: see :class:`LearningCurveSettings`.
        augmentation_cost: see :class:`AugmentationCostSettings`.
        wandb: see :class:`WandbSettings`.
        figures: draw the figures.
    """

    name: str
    models: list[ModelEntry]
    output_dir: str = "runs/invariance"
    data: DataSettings = field(default_factory=DataSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    test_sets: list[TestSetName] = field(default_factory=lambda: list(TEST_SETS))
    learning_curve: LearningCurveSettings = field(default_factory=LearningCurveSettings)
    augmentation_cost: AugmentationCostSettings = field(default_factory=AugmentationCostSettings)
    wandb: WandbSettings = field(default_factory=WandbSettings)
    figures: bool = True


def config_parser() -> ArgumentParser:
    """The parser of ``equimol study invariance``: ``--config FILE`` (YAML), ``--out DIR``
    and any key as a flag (``--training.epochs 5``)."""
    parser = ArgumentParser(
        prog="equimol study invariance",
        description="Augmentation-based against built-in invariance: train a grid of models on one "
        "data set and evaluate each on the same transformed test sets.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="study config (YAML)")
    parser.add_class_arguments(InvarianceStudyConfig, nested_key=None, fail_untyped=True)
    parser.add_argument("--out", type=Optional[str], default=None, help="results folder (overrides output_dir)")
    return parser


def _to_config(namespace: Namespace) -> InvarianceStudyConfig:
    values = namespace.as_dict()
    out = values.pop("out", None)
    values.pop("config", None)
    values.pop("__path__", None)
    if out:
        values["output_dir"] = out
    config = InvarianceStudyConfig(
        name=values["name"],
        models=[
            ModelEntry(
                name=entry["name"],
                model=entry["model"],  # kept as {class_path, init_args}: built fresh per run
                augmentation=Augmentation(**entry.get("augmentation") or {}),
                fit=entry.get("fit", "gradient"),
                epochs=entry.get("epochs"),
                lr=entry.get("lr"),
                patience=entry.get("patience"),
                lr_patience=entry.get("lr_patience"),
                search=dict(entry.get("search") or {}),
            )
            for entry in values["models"]
        ],
        output_dir=values["output_dir"],
        data=DataSettings(**values["data"]),
        training=TrainingSettings(**values["training"]),
        test_sets=list(values["test_sets"]),
        learning_curve=LearningCurveSettings(**values["learning_curve"]),
        augmentation_cost=AugmentationCostSettings(**values["augmentation_cost"]),
        wandb=WandbSettings(**values["wandb"]),
        figures=values["figures"],
    )
    validate_config(config)
    return config


def load_config(path: str | Path | None = None, args: Sequence[str] = ()) -> InvarianceStudyConfig:
    """Read and check a study config.

    Args:
        path: YAML file (may be None when everything is given in ``args``).
        args: further command-line style arguments (``["--training.epochs", "5"]``).

    Returns:
        The config; each entry's ``model`` is a dict ``{class_path, init_args}`` (validated
        against the class's signature), built into a fresh module by :func:`build_model`.

    Raises:
        ValueError: a misspelt or unknown key, a wrong type, or inconsistent settings;
            the message names the key.
    """
    argv = list(args)
    if path is not None:
        argv = ["--config", str(path), *argv]
    parser = config_parser()
    try:
        namespace = parser.parse_args(argv)
    except Exception as error:  # jsonargparse raises argparse.ArgumentError
        files = [argv[k + 1] for k, arg in enumerate(argv[:-1]) if arg == "--config"]
        where = f"{', '.join(files)}: " if files else ""
        raise ValueError(f"{where}invalid study config: {error}") from error
    return _to_config(namespace)


def validate_config(config: InvarianceStudyConfig) -> None:
    """Checks the types alone cannot make: one data source, unique names, known references."""
    data = config.data
    sources = [name for name in ("generator", "file", "sample") if getattr(data, name)]
    if len(sources) != 1:
        raise ValueError(f"data: give exactly one of generator, file or sample (got {sources or 'none'})")
    if data.generator:
        from equimol.generate import generator_call  # lazy: generators import their calculators

        generator_call(data.generator, data.generator_args, where="data.generator")
    if not 0 < data.test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {data.test_fraction}")
    if data.cutoff <= 0:
        raise ValueError(f"data.cutoff must be positive, got {data.cutoff}")
    training = config.training
    if training.epochs < 1 or training.batch_size < 1 or training.lr <= 0:
        raise ValueError(
            f"training: epochs, batch_size and lr must be positive, got {training.epochs}, "
            f"{training.batch_size}, {training.lr}"
        )
    _validate_budget(training)
    if not config.models:
        raise ValueError("models: give at least one model entry")
    names = [entry.name for entry in config.models]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"models: names must be unique, repeated: {duplicates}")
    for entry in config.models:
        if entry.augmentation.mode != "none" and not entry.augmentation.transforms:
            raise ValueError(f"models[{entry.name!r}].augmentation.transforms is empty")
        if entry.augmentation.copies < 0:
            raise ValueError(f"models[{entry.name!r}].augmentation.copies must be >= 0")
        for key in ("patience", "lr_patience"):
            if getattr(entry, key) is not None and getattr(entry, key) < 1:
                raise ValueError(f"models[{entry.name!r}].{key} must be >= 1, got {getattr(entry, key)}")
        if entry.fit == "closed_form" and entry.augmentation.mode == "online":
            raise ValueError(f"models[{entry.name!r}]: a closed-form fit cannot use online augmentation")
        if entry.search:
            _validate_search(entry, training)
    for name in config.learning_curve.models:
        if name not in names:
            raise ValueError(f"learning_curve.models: no model entry named {name!r}; entries: {names}")
    cost = config.augmentation_cost
    for key in ("model", "target_model"):
        value = getattr(cost, key)
        if value and value not in names:
            raise ValueError(f"augmentation_cost.{key}: no model entry named {value!r}; entries: {names}")
    if cost.model and cost.target_mse is None and not cost.target_model:
        raise ValueError("augmentation_cost: give target_mse or target_model")
    if cost.model and cost.test_set not in config.test_sets:
        raise ValueError(f"augmentation_cost.test_set {cost.test_set!r} is not among test_sets {config.test_sets}")
    curve = config.learning_curve
    if curve.models and (not curve.seeds or not curve.sizes or min(curve.sizes) < 1):
        raise ValueError(f"learning_curve: give at least one seed and positive sizes, got seeds {curve.seeds}, "
                         f"sizes {curve.sizes}")
    if curve.target_mse is not None and not curve.target_mse > 0:
        raise ValueError(f"learning_curve.target_mse must be positive, got {curve.target_mse}")
    if curve.target_model is not None:
        if curve.target_mse is not None:
            raise ValueError("learning_curve: give target_mse or target_model, not both")
        if curve.target_model not in curve.models:
            raise ValueError(f"learning_curve.target_model {curve.target_model!r} is not among learning_curve.models "
                             f"{curve.models}")
        if curve.target_n_train not in curve.sizes:
            raise ValueError(f"learning_curve.target_n_train must be one of learning_curve.sizes {curve.sizes}, "
                             f"got {curve.target_n_train}")
    elif curve.target_n_train is not None:
        raise ValueError("learning_curve.target_n_train needs learning_curve.target_model")
    missing = [name for name in config.learning_curve.test_sets if name not in config.test_sets]
    if config.learning_curve.models and missing:
        raise ValueError(f"learning_curve.test_sets {missing} are not among test_sets {config.test_sets}")


def _validate_search(entry: ModelEntry, training: TrainingSettings) -> None:
    """A search needs the validation split of the ``converged`` budget, non-empty candidate
    lists, and candidates the model's class accepts (checked by jsonargparse, not built)."""
    where = f"models[{entry.name!r}].search"
    if training.budget != "converged" and training.search:
        raise ValueError(f"{where}: a search compares validation losses, which only budget 'converged' has "
                         f"(training.budget is {training.budget!r}; training.search: false skips the searches)")
    for key, values in entry.search.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.{key}: give a non-empty list of candidates, got {values!r}")
        if key == "lr":
            if not all(isinstance(v, (int, float)) and v > 0 for v in values):
                raise ValueError(f"{where}.lr: learning rates must be positive numbers, got {values}")
            continue
        init_args = dict(entry.model.get("init_args") or {})
        for value in values:
            try:
                check_model_spec({"class_path": entry.model["class_path"], "init_args": {**init_args, key: value}})
            except Exception as error:
                raise ValueError(f"{where}.{key}: {value!r} is not an argument value of "
                                 f"{entry.model['class_path']} ({error})") from error


def _validate_budget(training: TrainingSettings) -> None:
    """The keys of the chosen budget must make sense (the others are not used)."""
    if training.budget == "converged":
        for key in ("patience", "lr_patience", "max_epochs"):
            if getattr(training, key) < 1:
                raise ValueError(f"training.{key} must be >= 1 for budget 'converged', got {getattr(training, key)}")
        if not 0 < training.lr_factor < 1:
            raise ValueError(f"training.lr_factor must be in (0, 1), got {training.lr_factor}")
        if not 0 < training.val_fraction < 1:
            raise ValueError(f"training.val_fraction must be in (0, 1), got {training.val_fraction}")
    if training.budget == "equal_time" and not training.seconds > 0:
        raise ValueError(f"training.seconds must be positive for budget 'equal_time', got {training.seconds}")


def _model_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--model", type=torch.nn.Module)
    return parser


def check_model_spec(spec: dict[str, Any]) -> None:
    """Check ``{class_path, init_args}`` against the class's signature without building it.

    Raises:
        Exception: jsonargparse's error naming the key or value it cannot accept.
    """
    _model_parser().parse_object({"model": spec})


def build_model(spec: Any) -> torch.nn.Module:
    """A new module from ``{class_path, init_args}`` (a dict or a jsonargparse Namespace).

    Uses jsonargparse, so nested ``class_path`` entries inside ``init_args`` work too.
    """
    if isinstance(spec, torch.nn.Module):
        raise TypeError("build_model needs a {class_path, init_args} spec, not a module instance")
    if isinstance(spec, Namespace):
        spec = spec.as_dict()
    parser = _model_parser()
    namespace = parser.parse_object({"model": spec})
    return parser.instantiate_classes(namespace).model


def config_to_dict(config: InvarianceStudyConfig) -> dict[str, Any]:
    """The config as plain data (for logging and for ``config.yaml`` in the results)."""
    return dataclasses.asdict(config)
