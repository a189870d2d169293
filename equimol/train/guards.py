"""``NonFiniteGuard``: training stops at the first NaN or infinity, and no checkpoint holds one.

A NaN spreads: one structure whose loss overflows (a wrong label, two atoms on top of each
other) makes the gradient NaN, the optimizer step copies it into every weight it touches, and
from then on every prediction, metric and checkpoint is NaN while the run carries on and exits
0. The guard, added to every ``equimol fit`` run (config key ``non_finite``), stops it instead:

=====================================  ==========================================================
what is not finite                     when it is caught
=====================================  ==========================================================
the training loss of a batch           before its backward pass (no step is taken)
a gradient                             before the optimizer step (names the parameters)
``val/loss``                           after validation, before any checkpoint of that epoch
a weight about to be saved             while the checkpoint is assembled, before it is written
=====================================  ==========================================================

Each stop is a :class:`NonFiniteError` (a ``ValueError``: the ``equimol`` command reports it in
one line and exits with code 2) naming the epoch, the optimizer step and the structures of the
batch, as ``frame K of FILE``: the frames come from the data module
(:meth:`~equimol.train.datamodule.AtomsDataModule.batch_frames`), and those whose own
prediction, label or squared error is not finite are named first. Under DDP every process
takes the same decision, so they stop together.

With a ``16-mixed`` precision the gradient scaler skips steps with infinite gradients by design;
the gradient check is then left to it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from equimol import _keys as K

__all__ = ["NonFiniteError", "NonFiniteGuard", "non_finite_structures", "describe_frames"]


class NonFiniteError(ValueError):
    """A loss, gradient, weight or prediction that is NaN or infinite."""


def _finite(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def _value_text(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        value = value.detach().float()
        value = value.reshape(-1)[~torch.isfinite(value.reshape(-1))][:1]
        value = value.item() if value.numel() else float("nan")
    return str(float(value))


def non_finite_structures(pairs: Mapping[str, torch.Tensor], batch: Any) -> list[int]:
    """Indices within ``batch`` of the structures whose prediction, label or squared error is
    not finite.

    Args:
        pairs: ``{quantity: [M, 2] tensor}`` of predicted and true values, as
            :func:`equimol.train.module.parity_pairs` returns them: ``energy_per_atom`` one row
            per structure, ``forces`` three rows per atom.
        batch: the PyG batch the pairs come from (``batch`` and ``num_graphs``).
    """
    n = int(getattr(batch, "num_graphs", 1) or 1)
    bad = torch.zeros(n, dtype=torch.bool)
    for name, values in pairs.items():
        if not (isinstance(values, torch.Tensor) and values.ndim == 2 and values.shape[1] == 2):
            continue
        values = values.detach().cpu()
        # the squared error in the values' own dtype: what an MSE loss would compute
        rows = ~(torch.isfinite(values).all(dim=1) & torch.isfinite((values[:, 0] - values[:, 1]).square()))
        if not bool(rows.any()):
            continue
        if len(values) == n:  # one row per structure
            bad |= rows
        else:  # one row per component of each atom
            atoms = getattr(batch, K.BATCH, None)
            n_atoms = int(atoms.numel()) if atoms is not None else 0
            if n_atoms and len(values) % n_atoms == 0:
                per_atom = rows.reshape(n_atoms, -1).any(dim=1)
                bad[atoms.cpu()[per_atom].unique()] = True
    return bad.nonzero().reshape(-1).tolist()


def describe_frames(frames: Sequence[tuple[str, int]], limit: int = 12) -> str:
    """``frames 3, 7 of a.xyz`` (one clause per source), at most ``limit`` numbers in all."""
    by_source: dict[str, list[int]] = {}
    for source, frame in frames:
        by_source.setdefault(str(source), []).append(int(frame))
    parts, left = [], limit
    for source, numbers in by_source.items():
        shown = ", ".join(str(k) for k in numbers[:max(left, 1)])
        more = f" and {len(numbers) - max(left, 1)} more" if len(numbers) > max(left, 1) else ""
        parts.append(f"{'frame' if len(numbers) == 1 else 'frames'} {shown}{more} of {source}")
        left -= len(numbers)
    return "; ".join(parts)


class NonFiniteGuard(Callback):
    """Stop training at the first non-finite loss or gradient or ``val/loss``; never save a
    checkpoint with non-finite weights.

    Args:
        gradients: check the gradients before every optimizer step (one pass over them).
        monitor: the validation loss to check after each validation run.
    """

    def __init__(self, gradients: bool = True, monitor: str = "val/loss") -> None:
        self.gradients = gradients
        self.monitor = monitor
        self._batch: Any = None
        self._batch_idx: int | None = None
        self._val_bad: list[tuple[int, list[int], Any]] = []

    # ------------------------------------------------------------------------- helpers
    @staticmethod
    def _any_rank(trainer: pl.Trainer, bad: bool) -> bool:
        """True when ``bad`` on any process (every process must stop, or the others wait forever)."""
        if int(getattr(trainer, "world_size", 1) or 1) > 1:
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    @staticmethod
    def _where(trainer: pl.Trainer) -> str:
        return f"epoch {trainer.current_epoch}, step {trainer.global_step}"

    @staticmethod
    def _frames(trainer: pl.Trainer, stage: str, batch_idx: int | None) -> list[tuple[str, int]] | None:
        datamodule = getattr(trainer, "datamodule", None)
        describe = getattr(datamodule, "batch_frames", None)
        if describe is None or batch_idx is None:
            return None
        try:
            return describe(stage, batch_idx)
        except Exception:  # naming the frames must never hide the error itself
            return None

    def _structures(self, trainer: pl.Trainer, stage: str, batch_idx: int | None, batch: Any,
                    suspects: Iterable[int]) -> str:
        """``not finite for frame 5 of a.xyz; the batch holds frames 1, 5, 9 of a.xyz``."""
        frames = self._frames(trainer, stage, batch_idx)
        suspects = sorted(set(suspects))
        n = int(getattr(batch, "num_graphs", 0) or 0)
        if frames is None or (n and len(frames) != n):
            where = f"batch {batch_idx} of the {'epoch' if stage == 'train' else 'validation set'}"
            if suspects:
                return f"not finite for structures {', '.join(map(str, suspects))} (0-based) of {where}"
            return where + (f" ({n} structures)" if n else "")
        named = [frames[k] for k in suspects if k < len(frames)]
        if named and len(named) == len(frames) > 1:
            return f"not finite for every structure of the batch ({describe_frames(frames)})"
        text = f"the batch holds {describe_frames(frames)}"
        return f"not finite for {describe_frames(named)}; {text}" if named else text

    @staticmethod
    def _prediction_suspects(pl_module: pl.LightningModule, batch: Any) -> list[int]:
        """The structures of ``batch`` whose prediction, label or squared error is not finite,
        found by running a potential's model on the batch again (an error path: the cost does
        not matter); empty for other modules or when that fails."""
        from equimol.train.module import PotentialModule, parity_pairs

        if not isinstance(pl_module, PotentialModule) or batch is None:
            return []
        try:
            with torch.enable_grad():
                prediction = pl_module(batch, compute_forces=getattr(batch, K.FORCES, None) is not None,
                                       compute_stress=False)
            return non_finite_structures(parity_pairs(prediction, batch), batch)
        except Exception:
            return []

    # ------------------------------------------------------------------------ training
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if trainer.sanity_checking or not self._any_rank(trainer, not _finite(loss)):
            return
        if _finite(loss):  # another process had the non-finite loss
            raise NonFiniteError(f"non-finite training loss on another process at {self._where(trainer)}")
        suspects = self._prediction_suspects(pl_module, self._batch)
        raise NonFiniteError(
            f"non-finite training loss ({_value_text(loss)}) at {self._where(trainer)}: "
            f"{self._structures(trainer, 'train', self._batch_idx, self._batch, suspects)}; "
            "training stopped before this step, so no checkpoint holds non-finite weights "
            "(check these structures' labels and geometry, or lower the learning rate)"
        )

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # a module that optimizes by hand: its loss is seen here, after its own steps
        if getattr(pl_module, "automatic_optimization", True):
            return  # checked before the backward pass
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, torch.Tensor) and self._any_rank(trainer, not _finite(loss)):
            raise NonFiniteError(
                f"non-finite training loss ({_value_text(loss)}) at {self._where(trainer)}: "
                f"{self._structures(trainer, 'train', batch_idx, batch, [])}"
            )

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        if not self.gradients or getattr(getattr(trainer, "precision_plugin", None), "scaler", None) is not None:
            return
        named = [(name, p.grad) for name, p in pl_module.named_parameters() if p.grad is not None]
        if not named:
            return
        grads = [grad.detach() for _, grad in named]
        try:  # the largest |g| of each tensor in one fused call: NaN or inf exactly when one is there
            flags = torch.isfinite(torch.stack(torch._foreach_norm(grads, float("inf")))).cpu()
        except (AttributeError, RuntimeError, TypeError):
            flags = torch.stack([torch.isfinite(grad).all() for grad in grads]).cpu()
        if not self._any_rank(trainer, not bool(flags.all())):
            return
        bad = [name for (name, _), ok in zip(named, flags.tolist(), strict=True) if not ok]
        listed = ", ".join(bad[:6]) + (f" and {len(bad) - 6} more" if len(bad) > 6 else "")
        suspects = self._prediction_suspects(pl_module, self._batch) if self._batch is not None else []
        structures = (self._structures(trainer, "train", self._batch_idx, self._batch, suspects)
                      if self._batch is not None else "")
        raise NonFiniteError(
            f"non-finite gradient at {self._where(trainer)} in {listed or 'another process'} "
            f"({len(bad)} of {len(named)} tensors){': ' + structures if structures else ''}; "
            "training stopped before this step, so no checkpoint holds non-finite weights"
        )

    # ---------------------------------------------------------------------- validation
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_bad = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, Mapping):
            suspects = non_finite_structures(outputs, batch)
            if suspects:
                self._val_bad.append((batch_idx, suspects, batch))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loss = trainer.callback_metrics.get(self.monitor)
        bad = loss is not None and not _finite(loss)
        if not self._any_rank(trainer, bad):
            return
        where = f"{self._where(trainer)}{' (the sanity check before training)' if trainer.sanity_checking else ''}"
        details = [self._structures(trainer, "val", batch_idx, batch, suspects)
                   for batch_idx, suspects, batch in self._val_bad[:3]]
        details = [text.split("; the batch holds")[0] for text in details]
        fitting = getattr(getattr(trainer, "state", None), "fn", "fit") == "fit"
        raise NonFiniteError(
            f"{self.monitor} is not finite ({_value_text(loss) if loss is not None else 'on another process'}) "
            f"at {where}: " + ("; ".join(details) if details else "no single structure stands out")
            + ("; the run is stopped before any checkpoint of this state is written" if fitting else "")
        )

    # --------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        bad = []
        for key in ("state_dict", "current_model_state"):
            for name, value in (checkpoint.get(key) or {}).items():
                if isinstance(value, torch.Tensor) and value.is_floating_point() and not _finite(value):
                    bad.append(name)
        if bad:
            names = ", ".join(sorted(set(bad))[:6]) + (f" and {len(set(bad)) - 6} more" if len(set(bad)) > 6 else "")
            raise NonFiniteError(
                f"refusing to save a checkpoint at {self._where(trainer)}: non-finite weights in {names}"
            )
