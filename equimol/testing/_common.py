"""What every physics check shares: the report type, model evaluation, error scales.

Errors are relative with a floor of one unit: ``|difference| / max(scale, 1)`` where the
scale is the magnitude of the reference quantity in ASE units (``max |E|`` in eV, ``max |F|``
in eV/Å, ``max |S|`` in eV/Å³). Large quantities are compared relatively; quantities below
one unit are compared absolutely, so a structure whose energy happens to be near zero does
not blow the error up.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn
from torch_geometric.data import Batch, Data

from equimol import _keys as K

__all__ = ["InvarianceReport", "default_tolerance"]

#: Anything called as ``model(data, compute_forces=..., compute_stress=...)`` (or
#: ``model(data)``) that returns ``{"energy": [B], "forces"?: [N, 3], "stress"?: [B, 3, 3]}``.
Model = Callable[..., Mapping[str, torch.Tensor]]
Structures = Data | Sequence[Data]

_EXACT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}
_FINITE_DIFFERENCE_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-2}


def default_tolerance(dtype: torch.dtype, kind: str = "exact") -> float:
    """Default tolerance of a check run in ``dtype``.

    Args:
        dtype: floating dtype the model was evaluated in.
        kind: ``"exact"`` for properties that hold to round-off (symmetries, batching,
            gradient leaks, continuity at the cutoff): 1e-9 in float64, 1e-5 in float32;
            ``"finite_difference"`` for comparisons with finite differences, which carry a
            truncation error: 1e-6 in float64, 1e-2 in float32.
    """
    table = {"exact": _EXACT_TOLERANCE, "finite_difference": _FINITE_DIFFERENCE_TOLERANCE}.get(kind)
    if table is None:
        raise ValueError(f"unknown tolerance kind {kind!r}; expected 'exact' or 'finite_difference'")
    if dtype not in table:
        raise ValueError(f"no default {kind} tolerance for dtype {dtype}; pass tol explicitly")
    return table[dtype]


@dataclass(frozen=True)
class InvarianceReport:
    """The largest errors a check measured on energies and forces.

    Attributes:
        energy_error: largest relative energy error, ``|dE| / max(|E|, 1 eV)``.
        force_error: largest relative force error, ``max |dF| / max(max |F|, 1 eV/Å)``
            (per structure); ``None`` when the model returns no forces.
    """

    energy_error: float
    force_error: float | None = None

    @property
    def worst(self) -> float:
        """The larger of the two errors."""
        return max(self.energy_error, self.force_error or 0.0)


def relative(difference: float, scale: float) -> float:
    """``difference / max(scale, 1)``: relative above one unit, absolute below."""
    return float(difference) / max(float(scale), 1.0)


def as_structures(data: Structures) -> list[Data]:
    """One ``Data``, a list of them, or a PyG ``Batch``, as a list of single structures."""
    if isinstance(data, Batch):
        return data.to_data_list()
    if isinstance(data, Data):
        if getattr(data, K.BATCH, None) is not None:
            raise ValueError("a Data with a 'batch' field must be a torch_geometric Batch")
        return [data]
    structures = list(data)
    if not structures:
        raise ValueError("no structures given")
    for index, item in enumerate(structures):
        if not isinstance(item, Data) or getattr(item, K.BATCH, None) is not None:
            raise TypeError(f"structure {index} is not a single torch_geometric Data (got {type(item).__name__})")
    return structures


def structures_dtype(structures: Sequence[Data]) -> torch.dtype:
    """The floating dtype of the positions, which must be the same for all structures."""
    dtypes = {s[K.POS].dtype for s in structures}
    if len(dtypes) != 1:
        raise ValueError(f"the structures mix position dtypes {sorted(map(str, dtypes))}")
    return dtypes.pop()


def cast_structure(data: Data, dtype: torch.dtype) -> Data:
    """A copy with every floating tensor field in ``dtype``."""
    data = copy.copy(data)
    for key, value in data.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            data[key] = value.to(dtype)
    return data


def without_labels(data: Data) -> Data:
    """A copy without ``energy``/``forces``/``stress`` labels (they may differ between structures)."""
    data = copy.copy(data)
    for key in K.LABEL_KEYS:
        if key in data:
            del data[key]
    return data


def _float_dtype(module: nn.Module) -> torch.dtype | None:
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def _device(module: nn.Module) -> torch.device:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _accepts(function: Callable, name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class PreparedModel:
    """A model set up for checking: eval mode, the dtype of the data, the data's device.

    ``takes_forces`` / ``takes_stress``: whether its forward accepts ``compute_forces`` /
    ``compute_stress`` (a model with ``forward(data)`` alone is called without them).
    """

    def __init__(self, model: Model, device: torch.device) -> None:
        self.model = model
        self.device = device
        forward = model.forward if isinstance(model, nn.Module) else model
        self.takes_forces = _accepts(forward, "compute_forces")
        self.takes_stress = _accepts(forward, "compute_stress")

    def raw(self, data: Data, forces: bool = False, stress: bool = False) -> Mapping[str, torch.Tensor]:
        """The model's output on ``data`` (moved to the model's device), graph kept."""
        kwargs: dict[str, Any] = {}
        if self.takes_forces:
            kwargs["compute_forces"] = forces
        if self.takes_stress:
            kwargs["compute_stress"] = stress
        elif stress:
            raise ValueError("the model's forward takes no compute_stress argument; it cannot give a stress")
        if data[K.POS].device != self.device:
            data = copy.copy(data).to(self.device)
        out = self.model(data, **kwargs)
        if not isinstance(out, Mapping) or K.ENERGY not in out:
            raise ValueError(f"the model must return a dict with '{K.ENERGY}', got {type(out).__name__}")
        return out

    def __call__(self, data: Data, forces: bool = False, stress: bool = False) -> dict[str, torch.Tensor]:
        """Energies [B], and forces [N, 3] / stress [B, 3, 3] when asked and given, in
        float64 on the CPU and detached. A model without forces gives no ``forces`` key."""
        with torch.no_grad():  # detached results: no graph needs keeping
            out = self.raw(data, forces=forces, stress=stress)
        n_structures = int(data.num_graphs) if getattr(data, K.BATCH, None) is not None else 1
        result = {K.ENERGY: _detached(out[K.ENERGY]).reshape(-1)}
        if result[K.ENERGY].numel() != n_structures:
            raise ValueError(
                f"the model returned {result[K.ENERGY].numel()} energies for {n_structures} structure(s)"
            )
        if forces and out.get(K.FORCES) is not None:
            result[K.FORCES] = _detached(out[K.FORCES]).reshape(-1, 3)
        if stress and out.get(K.STRESS) is not None:
            result[K.STRESS] = _detached(out[K.STRESS]).reshape(-1, 3, 3)
        return result


def _detached(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float64)


@contextmanager
def prepared(model: Model, dtype: torch.dtype) -> Iterator[PreparedModel]:
    """The model in eval mode with its floating parameters in ``dtype``.

    A model in another dtype is deep-copied and cast, so the caller's model is not changed;
    otherwise it is switched to eval mode and its training flag restored afterwards.
    """
    if not isinstance(model, nn.Module):
        yield PreparedModel(model, torch.device("cpu"))
        return
    own_dtype = _float_dtype(model)
    if own_dtype is not None and own_dtype != dtype:
        model = copy.deepcopy(model).to(dtype)
    was_training = model.training
    model.eval()
    try:
        yield PreparedModel(model, _device(model))
    finally:
        model.train(was_training)
