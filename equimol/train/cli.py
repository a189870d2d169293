"""``equimol fit | validate | test | predict``: Lightning's CLI over equimol's modules.

A config names the LightningModule and the LightningDataModule by ``class_path`` (any
importable class: ``equimol.train.PotentialModule`` with any potential inside it, a user's
own module, another equimol module such as the VAE), the Trainer's settings, and the
callbacks equimol adds to every run:

=================  =====================================================================
key                callback
=================  =====================================================================
``checkpoint``     :class:`equimol.train.callbacks.BestAndLastCheckpoint`: best (by ``val/loss``) and last in
                   ``{trainer.default_root_dir}/checkpoints``
``ema``            :class:`equimol.train.callbacks.EMA`, moving average of the weights
``early_stopping`` ``EarlyStopping`` on ``val/loss``
``lr_monitor``     ``LearningRateMonitor`` (skipped without a logger)
``parity_plot``    :class:`equimol.train.callbacks.ParityPlot`
``loss_curve``     :class:`equimol.train.callbacks.LossCurve`
=================  =====================================================================

jsonargparse validates every key and type: a misspelt key or a wrong type stops the run
with a message that names it. Command-line flags override any key
(``--trainer.max_epochs 5``, ``--data.init_args.batch_size 8``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import Logger, WandbLogger

from equimol.train.callbacks import EMA, BestAndLastCheckpoint, LearningRateLogger, LossCurve, ParityPlot
from equimol.train.module import check_cutoffs

__all__ = ["EquimolCLI", "main", "fit_main", "validate_main", "test_main", "predict_main", "finish_wandb", "DEFAULT_ROOT_DIR"]

DEFAULT_ROOT_DIR = "runs/equimol"


def _checkpoint_dir(root: str | None) -> str:
    return f"{root or '.'}/checkpoints"


class LogConfigCallback(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run folder and logs it to the
    experiment tracker (``wandb``'s run config), so every run records how it was made."""

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False, format="yaml")
        for logger in trainer.loggers:
            if isinstance(logger, Logger):
                logger.log_hyperparams({"config": yaml.safe_load(text)})
            if isinstance(logger, WandbLogger):
                # An offline run keeps its config only inside the .wandb file until it is
                # synced; a plain copy beside it can be read without wandb.
                (Path(logger.experiment.dir) / "config.yaml").write_text(text)


class EquimolCLI(LightningCLI):
    """LightningCLI with equimol's defaults: no inference mode (forces need gradients in
    validation), offline W&B, checkpoints, EMA, early stopping, learning-rate monitor, plots."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        trainer_defaults = {
            "inference_mode": False,
            "default_root_dir": DEFAULT_ROOT_DIR,
            "logger": {
                "class_path": "pytorch_lightning.loggers.WandbLogger",
                "init_args": {"offline": True, "project": "equimol"},
            },
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}))
        super().__init__(
            model_class=kwargs.pop("model_class", LightningModule),
            datamodule_class=kwargs.pop("datamodule_class", LightningDataModule),
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LogConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            seed_everything_default=0,
            parser_kwargs={"parser_mode": "yaml"},
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(BestAndLastCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_top_k": 1,
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-{epoch:03d}",
        })
        parser.link_arguments("trainer.default_root_dir", "checkpoint.dirpath", compute_fn=_checkpoint_dir)
        parser.add_lightning_class_args(EMA, "ema")
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults({
            "early_stopping.monitor": "val/loss",
            "early_stopping.patience": 50,
            # decide after validation: a run resumed from an end-of-epoch checkpoint re-enters
            # the end of that epoch without validating again
            "early_stopping.check_on_train_epoch_end": False,
        })
        parser.add_lightning_class_args(LearningRateLogger, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "epoch"})
        parser.add_lightning_class_args(ParityPlot, "parity_plot")
        parser.add_lightning_class_args(LossCurve, "loss_curve")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _check_config_cutoffs(config)
        _default_logger_dir(config)


def _get(namespace: Any, dotted: str) -> Any:
    value = namespace
    for key in dotted.split("."):
        if value is None:
            return None
        value = value.get(key) if hasattr(value, "get") else getattr(value, key, None)
    return value


def _check_config_cutoffs(config: Any) -> None:
    """Fail before anything is built if ``model.init_args.model.init_args.cutoff`` and
    ``data.init_args.cutoff`` disagree."""
    model_cutoff = _get(config, "model.init_args.model.init_args.cutoff")
    data_cutoff = _get(config, "data.init_args.cutoff")
    check_cutoffs(model_cutoff, data_cutoff)


def _default_logger_dir(config: Any) -> None:
    """A W&B logger without ``save_dir`` writes into the run folder (``trainer.default_root_dir``)."""
    logger = _get(config, "trainer.logger")
    loggers = logger if isinstance(logger, list) else [logger]
    root = _get(config, "trainer.default_root_dir")
    for entry in loggers:
        if not isinstance(entry, Namespace):  # an object or a bool: leave it alone
            continue
        class_path = _get(entry, "class_path") or ""
        if class_path.endswith("WandbLogger") and _get(entry, "init_args.save_dir") in (None, "."):
            entry.init_args.save_dir = root or "."


def main(argv: list[str] | None = None) -> int:
    """Run ``equimol fit|validate|test|predict``; ``argv`` starts with the subcommand
    (default: the command line). Returns the exit code 0; errors raise ``SystemExit``."""
    if argv is not None and list(argv) == sys.argv[1:]:
        argv = None  # the same as the command line: let the CLI read it itself
    try:
        EquimolCLI(args=argv)
    finally:
        finish_wandb()
    return 0


def finish_wandb() -> None:
    """Close the W&B run of this process, if any, so its files (``files/config.yaml``...)
    are complete on disk and a next run in the same process starts a new one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def fit_main(argv: list[str]) -> int:
    """``equimol fit ARGS``: train (``--ckpt_path last`` resumes)."""
    return main(["fit", *argv])


def validate_main(argv: list[str]) -> int:
    """``equimol validate ARGS``: metrics on the validation split."""
    return main(["validate", *argv])


def test_main(argv: list[str]) -> int:
    """``equimol test ARGS``: metrics on the test split."""
    return main(["test", *argv])


def predict_main(argv: list[str]) -> int:
    """``equimol predict ARGS``: predictions on the test split."""
    return main(["predict", *argv])


if __name__ == "__main__":  # pragma: no cover
    main()
