"""Training callbacks: an exponential moving average of the weights, parity plots, loss curves.

The moving average is Lightning's own :class:`~pytorch_lightning.callbacks.WeightAveraging`
(over ``torch.optim.swa_utils.AveragedModel``): validation runs with the averaged weights, and
checkpoints store them as ``state_dict`` (the raw weights go to ``current_model_state`` so a
resumed run continues where it stopped).
"""

from __future__ import annotations

import json
import statistics
import time

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, WeightAveraging
from pytorch_lightning.utilities.rank_zero import rank_zero_only
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from equimol.train.plots import figure_to_array, loss_curve_figure, parity_figure, save_figure

__all__ = ["EMA", "BestAndLastCheckpoint", "ParityPlot", "LossCurve", "LearningRateLogger", "EpochTimer", "log_figure"]


def _ema_multi_avg_fn(decay: float, warmup: bool) -> Callable[[list, list, Any], None]:
    """EMA of floating tensors, exact copies of integer buffers (counts, atomic numbers).

    With ``warmup`` the factor after ``n`` updates is ``min(decay, (1 + n) / (10 + n))``, so
    the average follows the fast early changes of the weights instead of lagging far behind.
    """

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: Any) -> None:
        if torch.is_floating_point(averaged[0]) or torch.is_complex(averaged[0]):
            n = float(n_averaged)
            factor = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
            get_ema_multi_avg_fn(factor)(averaged, current, n_averaged)
        else:  # an average of integers would truncate: keep the current value
            torch._foreach_copy_(averaged, current)  # (integer parameters are rare)

    return update


class _AlignedBuffers:
    """``model`` seen through the buffer names of ``reference``: ``buffers()`` yields, for each
    buffer of ``reference``, the model's buffer of the same name (or the reference's own
    buffer where the model has none, such as constants a deep copy regenerated)."""

    def __init__(self, model: torch.nn.Module, reference: torch.nn.Module) -> None:
        self.model = model
        self.reference = reference

    def parameters(self):
        return self.model.parameters()

    def buffers(self):
        own = dict(self.model.named_buffers())
        return [
            own[name] if name in own and own[name].shape == buffer.shape else buffer
            for name, buffer in self.reference.named_buffers()
        ]


class _AveragedModel(AveragedModel):
    """``AveragedModel`` whose buffer sync matches buffers by name rather than by position."""

    def update_parameters(self, model: torch.nn.Module) -> None:
        super().update_parameters(_AlignedBuffers(model, self.module))


class EMA(WeightAveraging):
    """Exponential moving average of the weights, ``w_ema <- decay w_ema + (1 - decay) w``.

    Args:
        decay: the averaging factor per update; 0 follows the raw weights (no averaging).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (recommended for
            short runs, where a fixed 0.999 would average mostly the initial weights).
        update_every_n_steps: update after every n-th optimizer step.
        device: where the averaged copy lives (default: beside the model; ``"cpu"`` saves GPU memory).

    Parameters are averaged; buffers (statistics-derived shifts, masks, constants) are taken
    from the live model. Parameters are matched by name, because a deep copy of some modules
    (e3nn's generated code) holds extra constant buffers and so differs in buffer order.
    The averaged copy starts from the model as it is when fitting begins (after the training
    statistics have initialised it), so even the sanity-check validation uses valid weights.
    """

    def __init__(
        self, decay: float = 0.999, warmup: bool = True, update_every_n_steps: int = 1, device: str | None = None
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        if update_every_n_steps < 1:
            raise ValueError(f"EMA update_every_n_steps must be >= 1, got {update_every_n_steps}")
        super().__init__(device=device, use_buffers=False, multi_avg_fn=_ema_multi_avg_fn(decay, warmup))
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0

    def _new_average(self, pl_module: pl.LightningModule) -> _AveragedModel:
        return _AveragedModel(pl_module, device=self._device or pl_module.device, use_buffers=False, **self._kwargs)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._average_model = self._new_average(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._average_model is not None and int(self._average_model.n_averaged) == 0:
            # ``setup`` copied the module before its own ``setup`` applied the data statistics.
            self._average_model = self._new_average(pl_module)
        if self._average_model is not None:
            names = [name for name, _ in self._average_model.module.named_parameters()]
            if names != [name for name, _ in pl_module.named_parameters()]:
                raise RuntimeError("EMA: the averaged copy's parameters differ from the model's")

    def _pairs(self, pl_module: pl.LightningModule) -> list[tuple[torch.Tensor, torch.Tensor]]:
        averaged = dict(self._average_model.module.named_parameters())
        return [(averaged[name], param) for name, param in pl_module.named_parameters() if name in averaged]

    def _swap_models(self, pl_module: pl.LightningModule) -> None:
        for average, current in self._pairs(pl_module):
            tmp = average.data.clone()
            average.data.copy_(current.data)
            current.data.copy_(tmp)

    def _copy_average_to_current(self, pl_module: pl.LightningModule) -> None:
        for average, current in self._pairs(pl_module):
            current.data.copy_(average.data)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """``state_dict``: the model with averaged parameters; ``current_model_state``: the raw one."""
        if self._average_model is None or int(self._average_model.n_averaged) == 0:
            return
        averaged = {name: p.detach().clone() for name, p in self._average_model.module.named_parameters()}
        current = checkpoint["state_dict"]
        checkpoint["current_model_state"] = current
        checkpoint["state_dict"] = {name: averaged.get(name, value) for name, value in current.items()}
        checkpoint["averaging_state"] = {"n_averaged": self._average_model.n_averaged.detach().clone()}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        # validate/test/predict load the averaged weights as the model's state_dict: nothing to restore
        if self._average_model is None:
            return
        if "current_model_state" in checkpoint and "averaging_state" in checkpoint:
            module = self._average_model.module
            own = dict(module.named_parameters())
            with torch.no_grad():
                for name, value in checkpoint["state_dict"].items():
                    if name in own:
                        own[name].copy_(value)
            self._average_model.n_averaged.copy_(checkpoint["averaging_state"]["n_averaged"])
            pl_module.load_state_dict(checkpoint["current_model_state"])
        else:  # a checkpoint without EMA: start the average from its weights
            own = dict(self._average_model.module.named_parameters())
            with torch.no_grad():
                for name, value in checkpoint["state_dict"].items():
                    if name in own:
                        own[name].copy_(value)


@rank_zero_only
def log_figure(trainer: pl.Trainer, key: str, fig: Any) -> None:
    """Send a matplotlib figure to every logger that takes images and save it as PNG.

    The PNG goes to ``{trainer.default_root_dir}/plots/{key with / -> _}.png``.
    """
    image = figure_to_array(fig)
    for logger in trainer.loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[image], step=trainer.global_step)
    save_figure(fig, Path(trainer.default_root_dir) / "plots" / f"{key.replace('/', '_')}.png")


class ParityPlot(Callback):
    """Parity plots (predicted against true energy per atom and force components) of the
    validation set every ``every_n_epochs`` epochs and at the last epoch, and of the test set.

    Uses what the module's ``validation_step``/``test_step`` return: a dict of ``[M, 2]``
    tensors (predicted, true) per quantity, as ``PotentialModule`` does; other modules are
    skipped. At most ``max_points`` points per quantity are drawn (a seeded subsample).
    """

    def __init__(self, every_n_epochs: int = 5, max_points: int = 4000) -> None:
        self.every_n_epochs = every_n_epochs
        self.max_points = max_points
        self._pairs: dict[str, list[np.ndarray]] = {}

    def _active(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        return last or (epoch + 1) % self.every_n_epochs == 0

    def _collect(self, outputs: Any) -> None:
        if isinstance(outputs, dict):
            for name, value in outputs.items():
                if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[1] == 2:
                    self._pairs.setdefault(name, []).append(value.detach().cpu().double().numpy())

    def _flush(self, trainer: pl.Trainer, stage: str) -> None:
        if self._pairs and trainer.is_global_zero:
            rng = np.random.default_rng(0)
            pairs = {}
            for name, chunks in self._pairs.items():
                values = np.concatenate(chunks)
                if len(values) > self.max_points:
                    values = values[rng.choice(len(values), self.max_points, replace=False)]
                pairs[name] = values
            fig = parity_figure(pairs, title=f"{stage}, epoch {trainer.current_epoch}")
            log_figure(trainer, f"{stage}/parity", fig)
        self._pairs = {}

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pairs = {}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if self._active(trainer):
            self._collect(outputs)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer):
            self._flush(trainer, "val")

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pairs = {}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(outputs)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer, "test")


class LossCurve(Callback):
    """Loss curves (``train/loss`` and ``val/loss`` against epoch) logged as an image every
    ``every_n_epochs`` epochs and when fitting ends. The history is kept in checkpoints, so a
    resumed run draws the whole curve."""

    def __init__(self, every_n_epochs: int = 5, series: list[str] | None = None) -> None:
        self.every_n_epochs = every_n_epochs
        self.series = list(series or ["train/loss", "val/loss"])
        self.history: dict[str, list[tuple[int, float]]] = {name: [] for name in self.series}

    def _record(self, trainer: pl.Trainer, names: list[str]) -> None:
        for name in names:
            value = trainer.callback_metrics.get(name)
            if value is not None:
                self.history.setdefault(name, []).append((int(trainer.current_epoch), float(value)))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, [name for name in self.series if not name.startswith("train")])

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, [name for name in self.series if name.startswith("train")])
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._plot(trainer)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._plot(trainer)

    def _plot(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero and any(self.history.values()):
            log_figure(trainer, "loss_curve", loss_curve_figure(self.history))

    def state_dict(self) -> dict[str, Any]:
        return {"history": {name: [list(point) for point in points] for name, points in self.history.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {name: [tuple(point) for point in points] for name, points in state_dict["history"].items()}


class LearningRateLogger(LearningRateMonitor):
    """Lightning's ``LearningRateMonitor`` that stays quiet in a run without a logger
    (``trainer.logger: false``) instead of refusing to start."""

    def on_train_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_start(trainer, *args, **kwargs)

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_batch_start(trainer, *args, **kwargs)

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.loggers:
            super().on_train_epoch_start(trainer, *args, **kwargs)


class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is brought up to date at the end of every epoch.

    Lightning writes ``last.ckpt`` only in a step where a monitored (top-k) checkpoint is also
    written; after an epoch that does not improve the monitored metric, ``last.ckpt`` would
    still hold the best epoch, and ``--ckpt_path last`` would resume a killed run from there.
    This subclass writes it whenever it is older than the current step, so a killed run loses at
    most the epoch in progress. Every argument is ``ModelCheckpoint``'s.

    A folder holds the checkpoints of one run (``equimol fit`` refuses to start a new run in a
    folder that holds checkpoints): a resumed run replaces the folder's ``last.ckpt`` instead of
    writing ``last-v1.ckpt`` beside it, and keeps one best checkpoint, even when the folder was
    moved or renamed since (the paths recorded in the checkpoint are read as paths in this
    folder).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            def moved(path: Any) -> Any:
                if isinstance(path, str) and path and Path(path).parent == Path(old):
                    return str(Path(self.dirpath) / Path(path).name)
                return path

            state_dict = {key: moved(value) for key, value in state_dict.items()}
            state_dict["best_k_models"] = {moved(path): score for path, score in
                                           (state_dict.get("best_k_models") or {}).items()}
            state_dict["dirpath"] = self.dirpath
        super().load_state_dict(state_dict)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self.save_last and trainer.ckpt_path is not None and not self.last_model_path:
            own = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
            if self.file_exists(own, trainer):
                self.last_model_path = own
        super()._save_last_checkpoint(trainer, monitor_candidates)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._bring_last_up_to_date(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._bring_last_up_to_date(trainer)

    def _bring_last_up_to_date(self, trainer: pl.Trainer) -> None:
        # _should_skip_saving_checkpoint is also true when a checkpoint (and with it
        # last.ckpt) was already written at this step.
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))



class EpochTimer(Callback):
    """Wall time of every training epoch, one JSON line per epoch in ``out_file``.

    Each line holds ``epoch``, ``n_steps``, ``epoch_wall_s`` (training and the validation run
    inside the epoch), ``val_wall_s``, ``train_wall_s`` (the difference: optimisation steps
    and data loading), ``step_sum_s`` and ``step_median_s`` (time from the start to the end
    of each training batch: forward, backward, optimiser step) and ``torch_threads``.
    The first epoch includes any compilation.

    Args:
        out_file: JSON-lines file; default ``epoch_times.jsonl`` in the trainer's
            ``default_root_dir``. Lines are appended, so a resumed run continues the file.

    Config::

        trainer:
          callbacks:
            - class_path: equimol.train.callbacks.EpochTimer
    """

    def __init__(self, out_file: str | None = None) -> None:
        super().__init__()
        self.out_file = out_file
        self._epoch_start: float | None = None
        self._batch_start: float | None = None
        self._val_start: float | None = None
        self._val_s = 0.0
        self._steps: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start, self._val_s, self._steps = time.perf_counter(), 0.0, []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._batch_start is not None:
            self._steps.append(time.perf_counter() - self._batch_start)
            self._batch_start = None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._val_start is not None and self._epoch_start is not None:
            self._val_s += time.perf_counter() - self._val_start
        self._val_start = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._epoch_start is None or not trainer.is_global_zero:
            return
        wall = time.perf_counter() - self._epoch_start
        record = {
            "epoch": int(trainer.current_epoch),
            "n_steps": len(self._steps),
            "epoch_wall_s": wall,
            "val_wall_s": self._val_s,
            "train_wall_s": wall - self._val_s,
            "step_sum_s": sum(self._steps),
            "step_median_s": statistics.median(self._steps) if self._steps else None,
            "torch_threads": torch.get_num_threads(),
        }
        path = Path(self.out_file or Path(trainer.default_root_dir) / "epoch_times.jsonl")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self._epoch_start = None
