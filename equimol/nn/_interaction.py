"""One NequIP interaction: convolution, gate, self-interaction, residual."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from e3nn import o3
from torch import nn

from equimol.nn._convolution import TensorProductConv, reachable_irreps
from equimol.nn._gate import Gate
from equimol.nn._product import ProductBasis

__all__ = ["InteractionBlock"]


class InteractionBlock(nn.Module):
    """Convolution (+ species self-connection) -> gate -> self-interaction (``o3.Linear``),
    plus a residual when shapes allow.

    ``irreps_out`` is ``irreps_target`` restricted to the irreps the convolution can reach
    from ``irreps_in`` and ``irreps_edge`` (as NequIP does): in a parity-equivariant network
    fed with scalars, the first layer cannot make ``1e`` features, so it does not carry them.
    When ``residual`` is True and every entry ``mul x ir`` of ``irreps_out`` is also an entry
    of ``irreps_in``, the block returns ``x[irreps_out] + f(x)``, where ``x[irreps_out]`` are
    those entries of the input (all of it when ``irreps_out == irreps_in``; the scalars when
    a last layer keeps only scalars).

    Args:
        irreps_in: node feature irreps.
        irreps_edge: edge attribute irreps (spherical harmonics).
        irreps_target: the hidden feature irreps wanted.
        num_radial: number of radial features per edge.
        radial_hidden: hidden widths of the radial MLP.
        avg_num_neighbors: neighbour normalisation of the convolution.
        residual: add the input to the output when the irreps match.
        num_species: when given, add NequIP's self-connection to the convolution's output
            (before the gate): a linear map of the node's own features whose weights depend
            on its species (``o3.FullyConnectedTensorProduct`` of the features with the
            one-hot species). ``forward`` then needs ``node_attrs``.
        correlation: above 1, add MACE-style many-body products of the convolution's output
            (:class:`~equimol.nn.ProductBasis` up to this order, between two linear maps)
            to it, before the gate.
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
        num_species: Optional[int] = None,
        correlation: int = 1,
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
        self.self_connection = (
            None
            if num_species is None
            else o3.FullyConnectedTensorProduct(self.irreps_in, o3.Irreps(f"{num_species}x0e"), self.gate.irreps_in)
        )
        self.product_in: Optional[o3.Linear] = None
        self.product: Optional[ProductBasis] = None
        self.product_out: Optional[o3.Linear] = None
        if correlation > 1:
            channels = max(mul for mul, _ in self.gate.irreps_out)
            irreps_product = o3.Irreps([(channels, ir) for _, ir in self.gate.irreps_in.simplify()]).sort().irreps
            self.product_in = o3.Linear(self.gate.irreps_in.simplify(), irreps_product.simplify())
            self.product = ProductBasis(irreps_product, correlation)
            self.product_out = o3.Linear(self.product.irreps_out, self.gate.irreps_in.simplify())
        self.self_interaction = o3.Linear(self.gate.irreps_out, self.gate.irreps_out)
        self.irreps_out = self.gate.irreps_out
        slices = _matching_slices(self.irreps_in, self.irreps_out) if residual else None
        self.residual = slices is not None
        self.residual_is_identity = self.residual and self.irreps_out == self.irreps_in
        # the components of the input that match irreps_out, in order
        components = [i for start, length in (slices or []) for i in range(start, start + length)]
        self.register_buffer("residual_index", torch.tensor(components, dtype=torch.long), persistent=False)

    def forward(
        self,
        node_features: torch.Tensor,
        edge_attr: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
        node_attrs: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``node_attrs [N, num_species]``: one-hot species, needed with a self-connection."""
        out = self.conv(node_features, edge_attr, edge_radial, edge_index)
        if self.product is not None and self.product_in is not None and self.product_out is not None:
            out = out + self.product_out(self.product(self.product_in(out)))
        if self.self_connection is not None:
            if node_attrs is None:
                raise ValueError("InteractionBlock: built with num_species, so forward needs node_attrs")
            out = out + self.self_connection(node_features, node_attrs)
        out = self.self_interaction(self.gate(out))
        if self.residual_is_identity:
            out = out + node_features
        elif self.residual:
            out = out + node_features.index_select(1, self.residual_index)
        return out


def _matching_slices(irreps_in: o3.Irreps, irreps_out: o3.Irreps) -> Optional[List[Tuple[int, int]]]:
    """``(start, length)`` of the entries of ``irreps_in`` equal to each entry of ``irreps_out``
    (in order), or None when some entry of ``irreps_out`` has no equal in ``irreps_in``."""
    slices: List[Tuple[int, int]] = []
    used = set()
    for mul, ir in irreps_out:
        for index, ((mul_in, ir_in), block) in enumerate(zip(irreps_in, irreps_in.slices())):
            if index not in used and mul_in == mul and ir_in == ir:
                used.add(index)
                slices.append((block.start, block.stop - block.start))
                break
        else:
            return None
    return slices
