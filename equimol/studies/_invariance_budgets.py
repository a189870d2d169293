"""Training budgets of the invariance study beyond a fixed number of steps: Lightning callbacks.

- :class:`BestWeights` keeps the weights of the epoch with the lowest validation loss and puts
  them back when fitting ends (the ``converged`` budget, with Lightning's ``EarlyStopping``);
- :class:`TimeBudget` stops training once a wall-clock budget is spent and, optionally, anneals
  the learning rate on a cosine over that time (the ``equal_time`` budget).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

__all__ = ["BestWeights", "TimeBudget"]


class BestWeights(Callback):
    """Remember the weights with the lowest ``monitor`` value; restore them at the end of fitting.

    Attributes:
        history: the monitored value after every validation, in order.
        best: the lowest of them (``inf`` before the first validation).
        best_epoch: the epoch (0-based) that reached it (-1 before).
    """

    def __init__(self, monitor: str = "val/loss") -> None:
        self.monitor = monitor
        self.history: list[float] = []
        self.best = math.inf
        self.best_epoch = -1
        self._state: dict[str, torch.Tensor] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            logged = sorted(trainer.callback_metrics)
            raise KeyError(f"BestWeights: the module logged no {self.monitor!r}; logged: {logged}")
        value = float(value)
        self.history.append(value)
        if value < self.best:  # NaN never improves
            self.best, self.best_epoch = value, int(trainer.current_epoch)
            self._state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._state is not None:
            pl_module.load_state_dict(self._state)


class TimeBudget(Callback):
    """Stop after ``seconds`` of wall-clock time, counted from :meth:`start` (or from the start
    of training when it was not called), checked after every optimizer step.

    With ``cosine=True`` the learning rate of every parameter group follows
    ``lr_min + (lr - lr_min) (1 + cos(pi t / seconds)) / 2`` of the elapsed time ``t``, the
    cosine schedule of the ``steps`` budget with time in place of steps.

    Attributes:
        elapsed: seconds from the start to the end of training (set when training ends).
        steps: optimizer steps made.
    """

    def __init__(self, seconds: float, *, cosine: bool = False, lr: float = 0.0, lr_min: float = 0.0) -> None:
        if not seconds > 0:
            raise ValueError(f"TimeBudget: seconds must be positive, got {seconds!r}")
        self.seconds = float(seconds)
        self.cosine = cosine
        self.lr, self.lr_min = float(lr), float(lr_min)
        self.elapsed = 0.0
        self.steps = 0
        self._start: float | None = None

    def start(self) -> None:
        """Start the clock now (before ``Trainer.fit``, so that its set-up counts too)."""
        self._start = time.perf_counter()

    def _now(self) -> float:
        return time.perf_counter() - (self._start if self._start is not None else time.perf_counter())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None:
            self.start()
        self._set_lr(trainer, 0.0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self.steps += 1
        elapsed = self._now()
        if elapsed >= self.seconds:
            trainer.should_stop = True
        self._set_lr(trainer, elapsed)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.elapsed = self._now()

    def _set_lr(self, trainer: pl.Trainer, elapsed: float) -> None:
        if not self.cosine:
            return
        fraction = min(1.0, elapsed / self.seconds)
        lr = self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + math.cos(math.pi * fraction))
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr
