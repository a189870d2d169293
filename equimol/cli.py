"""The ``equimol`` command: a small dispatcher on the first argument.

Each subcommand lives in its own module and is registered in :data:`SUBCOMMANDS` as
``name -> (module, function, one-line help)``; the function takes the remaining arguments
(``list[str]``) and returns an exit code. Modules are imported only when their subcommand runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence

__all__ = ["SUBCOMMANDS", "main"]

#: name -> (module, function in it taking ``list[str]`` and returning an exit code, help).
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": (
        "equimol.generate",
        "cli_main",
        "generate a labelled data set (toy2d, lj-cluster, lj-gravity-mc, emt-md, molecule-md)",
    ),
    "fit": ("equimol.train.cli", "fit_main", "train a model from a config (--ckpt_path last resumes)"),
    "validate": ("equimol.train.cli", "validate_main", "metrics of a checkpoint on the validation split"),
    "test": ("equimol.train.cli", "test_main", "metrics of a checkpoint on the test split"),
    "predict": ("equimol.train.cli", "predict_main", "predictions of a checkpoint on the test split"),
    "evaluate": ("equimol.train.evaluate", "evaluate_main", "metrics JSON and parity plot of a checkpoint on data"),
    "compile": (
        "equimol.engines._compile_cli",
        "compile_main",
        "compile a checkpoint ahead of time into a .pt2 package for the ASE calculator",
    ),
    "study": ("equimol.studies.invariance", "study_main", "run a study: 'study invariance --config FILE [--out DIR]'"),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = [
        "usage: equimol SUBCOMMAND [ARGS ...]",
        "",
        "E(3)-equivariant graph neural networks for atoms and molecules.",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<{width}}  {text}" for name, (_, _, text) in SUBCOMMANDS.items()]
    lines += ["", "Run 'equimol SUBCOMMAND --help' for the options of one subcommand."]
    return "\n".join(lines)


def _load(name: str) -> Callable[[list[str]], int]:
    module, function, _ = SUBCOMMANDS[name]
    return getattr(importlib.import_module(module), function)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``equimol`` with ``argv`` (default ``sys.argv[1:]``) and return the exit code.

    No arguments print the usage and return 2; ``-h``/``--help`` print it and return 0;
    an unknown subcommand is named in the error and returns 2.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(_usage(), file=sys.stderr)
        return 2
    if args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in SUBCOMMANDS:
        print(
            f"equimol: unknown subcommand {name!r}; choose from: {', '.join(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return int(_load(name)(rest) or 0)
    except SystemExit as exit_:  # argument parsers exit on --help and on errors
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
