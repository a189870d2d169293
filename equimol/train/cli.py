"""``equimol fit | validate | test``: Lightning's CLI over equimol's modules.

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
``non_finite``     :class:`equimol.train.guards.NonFiniteGuard`: stop at the first NaN or infinite
                   loss or gradient (an error naming epoch, step and frames); never save such weights
``early_stopping`` ``EarlyStopping`` on ``val/loss``
``lr_monitor``     ``LearningRateMonitor`` (skipped without a logger)
``parity_plot``    :class:`equimol.train.callbacks.ParityPlot`
``loss_curve``     :class:`equimol.train.callbacks.LossCurve`
=================  =====================================================================

jsonargparse validates every key and type: a misspelt key or a wrong type stops the run
with a message that names it.
The cutoff is written once, in the model (``model.init_args.model.init_args.cutoff``): a
data section that leaves ``cutoff`` out builds its graphs with the model's, and a cutoff
given in both places must be the same number of Å. Command-line flags override any key
(``--trainer.max_epochs 5``, ``--data.init_args.batch_size 8``); they are never abbreviated.
``equimol fit --help`` lists the options of the model and the data module (those of the
classes a ``--config`` names, or of :class:`~equimol.train.PotentialModule` and
:class:`~equimol.train.datamodule.AtomsDataModule`) and one line per other group;
``--help_all`` prints LightningCLI's complete listing.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace
from pytorch_lightning import LightningDataModule, LightningModule, Trainer
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import Logger, WandbLogger

from equimol import _cli_errors as errors
from equimol.train.callbacks import EMA, BestAndLastCheckpoint, LearningRateLogger, LossCurve, ParityPlot
from equimol.train.guards import NonFiniteGuard
from equimol.train.module import check_cutoffs

__all__ = ["EquimolCLI", "main", "fit_main", "validate_main", "test_main", "finish_wandb",
           "short_help", "parse_config", "DEFAULT_ROOT_DIR"]

DEFAULT_ROOT_DIR = "runs/equimol"


def _checkpoint_dir(root: str | None) -> str:
    return f"{root or '.'}/checkpoints"


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class LogConfigCallback(SaveConfigCallback):
    """Saves the resolved config as ``config.yaml`` in the run folder and logs it to the
    experiment tracker (``wandb``'s run config), so every run records how it was made.

    Only ``fit`` writes ``config.yaml``, and only once the run is set up (when training
    starts: the data, the model, a resumed checkpoint and the sanity check have all passed),
    in one piece: a run that fails before never replaces the folder's config.
    ``validate``, ``test`` and ``predict`` leave the training run's files as they are.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.already_saved or stage == "fit":
            return  # fit: written in on_train_start
        if trainer.is_global_zero:
            self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # broadcast: every process takes part
        if trainer.is_global_zero:
            if self.save_to_log_dir and log_dir is not None:
                text = self.parser.dump(self.config, skip_none=False)
                _write_atomically(Path(log_dir) / self.config_filename, text)
            self.save_config(trainer, pl_module, "fit")
        self.already_saved = trainer.strategy.broadcast(True)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        text = self.parser.dump(self.config, skip_none=False, format="yaml")
        for logger in trainer.loggers:
            if isinstance(logger, Logger):
                logger.log_hyperparams({"config": yaml.safe_load(text)})
            if isinstance(logger, WandbLogger):
                # An offline run keeps its config only inside the .wandb file until it is
                # synced; a plain copy beside it can be read without wandb.
                (Path(logger.experiment.dir) / "config.yaml").write_text(text)

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Record the W&B run in the checkpoint, for a run resumed from it to continue that run."""
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and logger.version is not None:
                checkpoint[WANDB_RUN_KEY] = {"id": str(logger.version)}
                return


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
        # every parser (the main one and each subcommand's) rejects abbreviated options and
        # raises its errors for the equimol command to report in one line
        common = {"parser_mode": "yaml", **errors.PARSER_KWARGS, **kwargs.pop("parser_kwargs", {})}
        parser_kwargs = {"prog": "equimol", **common, **{name: dict(common) for name in self.subcommands()}}
        super().__init__(
            model_class=kwargs.pop("model_class", LightningModule),
            datamodule_class=kwargs.pop("datamodule_class", LightningDataModule),
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LogConfigCallback,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=trainer_defaults,
            seed_everything_default=0,
            parser_kwargs=parser_kwargs,
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
        parser.add_lightning_class_args(NonFiniteGuard, "non_finite")
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

    def _parse_ckpt_path(self) -> None:
        # Lightning reads the hyperparameters of a checkpoint given by path into the config
        # (importing the classes they name): check the checkpoint and the run folder first
        subcommand = self.config.get("subcommand") if hasattr(self.config, "get") else None
        resolved = _check_checkpoint_path(subcommand, self.config[subcommand]) if subcommand else None
        super()._parse_ckpt_path()
        if resolved is not None:  # the run reads exactly the file that was verified
            self.config[subcommand]["ckpt_path"] = resolved

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        _fill_data_cutoff(config)
        _check_config_cutoffs(config)
        _default_logger_dir(config)
        if self.subcommand == "fit":
            _resume_wandb(config)


def _get(namespace: Any, dotted: str) -> Any:
    value = namespace
    for key in dotted.split("."):
        if value is None:
            return None
        value = value.get(key) if hasattr(value, "get") else getattr(value, key, None)
    return value


#: Where a config gives the cutoff (Å) of the model and of the data module's graphs.
MODEL_CUTOFF_KEY = "model.init_args.model.init_args.cutoff"
DATA_CUTOFF_KEY = "data.init_args.cutoff"


def _fill_data_cutoff(config: Any) -> None:
    """The cutoff is written once, in the model: a data module whose ``cutoff`` the config
    leaves out (None) builds its graphs with the model's (``model.init_args.model.init_args.cutoff``).

    Only a data module that takes a ``cutoff`` argument is given one; a model without a
    cutoff leaves it None (``AtomsDataModule`` then names ``data.cutoff`` in its error).
    A cutoff given in both places is checked by :func:`_check_config_cutoffs`.
    """
    init_args = _get(config, "data.init_args")
    model_cutoff = _get(config, MODEL_CUTOFF_KEY)
    if not isinstance(init_args, Namespace) or "cutoff" not in init_args or model_cutoff is None:
        return
    if init_args["cutoff"] is None:
        init_args["cutoff"] = float(model_cutoff)


def _check_config_cutoffs(config: Any) -> None:
    """Fail before anything is built if ``model.init_args.model.init_args.cutoff`` and
    ``data.init_args.cutoff`` disagree."""
    model_cutoff = _get(config, MODEL_CUTOFF_KEY)
    data_cutoff = _get(config, DATA_CUTOFF_KEY)
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


_SPECIAL_CKPT = ("best", "hpc")


def _class_paths(value: Any) -> list[str]:
    """The ``class_path`` values inside a parsed config (the classes the user named)."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "class_path" and isinstance(item, str):
                found.append(item)
            else:
                found += _class_paths(item)
    elif isinstance(value, list):
        for item in value:
            found += _class_paths(item)
    return found


def _check_checkpoint_path(subcommand: str, config: Any) -> str | None:
    """Check the checkpoint a run reads, and the run folder ``fit`` writes, before anything
    reads the checkpoint or is built; returns the file ``--ckpt_path last`` stands for.

    - ``--weights_only false`` is refused: checkpoints are read as data only.
    - ``--ckpt_path last`` is resolved (the newest ``last*.ckpt`` of the run's checkpoint folder,
      Lightning's rule) and, like any path given, verified with
      :func:`equimol.train.checkpoints.load_checkpoint` (intact, plain data, and naming classes
      only from equimol, torch, ``EQUIMOL_TRUSTED_MODULES`` and the classes the config names).
    - ``fit`` keeps one run per folder: a new run (no ``--ckpt_path``) into a checkpoint folder
      that already holds checkpoints, or a run started from a checkpoint elsewhere into such a
      folder, is refused with a message naming ``--ckpt_path last`` and a fresh
      ``trainer.default_root_dir``.
    """
    from equimol.train.checkpoints import checkpoints_in, last_checkpoint, load_checkpoint

    if "weights_only" in config:
        if config["weights_only"] is False:
            raise ValueError(
                "weights_only=False is not supported: equimol reads checkpoints as data only "
                "(weights_only=True), never as pickled code; leave --weights_only out"
            )
        config["weights_only"] = True
    if "ckpt_path" not in config:
        return None
    root = _get(config, "trainer.default_root_dir")
    folder = Path(_get(config, "checkpoint.dirpath") or _checkpoint_dir(root))
    ckpt = config["ckpt_path"]
    existing = checkpoints_in(folder) if subcommand == "fit" else []
    names = ", ".join(path.name for path in existing)
    fresh = "start a new run in a fresh folder with --trainer.default_root_dir NEW_FOLDER"
    if Path(folder) != Path(_checkpoint_dir(root)):
        fresh += " and --checkpoint.dirpath NEW_FOLDER/checkpoints"
    if ckpt is None:
        if existing:
            raise ValueError(
                f"{folder} already holds the checkpoints of a run ({names}); resume that run with "
                f"--ckpt_path last, or {fresh}"
            )
        return None
    ckpt = str(ckpt)
    if ckpt in _SPECIAL_CKPT or "://" in ckpt:
        return None
    if ckpt == "last":
        path = last_checkpoint(folder)
        if path is None:
            if existing:
                raise ValueError(
                    f"ckpt_path last: {folder} has no last.ckpt, only {names}; resume from one of them "
                    f"with --ckpt_path {folder}/NAME, or {fresh}"
                )
            if subcommand != "fit":
                raise FileNotFoundError(f"ckpt_path last: {folder} holds no last.ckpt")
            return None  # nothing to resume yet: the run starts fresh
    else:
        path = Path(ckpt)
    if existing and path.resolve().parent != folder.resolve():
        raise ValueError(
            f"{folder} already holds the checkpoints of another run ({names}); to start from {path}, "
            f"{fresh}; to resume the run of {folder}, use --ckpt_path last"
        )
    load_checkpoint(path, trusted_modules=_class_paths(config))
    return str(path)


def _run(argv: list[str] | None) -> None:
    """Build and run the CLI on ``argv`` (starting with the subcommand); parse errors raise
    ``argparse.ArgumentError`` with jsonargparse's message."""
    try:
        with warnings.catch_warnings():
            # the arguments are given explicitly (the equimol command removes its own options
            # and renames --help_all): Lightning's warning about sys.argv does not apply
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter")
            EquimolCLI(args=list(sys.argv[1:] if argv is None else argv))
    except argparse.ArgumentError as error:
        # the main parser names the subcommand among what it left over ("unrecognized
        # arguments: fit --trainer.max_epoch 1") and in front of keys ("fit.model")
        subcommand = (argv if argv is not None else sys.argv[1:])[:1]
        message = str(error)
        if subcommand:
            name = re.escape(subcommand[0])
            message = re.sub(rf"^unrecognized arguments: {name} ", "unrecognized arguments: ", message)
            message = re.sub(rf"(?<![\w.]){name}\.", "", message)
        if message != str(error):
            raise argparse.ArgumentError(None, message) from error
        raise
    finally:
        finish_wandb()


def main(argv: list[str] | None = None) -> int:
    """Run ``equimol fit|validate|test`` (or LightningCLI's ``predict``) from Python; ``argv``
    starts with the subcommand (default: the command line). Returns the exit code 0; a parse error is
    printed in one line and raises ``SystemExit(2)``; other errors propagate."""
    try:
        _run(None if argv is None else list(argv))
    except argparse.ArgumentError as error:
        subcommand = (list(argv) if argv is not None else sys.argv[1:])[:1]
        print(errors.error_line(" ".join(["equimol", *subcommand]), error), file=sys.stderr)
        raise SystemExit(errors.EXIT_ERROR) from error
    return 0


#: Where a checkpoint records the W&B run that wrote it: ``{"id": run id}``.
WANDB_RUN_KEY = "equimol_wandb"


def _resume_wandb(config: Any) -> None:
    """``fit --ckpt_path``: a ``WandbLogger`` given no ``id`` (or ``version``) of its own continues
    the W&B run recorded in the checkpoint (Lightning's ``WandbLogger`` opens it with
    ``resume="allow"``), so a resumed training is one W&B run, not two."""
    ckpt = _get(config, "ckpt_path")
    logger = _get(config, "trainer.logger")
    targets = [
        entry for entry in (logger if isinstance(logger, list) else [logger])
        if isinstance(entry, Namespace) and str(_get(entry, "class_path") or "").endswith("WandbLogger")
        and _get(entry, "init_args.id") is None and _get(entry, "init_args.version") is None
    ]
    if ckpt is None or not targets or str(ckpt) in ("best", "hpc", "registry") or "://" in str(ckpt):
        return
    path = Path(str(ckpt))
    if str(ckpt) == "last":
        folder = _get(config, "checkpoint.dirpath") or _checkpoint_dir(_get(config, "trainer.default_root_dir"))
        path = Path(folder) / "last.ckpt"
    try:
        import torch

        recorded = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get(WANDB_RUN_KEY) or {}
    except Exception:  # no such file yet, or not a checkpoint: Lightning reports it, not this
        return
    if recorded.get("id"):
        for entry in targets:
            entry.init_args.id = str(recorded["id"])


def finish_wandb() -> None:
    """Close the W&B run of this process, if any, so its files (``files/config.yaml``...)
    are complete on disk and a next run in the same process starts a new one."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


def _subcommand_main(subcommand: str, argv: Sequence[str]) -> int:
    """``equimol SUBCOMMAND ARGS``: ``--help`` prints :func:`short_help`, ``--help_all``
    LightningCLI's complete help; otherwise run (errors raise, for the ``equimol`` command
    to report)."""
    args = list(argv)
    options = args[: args.index("--")] if "--" in args else args
    if "--help_all" in options:
        _run([subcommand, "--help"])
        return 0
    if "-h" in options or "--help" in options:
        print(short_help(subcommand, args))
        return 0
    _run([subcommand, *args])
    return 0


def fit_main(argv: list[str]) -> int:
    """``equimol fit ARGS``: train (``--ckpt_path last`` resumes)."""
    return _subcommand_main("fit", argv)


def validate_main(argv: list[str]) -> int:
    """``equimol validate ARGS``: metrics on the validation split."""
    return _subcommand_main("validate", argv)


def test_main(argv: list[str]) -> int:
    """``equimol test ARGS``: metrics on the test split."""
    return _subcommand_main("test", argv)


# --------------------------------------------------------------------------------------
# equimol fit --help: the options of the model and the data first, one line per other group

#: The classes whose options ``--help`` lists when no config names others.
DEFAULT_CLASSES = {"model": "equimol.train.PotentialModule", "data": "equimol.train.datamodule.AtomsDataModule"}
_WIDTH = 110  # characters per line
_MAX_LINES = 110  # lines of the whole help
_PURPOSE = {
    "fit": "Train a model",
    "validate": "Metrics on the validation split",
    "test": "Metrics on the test split",
}
_GROUPS = {
    "trainer": "Lightning's Trainer",
    "checkpoint": "best and last checkpoints",
    "ema": "moving average of the weights",
    "non_finite": "stop at the first NaN or infinite loss or gradient",
    "early_stopping": "stop when val/loss stops improving",
    "lr_monitor": "learning rate per epoch",
    "parity_plot": "parity plots",
    "loss_curve": "loss curves",
    "optimizer": "Lightning's optimizer (for a module without its own)",
    "lr_scheduler": "Lightning's scheduler (for a module without its own)",
}
#: The options of a group listed first in its summary line.
_FIRST = {
    "trainer": ["max_epochs", "default_root_dir", "accelerator", "devices", "precision", "logger", "callbacks"],
    "checkpoint": ["monitor", "save_top_k", "filename"],
    "early_stopping": ["monitor", "patience", "min_delta"],
}
#: Flag and help of the subcommands' own options, where Lightning's first sentence says little.
_OWN_OPTIONS = {
    "ckpt_path": ("--ckpt_path PATH", "checkpoint to start from ('last': the run's last.ckpt, resuming it)"),
    "weights_only": ("--weights_only BOOL", "load the checkpoint with torch.load(weights_only=...)"),
    "verbose": ("--verbose BOOL", "print the metrics"),
}
_EVAL_CKPT = ("--ckpt_path PATH", "the checkpoint to use: a path, 'best' or 'last'")
_RUN_OPTIONS = {
    "config": ("--config FILE", "YAML config; repeat to merge several, later ones win"),
    "print_config": ("--print_config", "print the resolved config and exit"),
    "seed_everything": ("--seed_everything SEED", "seed of everything (default 0); true: a random one"),
}


class _ParserBuilt(Exception):
    """Raised by :class:`_ParserOnly` with the CLI once its parsers are built."""


class _ParserOnly(EquimolCLI):
    """Builds the parsers of :class:`EquimolCLI` and stops before parsing anything."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        raise _ParserBuilt(self)


def _subcommand_parser(subcommand: str) -> LightningArgumentParser:
    try:
        _ParserOnly(args=[subcommand])
    except _ParserBuilt as built:
        return built.args[0]._subcommand_parsers[subcommand]
    raise RuntimeError("the CLI did not build its parsers")  # pragma: no cover


def parse_config(subcommand: str, args: Sequence[str]) -> Namespace:
    """The config ``equimol SUBCOMMAND ARGS`` would run (its ``--config`` files and flags, the
    defaults filled in), parsed and validated; nothing is built or run.

    Raises:
        argparse.ArgumentError: what the subcommand itself would report (an unknown key, a
            wrong type, a missing file).
    """
    return _subcommand_parser(subcommand).parse_args(list(args))


def _fit(text: str, width: int = _WIDTH) -> str:
    text = text.rstrip()
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def _sentence(text: str | None) -> str:
    """The first sentence of a help text, on one line."""
    text = " ".join((text or "").split())
    text = re.sub(r":(?:py:)?\w+:`~?([^`]*)`", r"\1", text).replace("``", "")  # reST roles and literals
    if text == argparse.SUPPRESS:
        return ""
    end = text.find(". ")
    return text[: end + 1] if end >= 0 else text


def _show(value: Any) -> str:
    """A value as one would write it in a YAML config, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, Namespace)) and "class_path" in value:
        value = dict(value)
        name = str(value["class_path"]).rsplit(".", 1)[-1]
        init = dict(value.get("init_args") or {})
        return name + ("(" + ", ".join(f"{k}={_show(v)}" for k, v in init.items()) + ")" if init else "")
    if isinstance(value, str):
        return value
    if isinstance(value, type):
        return value.__name__
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return str(value)


def _type_text(cls: type, name: str, action: argparse.Action) -> str:
    try:
        annotation = inspect.signature(cls).parameters[name].annotation
    except (KeyError, TypeError, ValueError):
        annotation = inspect.Parameter.empty
    if isinstance(annotation, str):
        return annotation
    hint = getattr(action, "_typehint", None) or action.type
    if hint is None:
        return ""
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    return errors._tidy(text.replace("typing.", ""))


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    if not module:
        raise ImportError(f"{class_path!r} is not a full class path")
    return getattr(importlib.import_module(module), name)


def _class_rows(cls: type, key: str, values: dict[str, Any]) -> tuple[list[tuple[str, str, str, str]], dict]:
    """``(name, type, value, help)`` per init argument of ``cls``, the value from ``values``
    (a config's ``init_args``) or else the default; and the nested classes a config names."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, key, fail_untyped=False, sub_configs=True)
    rows, nested = [], {}
    for action in parser._actions:
        if not action.option_strings or action.dest.endswith(".help") or not action.dest.startswith(key + "."):
            continue
        name = action.dest[len(key) + 1:]
        if "." in name:
            continue
        if name in values:
            value = values[name]
            if isinstance(value, dict) and str(value.get("class_path", "")).startswith("equimol."):
                nested[name] = value  # listed in a block of its own
                value = str(value["class_path"]).rsplit(".", 1)[-1]
        elif getattr(action, "required", False):
            value = "required"
        else:
            value = action.default
        shown = value if value == "required" else _show(value)
        rows.append((name, _type_text(cls, name, action), shown, _sentence(action.help)))
    return rows, nested


def _config_sections(args: list[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``{"model": {class_path, init_args}, "data": {...}}`` from the ``--config`` files and
    ``--model``/``--data`` class paths in ``args``, and notes on what could not be read."""
    sections: dict[str, dict[str, Any]] = {key: {"class_path": path, "init_args": {}}
                                           for key, path in DEFAULT_CLASSES.items()}
    notes: list[str] = []
    k = 0
    while k < len(args):
        arg, value = args[k], None
        name, eq, inline = arg.partition("=")
        if name in ("-c", "--config", "--model", "--data"):
            value = inline if eq else (args[k + 1] if k + 1 < len(args) else None)
            k += 0 if eq else 1
        k += 1
        if value is None:
            continue
        if name in ("--model", "--data"):
            if "." in value and not value.endswith((".yaml", ".yml", ".json")) and not value.lstrip().startswith("{"):
                sections[name[2:]] = {"class_path": value, "init_args": {}}
            continue
        try:
            config = yaml.safe_load(Path(value).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            notes.append(f"could not read {value} ({type(error).__name__}); showing the defaults")
            continue
        for key in DEFAULT_CLASSES:
            section = config.get(key) if isinstance(config, dict) else None
            if isinstance(section, str):
                section = {"class_path": section}
            if not isinstance(section, dict):
                continue
            if section.get("class_path") and section["class_path"] != sections[key]["class_path"]:
                sections[key] = {"class_path": section["class_path"], "init_args": {}}
            sections[key]["init_args"].update(section.get("init_args") or {})
    return sections, notes


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    name_w = min(max((len(r[0]) for r in rows), default=0), 22)
    type_w = min(max((len(r[1]) for r in rows), default=0), 24)
    value_w = min(max((len(r[2]) for r in rows), default=0), 20)
    lines = []
    for name, kind, value, text in rows:
        kind = kind if len(kind) <= type_w else kind[: type_w - 1] + "…"
        value = value if len(value) <= value_w else value[: value_w - 1] + "…"
        lines.append(_fit(f"  {name:<{name_w}}  {kind:<{type_w}}  {value:<{value_w}}  {text}"))
    return lines


def _class_sections(args: list[str]) -> tuple[list[list[str]], list[str]]:
    """One block of lines per class (model, its nested equimol classes, data)."""
    sections, notes = _config_sections(args)
    blocks = []
    for key in ("model", "data"):
        queue = [(key, sections[key])]
        while queue:
            where, section = queue.pop(0)
            class_path = str(section.get("class_path"))
            try:
                cls = _import(class_path)
                rows, nested = _class_rows(cls, f"{where}.init_args", dict(section.get("init_args") or {}))
            except Exception as error:  # a help must not fail: say so, show the default class
                notes.append(f"cannot list the options of {class_path} ({type(error).__name__}: {error})")
                if where in DEFAULT_CLASSES and class_path != DEFAULT_CLASSES[where]:
                    queue.insert(0, (where, {"class_path": DEFAULT_CLASSES[where], "init_args": {}}))
                continue
            flags = f"--{where} CLASS_PATH, " if where in DEFAULT_CLASSES else ""
            title = f"{where}: {class_path}   ({flags}--{where}.init_args.KEY VALUE)"
            blocks.append([_fit(title), *_table(rows)])
            queue += [(f"{where}.init_args.{name}", value) for name, value in nested.items()]
    return blocks, notes


def _group_lines(parser: LightningArgumentParser, subcommand: str) -> tuple[list[str], list[str]]:
    """The run options (config, seed, the subcommand's own) and one line per other group."""
    groups = getattr(parser, "groups", None) or {}
    grouped = {id(action) for group in groups.values() for action in group._group_actions}
    run = [_RUN_OPTIONS[a.dest] for a in parser._actions if a.dest in _RUN_OPTIONS and id(a) not in grouped]
    for action in groups[subcommand]._group_actions if subcommand in groups else []:
        own = _EVAL_CKPT if action.dest == "ckpt_path" and subcommand != "fit" else _OWN_OPTIONS.get(action.dest)
        run.append(own or (f"{action.option_strings[0]} {action.dest.upper()}", _sentence(action.help)))
    run.append(("--help_all", "every option of every group, with LightningCLI's full help"))
    width = max(len(flag) for flag, _ in run)
    run_lines = [_fit(f"  {flag:<{width}}  {text}") for flag, text in run]
    other = []
    for key, group in groups.items():
        if key in ("model", "data", subcommand):
            continue
        names = [a.dest[len(key) + 1:] for a in group._group_actions
                 if a.dest.startswith(key + ".") and not a.dest.endswith(".help")]
        first = [name for name in _FIRST.get(key, []) if name in names]
        names = first + [name for name in names if name not in first]
        describe = _GROUPS.get(key) or _sentence(group.title).rstrip(".:")
        if names:
            flag = f"--{key}.KEY"
            text = f"{describe}: {', '.join(names)}"
        else:
            flag, text = f"--{key} CLASS_PATH", describe
        other.append((flag, text, len(names)))
    width = max((len(flag) for flag, _, _ in other), default=0)
    other_lines = []
    for flag, text, count in other:
        suffix = f" ({count})" if count else ""
        line = f"  {flag:<{width}}  {text}"
        if len(line) + len(suffix) > _WIDTH:
            line = line[: _WIDTH - len(suffix) - 5].rsplit(",", 1)[0] + ", ..."
        other_lines.append(line + suffix)
    return run_lines, other_lines


def short_help(subcommand: str, args: Sequence[str] = ()) -> str:
    """``equimol SUBCOMMAND --help``: the options of the model and the data module (of the
    classes ``--config`` files in ``args`` name, or the defaults), the run options, one line
    per other group, and where to find the rest; at most 110 lines."""
    args = [arg for arg in args if arg not in ("-h", "--help")]
    parser = _subcommand_parser(subcommand)
    blocks, notes = _class_sections(args)
    run_lines, other_lines = _group_lines(parser, subcommand)
    head = [
        f"usage: equimol {subcommand} [--config FILE] [--KEY VALUE ...] [--print_config] [--help_all]",
        "",
        *textwrap.wrap(
            f"{_PURPOSE.get(subcommand, subcommand)}. A config names the LightningModule (model), the "
            "LightningDataModule (data) and the Trainer's settings; a flag sets or overrides any key. "
            "Values shown: the config's, else the defaults.",
            width=100,
        ),
        *[f"note: {_fit(note, _WIDTH - 6)}" for note in notes],
        "",
    ]
    tail = [
        "",
        "run:",
        *run_lines,
        "",
        f"other groups (equimol {subcommand} --help_all lists them in full; --KEY.help CLASS_PATH shows a class):",
        *other_lines,
    ]
    # keep to the line budget: shorten the longest class block first
    budget = _MAX_LINES - len(head) - len(tail) - 2 * len(blocks)
    while sum(len(block) for block in blocks) > budget:
        longest = max(blocks, key=len)
        hidden = longest[-1].startswith("  … ") and int(longest[-1].split()[1]) or 0
        rows = longest[1:-1] if hidden else longest[1:]
        if not rows:
            break
        longest[:] = [longest[0], *rows[:-1], f"  … {hidden + 1} more: equimol {subcommand} --help_all"]
    body = []
    for block in blocks:
        body += [*block, ""]
    return "\n".join(head + body[:-1] + tail)
