"""Gated nonlinearity for equivariant features."""

from __future__ import annotations

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from e3nn.util.jit import compile_mode

__all__ = ["Gate"]


@compile_mode("script")
class Gate(e3nn_nn.Gate):
    """e3nn's gate built from the irreps it should output.

    Scalars of ``irreps_out`` pass through SiLU (even, ``0e``) or tanh (odd, ``0o``); every
    irrep with l > 0 is multiplied by its own gate, a ``0e`` scalar through a sigmoid. The
    input therefore holds ``irreps_out``'s scalars, one extra ``0e`` per gated irrep, and the
    gated irreps: build the layer before it to output ``gate.irreps_in``.

    Args:
        irreps_out: the irreps after the gate, e.g. ``"32x0e + 32x1o"``.

    Shapes:
        ``[N, irreps_in.dim]`` -> ``[N, irreps_out.dim]``.
    """

    def __init__(self, irreps_out: o3.Irreps | str) -> None:
        irreps_out = o3.Irreps(irreps_out).simplify()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        acts = {1: torch.nn.functional.silu, -1: torch.tanh}
        gates = o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps > 0 else o3.Irreps("")
        super().__init__(
            scalars,
            [acts[ir.p] for _, ir in scalars],
            gates,
            [torch.sigmoid] * len(gates),
            gated,
        )
