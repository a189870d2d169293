"""The ``equimol`` command: a small dispatcher on the first argument.

Each subcommand lives in its own module and is registered in :data:`SUBCOMMANDS` as
``name -> (module, function, one-line help)``; the function takes the remaining arguments
(``list[str]``), parses them with a ``jsonargparse`` parser built with
:data:`equimol._cli_errors.PARSER_KWARGS` (LightningCLI for ``fit``/``validate``/``test``/``predict``)
and returns an exit code. Modules are imported only when their subcommand runs.

Conventions shared by every subcommand, and kept here in one place:

- options are spelled with underscores (``--batch_size``) and never abbreviated;
- a known error (bad value, missing file, unknown key, parse error; see
  :data:`equimol._cli_errors.KNOWN_ERRORS`) is one line on stderr,
  ``equimol <cmd>: error: <message>``, with exit code 2; ``--traceback`` (anywhere on the
  command line) or ``EQUIMOL_TRACEBACK=1`` shows the full traceback instead;
- progress messages of the library (``logging`` under ``equimol``) go to stderr at level INFO;
  results go to stdout.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from equimol import _cli_errors as errors

__all__ = ["SUBCOMMANDS", "main"]

#: name -> (module, function in it taking ``list[str]`` and returning an exit code, help).
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "init": (
        "equimol.train.init_config",
        "init_main",
        "write a commented training config for a structure file (species and label keys detected)",
    ),
    "generate": (
        "equimol.generate",
        "cli_main",
        "generate a labelled data set (toy2d, lj-cluster, lj-gravity-mc, emt-md, molecule-md)",
    ),
    "convert": (
        "equimol.data._convert_cli",
        "convert_main",
        "convert a structure file into an on-disk data set read lazily in training",
    ),
    "fit": ("equimol.train.cli", "fit_main", "train a model from a config (--ckpt_path last resumes)"),
    "committee": (
        "equimol.train.committee",
        "committee_main",
        "train several models from one config (seeds, optionally splits) for uncertainty",
    ),
    "validate": ("equimol.train.cli", "validate_main", "metrics of a checkpoint on the validation split"),
    "test": ("equimol.train.cli", "test_main", "metrics of a checkpoint on the test split"),
    "evaluate": (
        "equimol.engines.evaluate",
        "evaluate_main",
        "metrics, per-frame predictions (extxyz) and plots of a model on any structure file",
    ),
    "predict": ("equimol.engines.evaluate", "predict_main", "predictions of a model on any structure file, as extxyz"),
    "compile": (
        "equimol.engines._compile_cli",
        "compile_main",
        "compile a checkpoint ahead of time into a .pt2 package for the ASE calculator",
    ),
    "study": (
        "equimol.studies.invariance",
        "study_main",
        "run a study: 'study invariance --config FILE', 'study vae [--out DIR]'",
    ),
}

#: Environment variable that, set to 1, shows the full traceback of every error.
TRACEBACK_ENV = "EQUIMOL_TRACEBACK"
_TRACEBACK_FLAG = "--traceback"


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: equimol [--traceback] SUBCOMMAND [ARGS ...]",
        "",
        "E(3)-equivariant graph neural networks for atoms and molecules.",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
    lines += [
        "",
        "options:",
        "  -h, --help   show this message",
        f"  --traceback  show the full traceback of an error (also {TRACEBACK_ENV}=1)",
        "",
        "Run 'equimol SUBCOMMAND --help' for the options of one subcommand; option names use",
        "underscores (--batch_size) and are never abbreviated.",
    ]
    return "\n".join(lines)


def _load(name: str) -> Callable[[list[str]], int]:
    module, function, _ = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module), function)


def _split_traceback_flag(args: list[str]) -> tuple[bool, list[str]]:
    """Remove ``--traceback`` (before a literal ``--``) from ``args``."""
    end = args.index("--") if "--" in args else len(args)
    head = [arg for arg in args[:end] if arg != _TRACEBACK_FLAG]
    return len(head) != end, head + args[end:]


class _StderrHandler(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a record is emitted."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it; always follow sys.stderr
        pass


class _Formatter(logging.Formatter):
    """``message`` for INFO and below, ``warning: message`` above."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno > logging.INFO:
            text = f"{record.levelname.lower()}: {text}"
        return text


@contextmanager
def _logging_to_stderr() -> Iterator[None]:
    """Show ``equimol``'s log messages (INFO and above) on stderr while the command runs."""
    logger = logging.getLogger("equimol")
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _exit_code(exit_: SystemExit) -> int:
    code = exit_.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)  # SystemExit("message") prints its message, as Python does
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``equimol`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    No arguments print the usage and return 2; ``-h``/``--help`` print it and return 0. An
    unknown subcommand and every known error of a subcommand are one line on stderr and
    return 2 (the full traceback with ``--traceback`` or ``EQUIMOL_TRACEBACK=1``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    show_traceback, args = _split_traceback_flag(args)
    show_traceback = show_traceback or os.environ.get(TRACEBACK_ENV, "").strip().lower() in ("1", "true", "yes")
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(f"equimol: error: unknown subcommand {name!r}; choose from: {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return errors.EXIT_ERROR
    prog = f"equimol {name}"
    try:
        with _logging_to_stderr(), errors.command(prog):
            errors.check_option_spelling(rest)
            return int(_load(name)(rest) or 0)
    except SystemExit as exit_:  # --help, --print_config
        return _exit_code(exit_)
    except Exception as error:
        if show_traceback or not errors.is_known(error):
            if not errors.is_known(error):
                raise
            traceback.print_exception(error, file=sys.stderr)
            return errors.EXIT_ERROR
        print(errors.error_line(errors.prog_of(error, prog), error), file=sys.stderr)
        return errors.EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
