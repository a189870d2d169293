"""A fused tensor product for convolutions: e3nn's ``"uvu"`` product with per-edge weights,
evaluated with the closed form of each path instead of e3nn's general code.

When every entry of the first input has the same multiplicity (the hidden features of
:class:`~equimol.models.EquivariantPotential`), features are held channel-last,
``[D1, mul]`` per atom or edge: the layout changes happen per atom, not per edge, and the
sum over neighbours is taken before returning to e3nn's layout. Otherwise the product is
evaluated path by path in e3nn's layout. Either way, paths whose Clebsch-Gordan tensor is a
multiple of the identity (a scalar times anything, or a dot product) or of the Levi-Civita
symbol (a cross product) are a few elementwise products; the others use an einsum.

Layout, path normalisation and weight order are e3nn's, so the result equals
``o3.TensorProduct`` to float round-off and the two can be swapped without touching the
weights of the network around them.
"""

from typing import List, Sequence, Tuple

import torch
from e3nn import o3
from e3nn.util.jit import compile_mode
from torch import nn

__all__ = ["FusedTensorProduct"]

# Path kinds: which closed form the Clebsch-Gordan tensor of a path has.
_SCALAR_LEFT = 0  # l1 = 0: C[0, j, k] = c delta_jk
_SCALAR_RIGHT = 1  # l2 = 0: C[i, 0, k] = c delta_ik
_DOT = 2  # l1 = l2, l_out = 0: C[i, j, 0] = c delta_ij
_CROSS = 3  # l1 = l2 = l_out = 1: C[i, j, k] = c epsilon_ijk
_GENERIC = 4  # anything else: einsum with C

_TOL = 1e-12


def _closed_form(l1: int, l2: int, l_out: int) -> Tuple[int, float, torch.Tensor]:
    """The kind of path (l1, l2) -> l_out, its constant ``c`` and e3nn's Clebsch-Gordan tensor.

    The closed form is checked against ``o3.wigner_3j`` (float64); a path whose tensor does not
    have the assumed form is marked generic, so a change of basis in e3nn cannot go unnoticed.
    """
    cg = o3.wigner_3j(l1, l2, l_out, dtype=torch.float64)
    if l1 == 0:
        kind, c = _SCALAR_LEFT, float(cg[0, 0, 0])
        template = c * torch.eye(cg.shape[1], dtype=torch.float64).unsqueeze(0)
    elif l2 == 0:
        kind, c = _SCALAR_RIGHT, float(cg[0, 0, 0])
        template = c * torch.eye(cg.shape[0], dtype=torch.float64).unsqueeze(1)
    elif l_out == 0:
        kind, c = _DOT, float(cg[0, 0, 0])
        template = c * torch.eye(cg.shape[0], dtype=torch.float64).unsqueeze(2)
    elif l1 == l2 == l_out == 1:
        kind, c = _CROSS, float(cg[0, 1, 2])
        eps = torch.zeros(3, 3, 3, dtype=torch.float64)
        for i, j, k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
            eps[i, j, k], eps[j, i, k] = 1.0, -1.0
        template = c * eps
    else:
        return _GENERIC, 1.0, cg
    if template.shape != cg.shape or not torch.allclose(template, cg, atol=_TOL, rtol=0.0):
        return _GENERIC, 1.0, cg
    return kind, c, cg


@compile_mode("script")
class FusedTensorProduct(nn.Module):
    r"""``o3.TensorProduct`` restricted to ``"uvu"`` paths with per-sample weights, fused.

    Computes, for every instruction ``(i1, i2, i_out)`` and channel ``u``,

    .. math::
        z^{(i_{out})}_{u k} \mathrel{+}= \alpha_{p}\, w_{p u} \sum_{i j} C^{l_1 l_2 l_{out}}_{ijk}
        x^{(i_1)}_{u i}\, y^{(i_2)}_{j},

    with e3nn's Clebsch-Gordan tensors ``C``, path weights ``alpha`` (its ``"component"``
    irrep and ``"element"`` path normalisation, or whatever the instructions were given) and
    its weight layout, so ``FusedTensorProduct(irreps...)(x, y, w)`` equals
    ``o3.TensorProduct(irreps..., internal_weights=False, shared_weights=False)(x, y, w)``.

    Args:
        irreps_in1: irreps of ``x`` (any multiplicities).
        irreps_in2: irreps of ``y``; every entry used by a path must have multiplicity 1
            (spherical harmonics of an edge).
        irreps_out: output irreps; each entry's multiplicity must equal that of the ``x``
            entries that feed it.
        instructions: e3nn instructions ``(i1, i2, i_out, "uvu", True[, path_weight])``.
        irrep_normalization: as in ``o3.TensorProduct`` (default ``"component"``).
        path_normalization: as in ``o3.TensorProduct`` (default ``"element"``).

    Shapes:
        ``x [E, irreps_in1.dim]``, ``y [E, irreps_in2.dim]``, ``weight [E, weight_numel]``
        -> ``[E, irreps_out.dim]``.
    """

    # (kind, start in x, mul, dim1, start in y, dim2, dim_out, start in weight, output entry, start in cg)
    paths: List[Tuple[int, int, int, int, int, int, int, int, int, int]]
    coefficients: List[float]
    outputs: List[Tuple[int, int, List[int]]]
    in_entries: List[Tuple[int, int, int]]
    channel_major: bool
    sum_paths: bool
    mul: int
    num_k: int
    num_out_components: int
    cm_paths: List[Tuple[int, int, int, int, int, int, int]]
    generic_groups: List[Tuple[int, int, int, int]]
    cg: torch.Tensor

    def __init__(
        self,
        irreps_in1: o3.Irreps | str,
        irreps_in2: o3.Irreps | str,
        irreps_out: o3.Irreps | str,
        instructions: Sequence[tuple],
        irrep_normalization: str | None = None,
        path_normalization: str | None = None,
    ) -> None:
        super().__init__()
        # e3nn computes the path weights (normalisation included); the fused code reuses them.
        reference = o3.TensorProduct(
            irreps_in1,
            irreps_in2,
            irreps_out,
            instructions,
            irrep_normalization=irrep_normalization,
            path_normalization=path_normalization,
            internal_weights=False,
            shared_weights=False,
        )
        self._setup(reference)

    @classmethod
    def from_e3nn(cls, tp: o3.TensorProduct) -> "FusedTensorProduct":
        """The fused equivalent of an existing e3nn tensor product (same weight layout)."""
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module._setup(tp)
        return module

    def _setup(self, tp: o3.TensorProduct) -> None:
        if tp.internal_weights or tp.shared_weights:
            raise NotImplementedError("FusedTensorProduct needs external per-sample weights (shared_weights=False)")
        self.irreps_in1, self.irreps_in2, self.irreps_out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        self.weight_numel = int(tp.weight_numel)
        starts1 = [s.start for s in self.irreps_in1.slices()]
        starts2 = [s.start for s in self.irreps_in2.slices()]
        paths: List[Tuple[int, int, int, int, int, int, int, int, int, int]] = []
        coefficients: List[float] = []
        cg_blocks: List[torch.Tensor] = []
        cg_offset = 0
        w_offset = 0
        for ins in tp.instructions:
            mul1, ir1 = self.irreps_in1[ins.i_in1]
            mul2, ir2 = self.irreps_in2[ins.i_in2]
            mul_out, ir_out = self.irreps_out[ins.i_out]
            if ins.connection_mode != "uvu" or not ins.has_weight:
                raise NotImplementedError(
                    f"FusedTensorProduct supports weighted 'uvu' paths only, got {ins.connection_mode!r} "
                    f"(has_weight={ins.has_weight})"
                )
            if mul2 != 1:
                raise NotImplementedError(
                    f"FusedTensorProduct needs multiplicity 1 in irreps_in2, got {mul2}x{ir2} in {self.irreps_in2}"
                )
            if mul_out != mul1:
                raise ValueError(f"'uvu' path {mul1}x{ir1} -> {mul_out}x{ir_out}: multiplicities differ")
            kind, c, cg = _closed_form(ir1.l, ir2.l, ir_out.l)
            cg_start = -1
            if kind == _GENERIC:
                cg_start = cg_offset
                cg_blocks.append(cg.flatten())
                cg_offset += cg.numel()
            paths.append(
                (kind, starts1[ins.i_in1], mul1, ir1.dim, starts2[ins.i_in2], ir2.dim, ir_out.dim, w_offset, ins.i_out, cg_start)
            )
            coefficients.append(float(ins.path_weight) * c)
            w_offset += mul1
        if w_offset != self.weight_numel:
            raise RuntimeError(f"weight count {w_offset} differs from e3nn's {self.weight_numel}")
        self.paths = paths
        self.coefficients = coefficients
        # per output entry: (multiplicity, dimension, the paths that write into it)
        self.outputs: List[Tuple[int, int, List[int]]] = [
            (mul, ir.dim, [p for p, path in enumerate(paths) if path[8] == i]) for i, (mul, ir) in enumerate(self.irreps_out)
        ]
        self.in_entries: List[Tuple[int, int, int]] = [
            (mul, ir.dim, start) for (mul, ir), start in zip(self.irreps_in1, starts1)
        ]
        cg_flat = torch.cat(cg_blocks) if cg_blocks else torch.zeros(0, dtype=torch.float64)
        # a buffer (not a plain attribute): it follows .to() and tracing sees it as an input,
        # so compiled graphs and packages of the generic paths (l >= 2) can be built
        self.register_buffer("cg", cg_flat, persistent=False)
        self._setup_channel_major(tp)

    def _setup_channel_major(self, tp: o3.TensorProduct) -> None:
        """Tables of the channel-major evaluation, used when every ``x`` entry has one multiplicity.

        The features of an atom or edge are held as ``[D1, mul]`` (all components of all
        entries, then the channels). Paths with a closed form are products and sums of
        ``[E, mul]`` slices. The generic paths (a Clebsch-Gordan tensor without a closed
        form, from l = 2 on) are batched by the ``x`` entry they read: for each such entry
        one matrix product contracts ``y`` with the Clebsch-Gordan tensors of all its paths
        (path weights folded in) and one batched product applies the result to the entry's
        ``[d1, mul]`` features, instead of one einsum per path. ``k`` runs over the output
        components of the closed-form paths (ordered by output entry), then over those of
        each group of generic paths; ``component_of_k`` maps it to the output component.
        """
        muls = {mul for mul, _ in self.irreps_in1}
        self.channel_major = len(muls) == 1 and len(self.paths) > 0
        self.mul = muls.pop() if self.channel_major else 0
        d1_offsets = [0]
        for _, ir in self.irreps_in1:
            d1_offsets.append(d1_offsets[-1] + ir.dim)
        d2_offsets = [s.start for s in self.irreps_in2.slices()]
        order = sorted(range(len(tp.instructions)), key=lambda p: (tp.instructions[p].i_out, p))
        out_offsets = [0]
        for _, ir in self.irreps_out:
            out_offsets.append(out_offsets[-1] + ir.dim)
        component_of_k: List[int] = []
        cm_paths: List[Tuple[int, int, int, int, int, int, int]] = []
        generic: dict = {}  # x entry -> the generic paths reading it, in order
        for p in order:
            ins = tp.instructions[p]
            kind, _, _, d1, _, d2, d_out, _, i_out, _ = self.paths[p]
            i0, j0 = d1_offsets[ins.i_in1], d2_offsets[ins.i_in2]
            if kind == _GENERIC:
                generic.setdefault(ins.i_in1, []).append(p)
                continue
            cm_paths.append((kind, p, i0, d1, j0, d2, d_out))
            component_of_k += list(range(out_offsets[i_out], out_offsets[i_out] + d_out))
        # groups of generic paths: (start in D1, d1, number of k, start in the coefficient
        # buffer); per group a [D2, d1 * K_g] matrix of coefficients and the path of each k
        groups: List[Tuple[int, int, int, int]] = []
        blocks: List[torch.Tensor] = []
        path_of_k: List[int] = []
        offset = 0
        for i_in1, group_paths in generic.items():
            d1 = self.irreps_in1[i_in1].ir.dim
            num_k = sum(self.paths[p][6] for p in group_paths)
            block = torch.zeros(self.irreps_in2.dim, d1, num_k, dtype=torch.float64)
            k = 0
            for p in group_paths:
                ins = tp.instructions[p]
                _, _, _, d1_p, _, d2, d_out, _, i_out, cg_start = self.paths[p]
                cg = self.cg.narrow(0, cg_start, d1_p * d2 * d_out).reshape(d1_p, d2, d_out)
                j0 = d2_offsets[ins.i_in2]
                block[j0 : j0 + d2, :, k : k + d_out] = self.coefficients[p] * cg.permute(1, 0, 2)
                path_of_k += [p] * d_out
                component_of_k += list(range(out_offsets[i_out], out_offsets[i_out] + d_out))
                k += d_out
            groups.append((d1_offsets[i_in1], d1, num_k, offset))
            blocks.append(block.flatten())
            offset += block.numel()
        self.cm_paths = cm_paths
        self.generic_groups = groups
        self.num_k = len(component_of_k)
        self.num_out_components = out_offsets[-1]
        # the path sums need an index_add unless every output component has exactly one path
        self.sum_paths = component_of_k != list(range(out_offsets[-1]))
        self.register_buffer("component_of_k", torch.tensor(component_of_k, dtype=torch.long), persistent=False)
        self.register_buffer("generic_path_of_k", torch.tensor(path_of_k, dtype=torch.long), persistent=False)
        # buffers, not attributes: they follow .to() and tracing sees them as inputs, so
        # compiled graphs and packages of these paths can be built
        coefficients = torch.cat(blocks) if blocks else torch.zeros(0, dtype=torch.float64)
        self.register_buffer("generic_coefficients", coefficients, persistent=False)

    def to_channel_major(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, irreps_in1.dim]`` (e3nn layout) -> ``[B, D1, mul]`` (components, then channels)."""
        num = x.shape[0]
        blocks: List[torch.Tensor] = []
        for mul, dim, start in self.in_entries:
            blocks.append(x.narrow(1, start, mul * dim).reshape(num, mul, dim).transpose(1, 2))
        return torch.cat(blocks, dim=1)

    def from_channel_major(self, z: torch.Tensor) -> torch.Tensor:
        """``[B, K, mul]`` per-path outputs -> ``[B, irreps_out.dim]`` (e3nn layout, paths summed)."""
        num = z.shape[0]
        if self.sum_paths:
            z = z.new_zeros((num, self.num_out_components, self.mul)).index_add(1, self.component_of_k, z)
        blocks: List[torch.Tensor] = []
        offset = 0
        for mul, dim, sources in self.outputs:
            if len(sources) == 0:
                blocks.append(z.new_zeros((num, mul * dim)))
            else:
                blocks.append(z.narrow(1, offset, dim).transpose(1, 2).reshape(num, mul * dim))
            offset += dim
        return torch.cat(blocks, dim=1)

    def _messages(self, x_cm: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Channel-major per-path products: ``x_cm [E, D1, mul]`` -> ``[E, K, mul]``.

        A path with a closed form is a few elementwise products of ``[E, mul]`` components:
        on a CPU much faster than a batched product of tiny matrices. The inputs are split
        into components once (``unbind``) and the outputs stacked once, so that the backward
        pass does not build a zero-filled full-size gradient for every slice. The generic
        paths take one matrix product and one batched product per group (see
        :meth:`_setup_channel_major`).
        """
        num = x_cm.shape[0]
        xs = x_cm.unbind(1)  # D1 x [E, mul]
        ys = y.unsqueeze(2).unbind(1)  # D2 x [E, 1]
        ws = weight.reshape(num, len(self.paths), self.mul).unbind(1)  # paths x [E, mul]
        components: List[torch.Tensor] = []
        for kind, p, i0, d1, j0, d2, d_out in self.cm_paths:
            wp = ws[p] * self.coefficients[p]
            if kind == 0:  # scalar_left: x scalar, z_k = w x y_k
                wx = wp * xs[i0]
                for k in range(d2):
                    components.append(wx * ys[j0 + k])
            elif kind == 1:  # scalar_right: y scalar, z_k = w y x_k
                wy = wp * ys[j0]
                for k in range(d1):
                    components.append(wy * xs[i0 + k])
            elif kind == 2:  # dot: z = w sum_i x_i y_i
                dot = xs[i0] * ys[j0]
                for i in range(1, d1):
                    dot = dot + xs[i0 + i] * ys[j0 + i]
                components.append(wp * dot)
            elif kind == 3:  # cross: z = w (x cross y)
                a0, a1, a2 = xs[i0], xs[i0 + 1], xs[i0 + 2]
                b0, b1, b2 = ys[j0], ys[j0 + 1], ys[j0 + 2]
                components.append(wp * (a1 * b2 - a2 * b1))
                components.append(wp * (a2 * b0 - a0 * b2))
                components.append(wp * (a0 * b1 - a1 * b0))
        blocks: List[torch.Tensor] = [torch.stack(components, dim=1)] if len(components) > 0 else []
        if len(self.generic_groups) > 0:
            coefficients = self.generic_coefficients.to(dtype=y.dtype)
            w_k = weight.reshape(num, len(self.paths), self.mul).index_select(1, self.generic_path_of_k)
            k = 0
            for i0, d1, num_k, start in self.generic_groups:
                c = coefficients.narrow(0, start, y.shape[1] * d1 * num_k).reshape(y.shape[1], d1 * num_k)
                a = torch.mm(y, c).reshape(num, d1, num_k)  # [E, d1, K_g]: y contracted with C
                part = torch.bmm(a.transpose(1, 2), x_cm.narrow(1, i0, d1))  # [E, K_g, mul]
                blocks.append(part * w_k.narrow(1, k, num_k))
                k += num_k
        return torch.cat(blocks, dim=1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The tensor product of ``x [E, irreps_in1.dim]`` and ``y [E, irreps_in2.dim]``
        with per-sample weights ``[E, weight_numel]`` -> ``[E, irreps_out.dim]``."""
        if self.channel_major:
            return self.from_channel_major(self._messages(self.to_channel_major(x), y, weight))
        return self._per_path(x, y, weight)

    def convolve(
        self,
        node_features: torch.Tensor,
        edge_attr: torch.Tensor,
        weight: torch.Tensor,
        edge_index: torch.Tensor,
    ) -> torch.Tensor:
        """Sum over neighbours of the products: ``sum_j TP(x_j, y_ij, w_ij)`` for each centre i.

        Equals ``index_add`` over ``edge_index[1]`` of ``forward(node_features[edge_index[0]], ...)``,
        with the layout changes done per atom rather than per edge.

        Shapes:
            ``node_features [N, irreps_in1.dim]``, ``edge_attr [E, irreps_in2.dim]``,
            ``weight [E, weight_numel]``, ``edge_index [2, E]`` -> ``[N, irreps_out.dim]``.
        """
        neighbour, centre = edge_index[0], edge_index[1]
        num_nodes = node_features.shape[0]
        if self.channel_major:
            x_cm = self.to_channel_major(node_features).index_select(0, neighbour)
            messages = self._messages(x_cm, edge_attr, weight)
            summed = messages.new_zeros((num_nodes, self.num_k, self.mul)).index_add(0, centre, messages)
            return self.from_channel_major(summed)
        messages = self._per_path(node_features.index_select(0, neighbour), edge_attr, weight)
        return messages.new_zeros((num_nodes, messages.shape[1])).index_add(0, centre, messages)

    def _per_path(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Path by path with the closed forms (any multiplicities)."""
        num = x.shape[0]
        parts: List[torch.Tensor] = []
        for p, (kind, s1, mul, d1, s2, d2, d_out, w0, i_out, cg_start) in enumerate(self.paths):
            x1 = x.narrow(1, s1, mul * d1).reshape(num, mul, d1)
            y2 = y.narrow(1, s2, d2)
            w = weight.narrow(1, w0, mul) * self.coefficients[p]
            if kind == 0:  # scalar_left
                part = (w * x1[:, :, 0]).unsqueeze(2) * y2.unsqueeze(1)
            elif kind == 1:  # scalar_right
                part = (w * y2).unsqueeze(2) * x1
            elif kind == 2:  # dot
                part = (w * torch.einsum("eui,ei->eu", x1, y2)).unsqueeze(2)
            elif kind == 3:  # cross
                part = torch.linalg.cross(x1, y2.unsqueeze(1).expand(num, mul, 3), dim=2) * w.unsqueeze(2)
            else:
                cg = self.cg.narrow(0, cg_start, d1 * d2 * d_out).reshape(d1, d2, d_out).to(device=x.device, dtype=x.dtype)
                part = torch.einsum("eui,ej,ijk->euk", x1, y2, cg) * w.unsqueeze(2)
            parts.append(part.reshape(num, mul * d_out))
        blocks: List[torch.Tensor] = []
        for mul, dim, sources in self.outputs:
            if len(sources) == 0:
                blocks.append(x.new_zeros((num, mul * dim)))
            else:
                block = parts[sources[0]]
                for q in sources[1:]:
                    block = block + parts[q]
                blocks.append(block)
        return torch.cat(blocks, dim=1)


    def extra_repr(self) -> str:
        return f"{self.irreps_in1} x {self.irreps_in2} -> {self.irreps_out}, {len(self.paths)} paths"
