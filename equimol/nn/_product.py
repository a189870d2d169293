"""Many-body products of node features, channel by channel (the idea of MACE's symmetric contractions)."""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from e3nn import o3
from torch import nn

__all__ = ["ProductBasis"]


class ProductBasis(nn.Module):
    r"""Equivariant products of a node's features with themselves, up to ``correlation`` factors.

    With ``A`` the input (``mul`` copies of each irrep), order 2 is every coupling
    ``(A_u^{l_1} \otimes A_u^{l_2})^{L}`` of two irreps of the same channel ``u`` into an irrep of
    the input, each path with a learned weight per channel; order ``k`` couples a linear mix of
    order ``k - 1`` with ``A`` once more. Applied to summed neighbour messages, order ``k``
    carries ``k + 1``-body information in one layer, the way MACE's symmetric contractions do,
    while the channels stay uncoupled (the cost is linear in ``mul``). Products of an irrep
    with itself that vanish identically (the antisymmetric couplings, such as ``v x v``) are
    left out.

    Args:
        irreps_in: node feature irreps, one multiplicity for all entries (``32x0e + 32x1o``).
        correlation: the highest order of the products, at least 2.

    Shapes:
        ``[N, irreps_in.dim]`` -> ``[N, irreps_out.dim]``: the products of every order, grouped
        by irrep (``irreps_out``, one entry per irrep, so that a linear map after it is one
        matrix product per irrep).
    """

    def __init__(self, irreps_in: o3.Irreps | str, correlation: int) -> None:
        super().__init__()
        self.irreps_in = o3.Irreps(irreps_in).simplify()
        muls = {mul for mul, _ in self.irreps_in}
        if len(muls) != 1:
            raise ValueError(f"ProductBasis: irreps_in must have one multiplicity for all irreps, got {self.irreps_in}")
        if correlation < 2:
            raise ValueError(f"ProductBasis: correlation must be at least 2, got {correlation}")
        self.correlation = int(correlation)
        wanted = [ir for _, ir in self.irreps_in]
        steps, outputs = [], []
        for order in range(2, self.correlation + 1):
            # order 2 multiplies the input with itself, higher orders the previous order mixed
            # back to the input irreps: the left factor has the input irreps either way
            product = _channelwise_product(self.irreps_in, self.irreps_in, wanted, same_input=order == 2)
            # outputs come grouped by irrep, so the linear map sees one entry per irrep (one
            # matrix product each instead of one per path)
            mix = o3.Linear(product.irreps_out.simplify(), self.irreps_in) if order < self.correlation else None
            steps.append(_ProductStep(product, mix))
            outputs.append(product.irreps_out)
        self.steps = nn.ModuleList(steps)
        # all orders together, grouped by irrep: the components in that order
        concatenated = o3.Irreps([entry for irreps in outputs for entry in irreps])
        grouped, _, source = concatenated.sort()  # entry k of grouped is entry source[k]
        slices = concatenated.slices()
        components = [i for k in range(len(concatenated)) for i in range(slices[source[k]].start, slices[source[k]].stop)]
        self.register_buffer("output_order", torch.tensor(components, dtype=torch.long), persistent=False)
        self.irreps_out = grouped.simplify()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        left = features
        results: List[torch.Tensor] = []
        for step in self.steps:
            out, left = step(left, features)
            results.append(out)
        return torch.cat(results, dim=-1).index_select(-1, self.output_order)


class _ProductStep(nn.Module):
    """One order: the product of the previous order (mixed back to the input irreps) with the input."""

    def __init__(self, product: o3.TensorProduct, mix: Optional[o3.Linear]) -> None:
        super().__init__()
        self.product = product
        self.mix = mix

    def forward(self, left: torch.Tensor, features: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.product(left, features)
        if self.mix is None:
            return out, out
        return out, self.mix(out)


def _channelwise_product(
    irreps_left: o3.Irreps, irreps_right: o3.Irreps, wanted: list, same_input: bool
) -> o3.TensorProduct:
    """``o3.TensorProduct`` of all ``uuu`` paths from ``irreps_left x irreps_right`` into the
    irreps ``wanted``; with ``same_input`` (both inputs the same tensor) each unordered pair
    once and no identically vanishing self-coupling. The outputs are grouped by irrep."""
    paths = []
    for i, (mul, ir_left) in enumerate(irreps_left):
        for j, (_, ir_right) in enumerate(irreps_right):
            if same_input and j < i:
                continue
            for ir_out in ir_left * ir_right:
                if ir_out not in wanted:
                    continue
                if same_input and i == j and (2 * ir_left.l - ir_out.l) % 2 == 1:
                    continue  # antisymmetric coupling of a vector with itself: zero
                paths.append((ir_out, i, j, mul))
    paths.sort(key=lambda path: path[0])  # grouped by output irrep (a stable sort)
    instructions = [(i, j, k, "uuu", True) for k, (_, i, j, _) in enumerate(paths)]
    outputs = [(mul, ir_out) for ir_out, _, _, mul in paths]
    return o3.TensorProduct(irreps_left, irreps_right, o3.Irreps(outputs), instructions)
