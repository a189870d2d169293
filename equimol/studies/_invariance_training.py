"""Training and evaluation of one model of the invariance study.

Gradient-trained models go through :class:`equimol.train.PotentialModule` and a Lightning
``Trainer`` on in-memory graphs, within one of four budgets (``steps``, ``epochs``,
``converged``, ``equal_time``; see :func:`train_model`). Only the ``converged`` budget has a
validation split, carved out of the training split, so the test sets never steer training.
Models with a closed-form ``fit`` (``LinearModel``) are fitted directly.

Every model starts at the mean of its training energies
(:func:`equimol.train.centring.centre_energies`).
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, EarlyStopping
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from equimol import _keys as K
from equimol.data import DatasetStatistics, compute_statistics, split_indices
from equimol.models import FeatureMLP, LinearModel
from equimol.studies._invariance_budgets import BestWeights, TimeBudget
from equimol.studies._invariance_config import Augmentation, ModelEntry, TrainingSettings, build_model
from equimol.studies._invariance_data import TransformedGraphs, augmentation_transform, stack_copies
from equimol.train import PotentialModule
from equimol.train.centring import centre_energies
from equimol.train.losses import PotentialLoss

__all__ = [
    "TrainedModel",
    "EpochLossRecorder",
    "PreparedModel",
    "prepare_model",
    "train_model",
    "validation_loss",
    "predict",
    "labels",
    "count_parameters",
]

#: Transformed copies used to standardise the inputs of a model trained with online augmentation.
_SCALING_COPIES = 4


@dataclass
class TrainedModel:
    """A trained model and how it got there.

    Attributes:
        model: the potential (eval mode).
        loss_history: training loss after each epoch (empty for a closed-form fit).
        seconds: wall time of the fit, s.
        cpu_seconds: CPU time of the fit (this process), s; unlike the wall time it does not
            grow when other programs share the machine.
        epochs: epochs trained (0 for a closed-form fit).
        n_train: structures in the (possibly stacked) training set.
        loggers: the Lightning loggers of the run (to add final metrics, then close).
        stopped_by: why training ended: ``budget`` (the steps or epochs of the budget),
            ``patience`` or ``max_epochs`` (``converged``), ``time`` (``equal_time``),
            ``fit`` (closed form).
        val_loss_history: validation loss after each epoch (``converged`` only).
        best_val_loss: the lowest of them, that of the returned weights; for a closed-form
            fit under ``converged``, its loss on the validation structures (NaN without).
        validation: the held-out structures of the ``converged`` budget (empty otherwise).
    """

    model: torch.nn.Module
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    epochs: int = 0
    n_train: int = 0
    loggers: list[Any] = field(default_factory=list)
    stopped_by: str = "budget"
    val_loss_history: list[float] = field(default_factory=list)
    best_val_loss: float = math.nan
    validation: list[Data] = field(default_factory=list)


class EpochLossRecorder(Callback):
    """Keeps the epoch-mean ``train/loss`` of every epoch in :attr:`history`."""

    def __init__(self, key: str = "train/loss") -> None:
        self.key = key
        self.history: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.key)
        if value is not None:
            self.history.append(float(value))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of trainable parameters (scalars)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def _scheduler(settings: TrainingSettings, lr: float, epochs: int) -> Any:
    if settings.scheduler == "cosine":
        return functools.partial(
            torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs, eta_min=lr * settings.min_lr_ratio
        )
    if settings.scheduler == "plateau":
        return functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=10)
    return None


def _validation_split(train: Sequence[Data], fraction: float, seed: int) -> tuple[list[Data], list[Data]]:
    """Seeded split of ``train`` into the structures fitted and those that steer training."""
    n_val = max(1, round(fraction * len(train)))
    if n_val >= len(train):
        raise ValueError(
            f"training.val_fraction {fraction} leaves no structures to fit of {len(train)} training structures"
        )
    fit, val = split_indices(len(train), (len(train) - n_val, n_val), seed + 11)
    return [train[k] for k in fit], [train[k] for k in val]


def _epochs(entry: ModelEntry, settings: TrainingSettings, n_graphs: int, reference_size: int) -> int:
    """Epochs of a ``steps`` or ``epochs`` budget over ``n_graphs`` (possibly stacked) structures."""
    epochs = entry.epochs or settings.epochs
    if settings.budget == "steps":
        steps = epochs * math.ceil(reference_size / settings.batch_size)
        epochs = max(1, round(steps / math.ceil(n_graphs / settings.batch_size)))
    return epochs


@dataclass
class PreparedModel:
    """A freshly built model set up for training, and the data it trains on.

    Attributes:
        model: the model, with feature scaling and centred statistics (untrained).
        graphs: the training graphs it sees (stacked copies included).
        validation: held-out graphs of the ``converged`` budget (empty otherwise).
        augmentation: the augmentation used.
        transform: the random transform of the augmentation (None without).
        statistics: the statistics the model was given (after :func:`centre_energies`).
    """

    model: torch.nn.Module
    graphs: list[Data]
    validation: list[Data]
    augmentation: Augmentation
    transform: Any
    statistics: DatasetStatistics


def prepare_model(
    entry: ModelEntry,
    train: Sequence[Data],
    settings: TrainingSettings,
    *,
    planar: bool,
    dtype: torch.dtype = torch.float64,
    augmentation: Augmentation | None = None,
) -> PreparedModel:
    """Build ``entry.model`` afresh (seeded with ``settings.seed``), hold out the validation
    structures of the ``converged`` budget, draw the stacked copies of its augmentation,
    standardise the inputs of a feature MLP and centre it on the training energies: everything
    :func:`train_model` does before training. Arguments as there."""
    augmentation = augmentation or entry.augmentation
    seed = settings.seed
    pl.seed_everything(seed, verbose=False)
    model = build_model(entry.model).to(dtype)

    validation: list[Data] = []
    train = list(train)
    if settings.budget == "converged":  # a closed-form fit too: every row sees the same structures
        train, validation = _validation_split(train, settings.val_fraction, seed)
    transform = None
    graphs: list[Data] = list(train)
    scaling_graphs = graphs
    if augmentation.mode != "none":
        transform = augmentation_transform(augmentation.transforms, planar, seed)
        if augmentation.mode == "stacked":
            graphs = stack_copies(train, transform, augmentation.copies)
            scaling_graphs = graphs
        else:
            scaling_graphs = stack_copies(
                train, augmentation_transform(augmentation.transforms, planar, seed + 1), _SCALING_COPIES
            )
    if settings.standardize_features and isinstance(model, FeatureMLP):
        model.fit_feature_scaling(scaling_graphs)
    statistics = centre_energies(model, graphs, compute_statistics(graphs))
    return PreparedModel(model, graphs, validation, augmentation, transform, statistics)


def train_model(
    entry: ModelEntry,
    train: Sequence[Data],
    settings: TrainingSettings,
    *,
    planar: bool,
    dtype: torch.dtype = torch.float64,
    augmentation: Augmentation | None = None,
    loggers: Sequence[Any] = (),
    reference_size: int | None = None,
) -> TrainedModel:
    """Build ``entry.model`` afresh (seeded) and train it on ``train`` within ``settings.budget``.

    Budgets (``settings.budget``):

    - ``steps``: ``epochs * ceil(reference_size / batch_size)`` optimizer steps;
    - ``epochs``: ``epochs`` passes over the (possibly stacked) training set;
    - ``converged``: a seeded ``val_fraction`` of ``train`` is held out (before any
      augmentation); the model trains until the validation loss (the training loss on those
      structures) has not improved for ``patience`` epochs, or ``max_epochs`` passes, with the
      learning rate multiplied by ``lr_factor`` after ``lr_patience`` epochs without
      improvement; the weights of the best validation loss are restored;
    - ``equal_time``: training stops after ``seconds`` of wall-clock time (the model's set-up
      and statistics included), with the cosine schedule over that time.

    Before training the model gets the training-set statistics and starts at the mean of the
    training energies (:func:`centre_energies`).

    Args:
        entry: the model entry (its ``augmentation`` unless ``augmentation`` is given).
        train: training graphs (single structures).
        settings: training settings (``entry.epochs``, ``entry.lr``, ``entry.patience`` and
            ``entry.lr_patience`` override them).
        planar: draw planar rotations/reflections for augmentation.
        dtype: dtype of the model's floating parameters (that of the graphs).
        augmentation: overrides ``entry.augmentation`` (used for the augmentation-cost runs).
        loggers: Lightning loggers for this run (W&B...).
        reference_size: with ``settings.budget == "steps"``, the size of the plain training
            split that fixes the number of optimizer steps (default ``len(train)``).

    Returns:
        The trained model with its loss histories, timing and why it stopped.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    lr = entry.lr or settings.lr
    budget = None
    if settings.budget == "equal_time":  # the clock runs from here: set-up and statistics count
        budget = TimeBudget(settings.seconds, cosine=settings.scheduler == "cosine", lr=lr,
                            lr_min=lr * settings.min_lr_ratio)
        budget.start()
    setup = prepare_model(entry, train, settings, planar=planar, dtype=dtype, augmentation=augmentation)
    model, graphs, validation, seed = setup.model, setup.graphs, setup.validation, settings.seed
    augmentation, transform = setup.augmentation, setup.transform

    if entry.fit == "closed_form":
        if not isinstance(model, LinearModel):
            raise ValueError(f"model {entry.name!r}: fit is 'closed_form', which only a LinearModel has")
        model.fit(graphs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        return TrainedModel(
            model.eval(), [], seconds, cpu_seconds, 0, len(graphs), list(loggers), stopped_by="fit",
            best_val_loss=validation_loss(model, validation, settings) if validation else math.nan,
            validation=validation,
        )

    recorder = EpochLossRecorder()
    callbacks: list[Callback] = [recorder]
    best: BestWeights | None = None
    early: EarlyStopping | None = None
    if settings.budget == "converged":
        epochs = settings.max_epochs
        scheduler: Any = functools.partial(
            torch.optim.lr_scheduler.ReduceLROnPlateau, factor=settings.lr_factor,
            patience=entry.lr_patience or settings.lr_patience,
        )
        monitor = "val/loss"
        best = BestWeights(monitor)
        early = EarlyStopping(monitor=monitor, patience=entry.patience or settings.patience, mode="min",
                              check_finite=False)
        callbacks += [best, early]
    elif settings.budget == "equal_time":
        epochs = -1
        scheduler = _scheduler(settings, lr, 1) if settings.scheduler == "plateau" else None
        monitor = "train/loss"
        callbacks.append(budget)
    else:
        epochs = _epochs(entry, settings, len(graphs), reference_size or len(train))
        scheduler = _scheduler(settings, lr, epochs)
        monitor = "train/loss"
    module = PotentialModule(
        model,
        energy_weight=settings.energy_weight,
        forces_weight=settings.forces_weight if K.FORCES in graphs[0] else 0.0,
        optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=settings.weight_decay),
        lr_scheduler=scheduler,
        lr_scheduler_monitor=monitor,
        train_metrics=False,  # the study reads the losses only; the metrics cost up to ~45% of a small step
    )
    dataset = TransformedGraphs(graphs, transform if augmentation.mode == "online" else None)
    loader = DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    val_loader = DataLoader(validation, batch_size=len(validation), shuffle=False) if validation else None
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision="64-true" if dtype == torch.float64 else "32-true",
        logger=list(loggers) if loggers else False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        limit_val_batches=1.0 if validation else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, len(loader)),
        deterministic=False,
    )
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    if early is not None and early.stopped_epoch > 0:
        stopped_by = "patience"
    elif budget is not None and trainer.should_stop:
        stopped_by = "time"
    else:
        stopped_by = "max_epochs" if settings.budget == "converged" else "budget"
    return TrainedModel(
        module.model.eval(), recorder.history, seconds, cpu_seconds, int(trainer.current_epoch), len(graphs),
        list(loggers), stopped_by=stopped_by, val_loss_history=list(best.history) if best else [],
        best_val_loss=best.best if best else math.nan, validation=validation,
    )


def validation_loss(model: torch.nn.Module, graphs: Sequence[Data], settings: TrainingSettings) -> float:
    """The training loss (energy-per-atom and force terms, weighted as in ``settings``) of
    ``model`` on ``graphs`` in one batch: what the ``converged`` budget monitors."""
    loss = PotentialLoss(settings.energy_weight, settings.forces_weight if K.FORCES in graphs[0] else 0.0)
    batch = next(iter(DataLoader(list(graphs), batch_size=len(graphs), shuffle=False)))
    with torch.enable_grad():
        prediction = model(batch, compute_forces=loss.needs(K.FORCES))
    return float(loss(prediction, batch)["loss"].detach())


def predict(model: torch.nn.Module, graphs: Sequence[Data], batch_size: int = 256) -> dict[str, np.ndarray]:
    """Energies ``[M]`` eV and, where the graphs have force labels, forces ``[sum N, 3]`` eV/Å."""
    with_forces = K.FORCES in graphs[0]
    energies, forces = [], []
    model.eval()
    for batch in DataLoader(list(graphs), batch_size=batch_size, shuffle=False):
        with torch.no_grad():  # forces come from autograd inside the model
            out = model(batch, compute_forces=with_forces)
        energies.append(out[K.ENERGY].detach().double().numpy())
        if with_forces:
            forces.append(out[K.FORCES].detach().double().numpy())
    result = {K.ENERGY: np.concatenate(energies)}
    if with_forces:
        result[K.FORCES] = np.concatenate(forces)
    return result


def labels(graphs: Sequence[Data]) -> dict[str, np.ndarray]:
    """True energies ``[M]`` eV and forces ``[sum N, 3]`` eV/Å (where labelled) of ``graphs``."""
    result = {K.ENERGY: np.array([float(g[K.ENERGY].reshape(-1)[0]) for g in graphs])}
    if K.FORCES in graphs[0]:
        result[K.FORCES] = np.concatenate([g[K.FORCES].double().numpy() for g in graphs])
    return result
