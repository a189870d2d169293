"""One NequIP interaction: convolution, gate, self-interaction, residual."""

from __future__ import annotations

from typing import Sequence

import torch
from e3nn import o3
from torch import nn

from equimol.nn._convolution import TensorProductConv, reachable_irreps
from equimol.nn._gate import Gate

__all__ = ["InteractionBlock"]


class InteractionBlock(nn.Module):
    """Convolution -> gate -> self-interaction (``o3.Linear``), plus a residual when shapes allow.

    ``irreps_out`` is ``irreps_target`` restricted to the irreps the convolution can reach
    from ``irreps_in`` and ``irreps_edge`` (as NequIP does): in a parity-equivariant network
    fed with scalars, the first layer cannot make ``1e`` features, so it does not carry them.
    When ``irreps_out == irreps_in`` and ``residual`` is True, the block returns
    ``x + f(x)``.

    Args:
        irreps_in: node feature irreps.
        irreps_edge: edge attribute irreps (spherical harmonics).
        irreps_target: the hidden feature irreps wanted.
        num_radial: number of radial features per edge.
        radial_hidden: hidden widths of the radial MLP.
        avg_num_neighbors: neighbour normalisation of the convolution.
        residual: add the input to the output when the irreps match.
        tensor_product: ``"fused"`` (default) or ``"e3nn"``, see :class:`~equimol.nn.TensorProductConv`.

    Shapes:
        same as :class:`~equimol.nn.TensorProductConv`: ``-> [N, irreps_out.dim]``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_edge: o3.Irreps | str,
        irreps_target: o3.Irreps | str,
        num_radial: int,
        radial_hidden: Sequence[int] = (64,),
        avg_num_neighbors: float = 1.0,
        residual: bool = True,
        tensor_product: str = "fused",
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        irreps_out = reachable_irreps(self.irreps_in, irreps_edge, irreps_target)
        if irreps_out.dim == 0:
            raise ValueError(
                f"InteractionBlock: no irreps of {irreps_target} reachable from {irreps_in} x {irreps_edge}"
            )
        self.gate = Gate(irreps_out)
        self.conv = TensorProductConv(
            self.irreps_in,
            irreps_edge,
            self.gate.irreps_in,
            num_radial,
            radial_hidden,
            avg_num_neighbors,
            tensor_product=tensor_product,
        )
        self.self_interaction = o3.Linear(self.gate.irreps_out, self.gate.irreps_out)
        self.irreps_out = self.gate.irreps_out
        self.residual = bool(residual) and self.irreps_out == self.irreps_in

    def forward(
        self,
        node_features: torch.Tensor,
        edge_attr: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        out = self.conv(node_features, edge_attr, edge_radial, edge_index)
        out = self.self_interaction(self.gate(out))
        if self.residual:
            out = out + node_features
        return out
