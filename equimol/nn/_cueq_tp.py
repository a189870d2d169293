"""The convolution's tensor product evaluated by NVIDIA cuEquivariance (optional dependency).

``cuequivariance_torch.ChannelWiseTensorProduct`` computes the same ``"uvu"`` product as
e3nn's ``o3.TensorProduct`` in a convolution, with fused CUDA kernels on a GPU when the
``cuequivariance-ops-torch-cu12`` kernels are installed (a plain PyTorch fallback otherwise).
It orders its paths, weights and outputs by its own irrep order; this wrapper permutes the
weights in and the outputs back, so parameters, state dicts and numbers stay e3nn's.
Features with l <= 1 only: from l = 2 on its spherical-harmonic basis differs from e3nn's.

Install with ``pip install "equimol[cueq]"`` (plus ``cuequivariance-ops-torch-cu12`` on a GPU).
"""

from __future__ import annotations

from math import prod
from typing import Any

import torch
from e3nn import o3
from torch import nn

__all__ = ["CuEquivarianceTensorProduct"]


def _import_cuequivariance() -> tuple[Any, Any]:
    try:
        import cuequivariance as cue
        import cuequivariance_torch as cuet
    except ImportError as error:
        raise ImportError(
            "tensor_product='cueq' needs NVIDIA cuEquivariance: pip install \"equimol[cueq]\" "
            "(and cuequivariance-ops-torch-cu12 for its GPU kernels)"
        ) from error
    return cue, cuet


class CuEquivarianceTensorProduct(nn.Module):
    """``o3.TensorProduct`` of a :class:`~equimol.nn.TensorProductConv` (weighted ``"uvu"``
    paths, per-edge weights, l <= 1), evaluated by cuEquivariance.

    Shapes: ``x [E, irreps_in1.dim]``, ``y [E, irreps_in2.dim]``, ``weight [E, weight_numel]``
    (e3nn's order) -> ``[E, irreps_out.dim]`` (e3nn's layout).

    The cuEquivariance operation holds no parameters; one is built per device and dtype on
    first use and kept out of the state dict, which stays e3nn's.
    """

    def __init__(self, tp: o3.TensorProduct) -> None:
        super().__init__()
        cue, _ = _import_cuequivariance()
        for irreps in (tp.irreps_in1, tp.irreps_in2, tp.irreps_out):
            if any(ir.l > 1 for _, ir in irreps):
                raise ValueError(f"tensor_product='cueq' supports l <= 1 only, got {irreps}")
        for ins in tp.instructions:
            if ins.connection_mode != "uvu" or not ins.has_weight:
                raise ValueError(f"tensor_product='cueq' takes weighted 'uvu' paths only, got {ins}")
        self.irreps_in1, self.irreps_in2, self.irreps_out = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
        # cuEquivariance's paths: e3nn's (in generation order, which is e3nn's weight order)
        # sorted stably by cuEquivariance's order of the output irreps
        order = sorted(
            range(len(tp.instructions)),
            key=lambda k: cue.O3(tp.irreps_out[tp.instructions[k].i_out].ir.l, tp.irreps_out[tp.instructions[k].i_out].ir.p),
        )
        offsets, offset = [], 0
        for ins in tp.instructions:
            offsets.append(offset)
            offset += prod(ins.path_shape)
        weight_index = [i for k in order for i in range(offsets[k], offsets[k] + prod(tp.instructions[k].path_shape))]
        self.register_buffer("weight_index", torch.tensor(weight_index, dtype=torch.long), persistent=False)
        # cuEquivariance's output entries follow its path order; e3nn's entry i_out of path k
        # is cuEquivariance's entry order.index(k)
        cue_out = [tp.irreps_out[tp.instructions[k].i_out] for k in order]
        cue_starts = [sum(entry.dim for entry in cue_out[:s]) for s in range(len(cue_out))]
        path_of_entry = {ins.i_out: k for k, ins in enumerate(tp.instructions)}
        output_index = []
        for entry, (mul, ir) in enumerate(tp.irreps_out):
            s = order.index(path_of_entry[entry])
            output_index.extend(range(cue_starts[s], cue_starts[s] + mul * ir.dim))
        self.register_buffer("output_index", torch.tensor(output_index, dtype=torch.long), persistent=False)
        self.filter_out = sorted({cue.O3(ir.l, ir.p) for _, ir in tp.irreps_out})
        self._operations: dict[tuple, nn.Module] = {}

    def _operation(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        key = (device, dtype)
        if key not in self._operations:
            cue, cuet = _import_cuequivariance()
            self._operations[key] = cuet.ChannelWiseTensorProduct(
                cue.Irreps("O3", str(self.irreps_in1)),
                cue.Irreps("O3", str(self.irreps_in2)),
                self.filter_out,
                layout=cue.mul_ir,
                shared_weights=False,
                internal_weights=False,
                device=device,
                dtype=dtype,
                math_dtype=dtype,
                use_fallback=device.type != "cuda",
            )
        return self._operations[key]

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        operation = self._operation(x.device, x.dtype)
        out = operation(x, y, weight.index_select(-1, self.weight_index))
        return out.index_select(-1, self.output_index)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_operations"] = {}
        return state
