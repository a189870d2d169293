"""Training and evaluation of one model of the invariance study.

Gradient-trained models go through :class:`equimol.train.PotentialModule` and a Lightning
``Trainer`` on in-memory graphs (no validation split: the learning-rate schedule follows the
epoch or the training loss, so the test sets never steer training). Models with a closed-form
``fit`` (``LinearModel``) are fitted directly.
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
from pytorch_lightning.callbacks import Callback
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from equimol import _keys as K
from equimol.data import compute_statistics
from equimol.models import FeatureMLP, LinearModel
from equimol.studies._invariance_config import Augmentation, ModelEntry, TrainingSettings, build_model
from equimol.studies._invariance_data import TransformedGraphs, augmentation_transform, stack_copies
from equimol.train import PotentialModule

__all__ = ["TrainedModel", "EpochLossRecorder", "train_model", "predict", "labels", "count_parameters"]

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
    """

    model: torch.nn.Module
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    epochs: int = 0
    n_train: int = 0
    loggers: list[Any] = field(default_factory=list)


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
    """Build ``entry.model`` afresh (seeded) and train it on ``train``.

    Args:
        entry: the model entry (its ``augmentation`` unless ``augmentation`` is given).
        train: training graphs (single structures).
        settings: training settings (``entry.epochs``/``entry.lr`` override them).
        planar: draw planar rotations/reflections for augmentation.
        dtype: dtype of the model's floating parameters (that of the graphs).
        augmentation: overrides ``entry.augmentation`` (used for the augmentation-cost runs).
        loggers: Lightning loggers for this run (W&B...).
        reference_size: with ``settings.budget == "steps"``, the size of the plain training
            split that fixes the number of optimizer steps (default ``len(train)``).

    Returns:
        The trained model with its loss history and timing.
    """
    augmentation = augmentation or entry.augmentation
    seed = settings.seed
    pl.seed_everything(seed, verbose=False)
    model = build_model(entry.model).to(dtype)

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

    model.set_statistics(compute_statistics(graphs))
    if settings.standardize_features and isinstance(model, FeatureMLP):
        model.fit_feature_scaling(scaling_graphs)

    if entry.fit == "closed_form":
        if not isinstance(model, LinearModel):
            raise ValueError(f"model {entry.name!r}: fit is 'closed_form', which only a LinearModel has")
        start, cpu_start = time.perf_counter(), time.process_time()
        model.fit(graphs)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        return TrainedModel(model.eval(), [], seconds, cpu_seconds, 0, len(graphs), list(loggers))

    epochs = entry.epochs or settings.epochs
    if settings.budget == "steps":
        steps = epochs * math.ceil((reference_size or len(train)) / settings.batch_size)
        epochs = max(1, round(steps / math.ceil(len(graphs) / settings.batch_size)))
    lr = entry.lr or settings.lr
    module = PotentialModule(
        model,
        energy_weight=settings.energy_weight,
        forces_weight=settings.forces_weight if K.FORCES in graphs[0] else 0.0,
        optimizer=functools.partial(torch.optim.AdamW, lr=lr, weight_decay=settings.weight_decay),
        lr_scheduler=_scheduler(settings, lr, epochs),
        lr_scheduler_monitor="train/loss",
    )
    dataset = TransformedGraphs(graphs, transform if augmentation.mode == "online" else None)
    loader = DataLoader(
        dataset, batch_size=settings.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    recorder = EpochLossRecorder()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        precision="64-true" if dtype == torch.float64 else "32-true",
        logger=list(loggers) if loggers else False,
        callbacks=[recorder],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, len(loader)),
        deterministic=False,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(module, train_dataloaders=loader)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return TrainedModel(
        module.model.eval(), recorder.history, seconds, cpu_seconds, int(trainer.current_epoch), len(graphs),
        list(loggers),
    )


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
