"""Equivariant message passing: the tensor-product convolution of NequIP."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from e3nn import nn as e3nn_nn
from e3nn import o3
from torch import nn

from equimol.nn._fast_tp import FusedTensorProduct

__all__ = ["TensorProductConv", "reachable_irreps", "TENSOR_PRODUCTS"]

TENSOR_PRODUCTS = ("e3nn", "fused", "cueq")
"""The implementations :class:`TensorProductConv` can evaluate its tensor product with."""


def reachable_irreps(
    irreps_in: o3.Irreps | str, irreps_edge: o3.Irreps | str, irreps_target: o3.Irreps | str
) -> o3.Irreps:
    """The entries of ``irreps_target`` that a tensor product ``irreps_in x irreps_edge`` can produce.

    Useful to drop features a layer can never reach (for example ``1e`` in the first layer of a
    parity-equivariant network whose input is scalars only).
    """
    irreps_in, irreps_edge = o3.Irreps(irreps_in), o3.Irreps(irreps_edge)
    produced = {ir_out for _, ir1 in irreps_in for _, ir2 in irreps_edge for ir_out in ir1 * ir2}
    return o3.Irreps([(mul, ir) for mul, ir in o3.Irreps(irreps_target) if ir in produced])


class TensorProductConv(nn.Module):
    r"""Tensor-product convolution with per-edge weights from a radial MLP.

    For each edge j -> i (PyG direction: ``edge_index[0]`` is the neighbour j, ``edge_index[1]``
    the centre i):

    .. math::
        m_{ij} = \mathrm{TP}(x_j, Y(\hat r_{ij}); w(R(r_{ij}))), \qquad
        x'_i = \mathrm{Linear}\Big(\frac{1}{\sqrt{n_{avg}}} \sum_{j} m_{ij}\Big)

    The tensor product is e3nn's ``"uvu"`` product (each input channel keeps its own path
    weights; ``internal_weights=False, shared_weights=False``), the weights ``w`` come from an
    ``e3nn.nn.FullyConnectedNet`` (SiLU, no biases) of the radial features, and the sum over
    neighbours is divided by the **square root** of ``avg_num_neighbors`` (NequIP's
    normalisation). ``avg_num_neighbors`` is a buffer, so it can be set from data statistics
    after construction.

    With radial features that vanish at the cutoff (:class:`~equimol.nn.RadialEmbedding`)
    the bias-free MLP makes each message vanish smoothly there too.

    Args:
        irreps_in: node feature irreps.
        irreps_edge: edge attribute irreps (spherical harmonics).
        irreps_out: output irreps; output irreps that no path reaches are zero.
        num_radial: number of radial features per edge.
        radial_hidden: hidden layer widths of the radial MLP.
        avg_num_neighbors: typical number of neighbours per atom.
        tensor_product: ``"fused"`` (default) evaluates the product with
            :class:`~equimol.nn.FusedTensorProduct`, ``"e3nn"`` with ``o3.TensorProduct``:
            the same numbers to float round-off, the fused one faster; ``"cueq"`` with NVIDIA
            cuEquivariance (optional dependency, l <= 1; its fused kernels on a GPU).
            Parameters and state dicts are the same every way.

    Shapes:
        ``node_features [N, irreps_in.dim]``, ``edge_attr [E, irreps_edge.dim]``,
        ``edge_radial [E, num_radial]``, ``edge_index [2, E]`` -> ``[N, irreps_out.dim]``.
    """

    def __init__(
        self,
        irreps_in: o3.Irreps | str,
        irreps_edge: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        num_radial: int,
        radial_hidden: Sequence[int] = (64,),
        avg_num_neighbors: float = 1.0,
        tensor_product: str = "fused",
    ) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in)
        self.irreps_edge = o3.Irreps(irreps_edge)
        self.irreps_out = o3.Irreps(irreps_out)
        if avg_num_neighbors <= 0:
            raise ValueError(f"TensorProductConv: avg_num_neighbors must be positive, got {avg_num_neighbors}")

        wanted = {ir for _, ir in self.irreps_out}
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_in):
            for j, (_, ir_edge) in enumerate(self.irreps_edge):
                for ir_out in ir_in * ir_edge:
                    if ir_out in wanted:
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        if not instructions:
            raise ValueError(
                f"TensorProductConv: no path from {self.irreps_in} x {self.irreps_edge} to {self.irreps_out}"
            )
        irreps_mid = o3.Irreps(mid)
        irreps_mid, permutation, _ = irreps_mid.sort()
        instructions = [(i, j, permutation[k], mode, train) for i, j, k, mode, train in instructions]
        self.irreps_mid = irreps_mid

        self.tp = o3.TensorProduct(
            self.irreps_in,
            self.irreps_edge,
            irreps_mid,
            instructions,
            internal_weights=False,
            shared_weights=False,
        )
        self.tensor_product = tensor_product
        self.fused: Optional[FusedTensorProduct] = None
        self.cueq: Optional[nn.Module] = None
        self.set_tensor_product(tensor_product)
        self.radial_mlp = e3nn_nn.FullyConnectedNet(
            [int(num_radial), *[int(h) for h in radial_hidden], self.tp.weight_numel],
            torch.nn.functional.silu,
        )
        self.linear = o3.Linear(irreps_mid.simplify(), self.irreps_out)
        self.register_buffer("avg_num_neighbors", torch.tensor(float(avg_num_neighbors)))

    def forward(
        self,
        node_features: torch.Tensor,
        edge_attr: torch.Tensor,
        edge_radial: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        neighbour, centre = edge_index[0], edge_index[1]
        weights = self.radial_mlp(edge_radial)
        if self.fused is not None:
            summed = self.fused.convolve(node_features, edge_attr, weights, edge_index)
        else:
            if self.cueq is not None:
                messages = self.cueq(node_features.index_select(0, neighbour), edge_attr, weights)
            else:
                messages = self.tp(node_features[neighbour], edge_attr, weights)
            summed = messages.new_zeros((node_features.shape[0], messages.shape[1]))
            summed = summed.index_add(0, centre, messages)
        summed = summed / torch.sqrt(self.avg_num_neighbors).to(summed.dtype)
        return self.linear(summed)

    def set_tensor_product(self, tensor_product: str) -> None:
        """Evaluate the tensor product with ``"e3nn"``, ``"fused"`` or ``"cueq"`` from now on
        (same weights)."""
        if tensor_product not in TENSOR_PRODUCTS:
            raise ValueError(f"TensorProductConv: tensor_product must be one of {TENSOR_PRODUCTS}, got {tensor_product!r}")
        self.tensor_product = tensor_product
        self.fused = FusedTensorProduct.from_e3nn(self.tp) if tensor_product == "fused" else None
        if self.fused is not None:
            self.fused.to(self.tp.output_mask.device)
        self.cueq = None
        if tensor_product == "cueq":
            from equimol.nn._cueq_tp import CuEquivarianceTensorProduct  # optional dependency

            self.cueq = CuEquivarianceTensorProduct(self.tp).to(self.tp.output_mask.device)

    def set_avg_num_neighbors(self, value: float) -> None:
        """Set the neighbour normalisation (for example from training-set statistics)."""
        if not value > 0 or not math.isfinite(value):
            raise ValueError(f"avg_num_neighbors must be a positive number, got {value}")
        self.avg_num_neighbors.fill_(float(value))

    def extra_repr(self) -> str:
        return f"{self.irreps_in} x {self.irreps_edge} -> {self.irreps_out}, tensor_product={self.tensor_product!r}"
