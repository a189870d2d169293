"""The ``equimol generate`` subcommand: run a generator and write its frames to extxyz."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping, Sequence

from jsonargparse import ArgumentParser

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
        allow_abbrev=False,
        description="Generate a labelled data set (energies, forces) and write it as extended XYZ.",
    )
    subcommands = parser.add_subcommands(dest="generator", required=True, title="generators")
    for name, function in generators.items():
        sub = ArgumentParser(description=_summary(function), allow_abbrev=False)
        sub.add_argument("--out", type=str, required=True, help="output file (extended XYZ)")
        sub.add_function_arguments(function)
        if "progress" in inspect.signature(function).parameters:
            sub.set_defaults(progress=True)
        subcommands.add_subcommand(name, sub, help=_summary(function))
    return parser


def generate_main(argv: Sequence[str], generators: Mapping[str, Callable]) -> int:
    """Parse ``argv`` (the arguments after ``generate``), run the generator, write the file.

    Returns:
        0 on success; 2 when the generator rejects an argument value or a dependency is
        missing (the message is printed). Parser errors exit through ``SystemExit(2)``.
    """
    parser = build_generate_parser(generators)
    config = parser.parse_args(list(argv))
    name = config.generator
    kwargs = config[name].as_dict()
    out = kwargs.pop("out")
    kwargs.pop("__path__", None)
    kwargs.pop("config", None)
    try:
        frames = generators[name](**kwargs)
    except (ValueError, ImportError) as err:
        print(f"equimol generate {name}: error: {err}", file=sys.stderr)
        return 2
    write_frames(frames, out)
    print(f"equimol generate {name}: wrote {len(frames)} frames to {out}")
    return 0
