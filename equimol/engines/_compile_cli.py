"""``equimol compile CHECKPOINT OUT.pt2``: an ahead-of-time compiled package of a trained model."""

from __future__ import annotations

import time
from typing import Literal, Optional

import torch
from jsonargparse import ActionYesNo, ArgumentParser

from equimol import _cli_errors as errors

__all__ = ["compile_main", "build_compile_parser"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_compile_parser() -> ArgumentParser:
    """The parser of ``equimol compile``."""
    parser = ArgumentParser(
        prog="equimol compile",
        description=(
            "Compile a trained EquivariantPotential ahead of time (AOTInductor) into a .pt2 package: "
            "the fastest way to run it through EquimolCalculator, for example for MD. "
            "Needs a C++ compiler; takes tens of seconds to minutes."
        ),
        **errors.PARSER_KWARGS,
    )
    parser.add_argument("checkpoint", type=str, help="a .ckpt written by 'equimol fit'")
    parser.add_argument("output", type=str, help="the package to write, *.pt2")
    parser.add_argument(
        "--dtype", type=Optional[Literal[tuple(sorted(_DTYPES))]], default=None,
        help="compute in this dtype (default: the model's own)",
    )  # fmt: skip
    parser.add_argument(
        "--device", type=str, default="cpu", help="device the package runs on (compile on a GPU machine for 'cuda')"
    )
    parser.add_argument(
        "--autotune",
        action=ActionYesNo,
        default=True,
        help="time alternative matrix-product kernels (--no_autotune compiles faster, runs a little slower)",
    )
    return parser


def compile_main(argv: list[str]) -> int:
    """Compile a checkpoint of ``equimol fit`` (the EMA weights when EMA was on) into a
    ``.pt2`` package for :class:`~equimol.calculator.EquimolCalculator`; returns an exit code.
    Errors (a missing checkpoint, a bad value) raise, for the ``equimol`` command to report."""
    args = build_compile_parser().parse_args(list(argv))
    from equimol.engines.backends import load_model
    from equimol.models.aot import export_aot

    model = load_model(args.checkpoint, device=args.device)
    if args.dtype is not None:
        model = model.to(_DTYPES[args.dtype])
    start = time.perf_counter()
    path = export_aot(model, args.output, autotune=args.autotune)
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    return 0
