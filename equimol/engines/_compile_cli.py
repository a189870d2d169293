"""``equimol compile CHECKPOINT OUT.pt2``: an ahead-of-time compiled package of a trained model."""

from __future__ import annotations

import argparse
import sys
import time

import torch

__all__ = ["compile_main"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def compile_main(argv: list[str]) -> int:
    """Compile a checkpoint of ``equimol fit`` (the EMA weights when EMA was on) into a
    ``.pt2`` package for :class:`~equimol.calculator.EquimolCalculator`; returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="equimol compile",
        description=(
            "Compile a trained EquivariantPotential ahead of time (AOTInductor) into a .pt2 package: "
            "the fastest way to run it through EquimolCalculator, for example for MD. "
            "Needs a C++ compiler; takes tens of seconds to minutes."
        ),
    )
    parser.add_argument("checkpoint", help="a .ckpt written by 'equimol fit'")
    parser.add_argument("output", help="the package to write, *.pt2")
    parser.add_argument(
        "--dtype", choices=sorted(_DTYPES), default=None, help="compute in this dtype (default: the model's own)"
    )
    parser.add_argument(
        "--device", default="cpu", help="device the package runs on (compile on a GPU machine for 'cuda')"
    )
    parser.add_argument(
        "--no-autotune",
        action="store_true",
        help="do not time alternative matrix-product kernels (compiles faster, runs a little slower)",
    )
    args = parser.parse_args(argv)
    from equimol.calculator import load_model
    from equimol.models.aot import export_aot

    try:
        model = load_model(args.checkpoint, device=args.device)
        if args.dtype is not None:
            model = model.to(_DTYPES[args.dtype])
        start = time.perf_counter()
        path = export_aot(model, args.output, autotune=not args.no_autotune)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"equimol compile: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    return 0
