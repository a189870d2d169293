"""The ``equimol generate`` subcommand: run a generator and write its frames to extxyz."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

from jsonargparse import ArgumentParser

from equimol import _cli_errors as errors

from ._frames import write_frames

__all__ = ["build_generate_parser", "generate_main"]


def _summary(function: Callable) -> str:
    doc = inspect.getdoc(function) or ""
    return doc.splitlines()[0] if doc else ""


def build_generate_parser(generators: Mapping[str, Callable]) -> ArgumentParser:
    """The parser of ``equimol generate NAME --out FILE [--key value ...]``.

    One subcommand per generator; its options come from the generator's signature (types
    validated by jsonargparse), plus ``--out``. The progress bar is on by default here.
    """
    parser = ArgumentParser(
        prog="equimol generate",
        description="Generate a labelled data set (energies, forces) and write it as extended XYZ.",
        **errors.PARSER_KWARGS,
    )
    subcommands = parser.add_subcommands(dest="generator", required=True, title="generators")
    for name, function in generators.items():
        sub = ArgumentParser(description=_summary(function), **errors.PARSER_KWARGS)
        sub.add_argument("--out", type=str, required=True, help="output file (extended XYZ)")
        sub.add_function_arguments(function)
        if "progress" in inspect.signature(function).parameters:
            sub.set_defaults(progress=True)
        subcommands.add_subcommand(name, sub, help=_summary(function))
    return parser


def generate_main(argv: Sequence[str], generators: Mapping[str, Callable]) -> int:
    """Parse ``argv`` (the arguments after ``generate``), run the generator, write the file.

    Returns:
        0 on success. A bad option or value (rejected by the parser or by the generator) and
        a missing optional dependency raise, for the ``equimol`` command to report as
        ``equimol generate NAME: error: ...``.
    """
    argv = list(argv)
    prog = f"equimol generate {argv[0]}" if argv and argv[0] in generators else "equimol generate"
    with errors.command(prog):
        config = build_generate_parser(generators).parse_args(argv)
        name = config.generator
        kwargs = config[name].as_dict()
        out = kwargs.pop("out")
        kwargs.pop("__path__", None)
        kwargs.pop("config", None)
        frames = generators[name](**kwargs)
        write_frames(frames, out)
    print(f"equimol generate {name}: wrote {len(frames)} frames to {out}")
    return 0
