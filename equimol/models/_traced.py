"""Energies and their edge gradients as one compiled graph, for training and inference.

``torch.compile`` cannot compile a double backward (a loss on forces, which are themselves a
gradient), so compiling the network alone leaves the force computation and its backward to
eager autograd. Here the function ``(parameters, edge vectors) -> (per-atom energies,
dE/d(edge vectors))`` is traced once with ``make_fx`` (symbolic shapes, the backward pass of
the forces written out as ordinary operations) and that graph is compiled: its own backward,
which training needs, is then a first derivative that ``torch.compile`` handles.

Forces and stress follow from the edge gradients exactly as autograd would give them: for an
edge ``r_e = pos[j] - pos[i] + shift @ cell`` with ``g_e = dE/dr_e``,
``dE/dpos_j += g_e``, ``dE/dpos_i -= g_e`` and ``dE/dstrain = sum_e r_e (x) g_e``.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Callable

import torch
from torch import nn
from torch_geometric.data import Data
from torch_geometric.utils import scatter

from equimol import _keys as K
from equimol.models.base import num_structures, stress_from_virial, structure_index

_log = logging.getLogger(__name__)

__all__ = [
    "CompileTime",
    "TracedEdgeGradients",
    "outputs_from_edge_gradients",
    "forces_from_edge_gradients",
    "trace_edge_gradients",
    "virial_from_edge_gradients",
]


def forces_from_edge_gradients(edge_grad: torch.Tensor, edge_index: torch.Tensor, num_atoms: int) -> torch.Tensor:
    """``forces [N, 3] = -dE/dpos`` from ``edge_grad [E, 3] = dE/d(edge vector)``.

    Edge vectors point from the centre ``edge_index[1]`` to the neighbour ``edge_index[0]``.
    """
    forces = edge_grad.new_zeros((num_atoms, 3))
    forces = forces.index_add(0, edge_index[1], edge_grad)
    return forces.index_add(0, edge_index[0], edge_grad, alpha=-1.0)


def virial_from_edge_gradients(
    edge_vec: torch.Tensor, edge_grad: torch.Tensor, edge_structure: torch.Tensor, num_structures: int
) -> torch.Tensor:
    """``dE/dstrain [B, 3, 3]`` for a symmetric strain: ``sym(sum_e r_e (x) g_e)`` per structure.

    Args:
        edge_vec: [E, 3] Å.
        edge_grad: [E, 3] eV/Å.
        edge_structure: [E] structure index of each edge.
        num_structures: B.
    """
    outer = (edge_vec.unsqueeze(2) * edge_grad.unsqueeze(1)).reshape(-1, 9)
    virial = outer.new_zeros((num_structures, 9)).index_add(0, edge_structure, outer).reshape(-1, 3, 3)
    return 0.5 * (virial + virial.transpose(1, 2))


def outputs_from_edge_gradients(
    data: Data,
    edge_vec: torch.Tensor,
    per_atom: torch.Tensor,
    forces: torch.Tensor,
    edge_grad: torch.Tensor,
    compute_forces: bool = True,
    compute_stress: bool = False,
) -> dict[str, torch.Tensor]:
    """A potential's outputs (as :meth:`~equimol.models.Potential.forward` gives them) from
    the outputs of a traced graph or a package on the edges of ``data``.

    Args:
        data: the graph or batch (``edge_index``, ``cell``, ``pbc``, ``batch``).
        edge_vec: [E, 3] Å, the edge vectors the graph was evaluated on.
        per_atom: [N] eV; forces: [N, 3] eV/Å; edge_grad: [E, 3] eV/Å, ``dE/d edge_vec``.

    Returns:
        ``energy [B]``, ``per_atom_energy [N]``, and when asked ``forces [N, 3]`` and
        ``stress [B, 3, 3]`` eV/Å³ (from the virial of the edge gradients).
    """
    structures, count = structure_index(data), num_structures(data)
    out = {K.ENERGY: scatter(per_atom, structures, dim=0, dim_size=count, reduce="sum"), K.PER_ATOM_ENERGY: per_atom}
    if compute_forces:
        out[K.FORCES] = forces
    if compute_stress:
        edge_structure = structures.index_select(0, data.edge_index[1])
        virial = virial_from_edge_gradients(edge_vec, edge_grad, edge_structure, count)
        out[K.STRESS] = stress_from_virial(virial, data)
    return out


class CompileTime:
    """Seconds spent making one graph: tracing it, then compiling it and running it once.

    ``torch.compile`` compiles on the first call, so ``first_call`` is compilation (or, with
    a warm on-disk cache, loading the compiled code) plus one evaluation.
    """

    def __init__(self, what: str, trace: float, first_call: float = float("nan")) -> None:
        self.what = what
        self.trace = trace
        self.first_call = first_call

    @property
    def total(self) -> float:
        return self.trace + self.first_call

    def __repr__(self) -> str:
        return (f"{self.what} graph ready in {self.total:.1f} s (trace {self.trace:.1f} s, "
                f"compile and first call {self.first_call:.1f} s)")


class TracedEdgeGradients:
    """``network(types, edge_vec, edge_index) -> per-atom energies [N]``, with the forces and
    ``dE/d edge_vec`` (for the stress), traced and compiled on first use.

    One graph is kept per (device, dtype, differentiable): the differentiable one (training:
    its outputs carry gradients to the parameters) and the inference one (parameters frozen
    or gradients off). Shapes are symbolic, so batches of any size reuse the graph.

    Not a module: it holds the network by reference (its parameters stay the network's own,
    read at each call) and is left out of copies and pickles, which trace again when used.
    The trace fixes the network's structure: after replacing modules inside it (for example
    ``TensorProductConv.set_tensor_product``), build a new one (``model.set_compile(True)``).

    The time each graph took to make is kept in :attr:`compile_times` (one
    :class:`CompileTime` per graph, in the order they were made) and logged at INFO level.

    Args:
        network: the module mapping ``types [N]``, ``edge_vec [E, 3]`` Å, ``edge_index [2, E]``
            to per-atom energies ``[N]`` eV.
        compile: ``torch.compile`` the traced graph (False runs the traced graph as it is,
            which is useful for testing the trace).
    """

    def __init__(self, network: nn.Module, compile: bool = True) -> None:
        self.network = network
        self.compile = bool(compile)
        self._graphs: dict[tuple, Callable] = {}
        self._warm: set[tuple] = set()
        self.compile_times: list[CompileTime] = []
        # where each parameter and buffer lives, found once: reading them through these slots
        # costs far less per call than walking the module tree (named_parameters)
        self._parameter_slots = _slots(network, "_parameters")
        self._buffer_slots = _slots(network, "_buffers")

    def __deepcopy__(self, memo: dict) -> "TracedEdgeGradients":
        # the copy follows the copied network (the same object the copied model holds)
        return TracedEdgeGradients(copy.deepcopy(self.network, memo), self.compile)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_graphs={}, _warm=set(), compile_times=[])
        return state

    def __call__(
        self, types: torch.Tensor, edge_vec: torch.Tensor, edge_index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-atom energies ``[N]`` eV, forces ``[N, 3]`` eV/Å and ``dE/d edge_vec [E, 3]`` eV/Å.

        Differentiable with respect to the network's parameters when gradients are enabled
        and a parameter requires them (training); ``edge_vec`` is treated as data. A network
        whose parameters require gradients uses the differentiable graph even with gradients
        off (validation), so that it is not compiled a second time; the outputs are then
        detached.
        """
        params = {name: module._parameters[attr] for name, module, attr in self._parameter_slots}
        buffers = {name: module._buffers[attr] for name, module, attr in self._buffer_slots}
        differentiable = any(p.requires_grad for p in params.values())
        key = (edge_vec.device, edge_vec.dtype, differentiable)
        graph = self._graphs.get(key)
        timing = None
        if graph is None:
            start = time.perf_counter()
            graph = self._trace(params, buffers, types, edge_vec.detach(), edge_index, differentiable)
            self._graphs[key] = graph
            what = f"{'training' if differentiable else 'inference'} ({edge_vec.device.type}, {edge_vec.dtype})"
            timing = CompileTime(what, time.perf_counter() - start)
        grad_enabled = torch.is_grad_enabled()
        start = time.perf_counter()
        with torch.set_grad_enabled(differentiable):
            outputs = self._run(key, graph, (params, buffers, types, edge_vec.detach(), edge_index))
        if timing is not None:
            timing.first_call = time.perf_counter() - start
            self.compile_times.append(timing)
            _log.info("%s", timing)
        if differentiable and not grad_enabled:
            outputs = tuple(output.detach() for output in outputs)
        return outputs

    def _run(self, key: tuple, graph: Callable, inputs: tuple) -> tuple[torch.Tensor, ...]:
        """Call a graph; once it has run, skip re-checking the guards of ``torch.compile``
        (a large part of a small molecule's call). A call that would need a new compilation
        (a shape the graph does not cover) is refused in that mode and repeated with guards."""
        if self.compile and key in self._warm:
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return graph(*inputs)
            except RuntimeError as error:
                if "skip_guard_eval_unsafe" not in str(error):
                    raise
        out = graph(*inputs)
        self._warm.add(key)
        return out

    def _trace(self, params, buffers, types, edge_vec, edge_index, differentiable: bool) -> Callable:
        graph = trace_edge_gradients(self.network, params, buffers, types, edge_vec, edge_index, differentiable)
        return torch.compile(graph, dynamic=True) if self.compile else graph


def trace_edge_gradients(
    network: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    types: torch.Tensor,
    edge_vec: torch.Tensor,
    edge_index: torch.Tensor,
    differentiable: bool,
) -> torch.fx.GraphModule:
    """The graph ``(params, buffers, types, edge_vec, edge_index) -> (per-atom energies [N],
    forces [N, 3], dE/d edge_vec [E, 3])`` of ``network``, traced with symbolic shapes.

    ``params`` and ``buffers`` map the network's qualified names to tensors (its own, or
    replacements of the same shapes); the example ``types``, ``edge_vec`` and ``edge_index``
    only fix dtypes and devices. ``differentiable`` keeps the graph differentiable with
    respect to the parameters (training); otherwise no autograd bookkeeping is recorded.
    """
    from torch.func import functional_call
    from torch.fx.experimental.proxy_tensor import make_fx

    def energies_and_edge_gradients(params, buffers, types, edge_vec, edge_index):
        with torch.enable_grad():
            edge_vec = edge_vec.requires_grad_(True)
            per_atom = functional_call(network, (params, buffers), (types, edge_vec, edge_index))
            (edge_grad,) = torch.autograd.grad(per_atom.sum(), edge_vec, create_graph=differentiable)
        forces = forces_from_edge_gradients(edge_grad, edge_index, types.shape[0])
        return per_atom, forces, edge_grad

    fake_mode, inputs = _symbolic_inputs(params, buffers, types, edge_vec.detach(), edge_index)
    with fake_mode, torch.set_grad_enabled(differentiable):
        graph = make_fx(energies_and_edge_gradients)(*inputs)
    if differentiable:
        _reattach_saved_outputs(graph)
    return graph


def _symbolic_inputs(params: dict, buffers: dict, types, edge_vec, edge_index) -> tuple:
    """Fake copies of the inputs to trace with: the number of atoms and of edges symbolic,
    every shape of the weights fixed.

    Tracing with ``tracing_mode="symbolic"`` would make every size symbolic, the weights'
    included, and give equal sizes one symbol: an example with as many atoms as some weight
    has rows (5 atoms, and the 5 components of an l = 2 feature) then ties the two, and
    the graph only runs for that number of atoms. Fixed weight shapes also mean less
    symbolic arithmetic, so tracing is faster.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

    mode = FakeTensorMode(shape_env=ShapeEnv())

    def fixed(tensor: torch.Tensor) -> torch.Tensor:
        return mode.from_tensor(tensor, static_shapes=True)

    def symbolic(tensor: torch.Tensor, dim: int) -> torch.Tensor:
        sizes = [DimDynamic.DYNAMIC if d == dim else DimDynamic.STATIC for d in range(tensor.dim())]
        return mode.from_tensor(tensor, symbolic_context=StatelessSymbolicContext(dynamic_sizes=sizes))

    inputs = (
        {name: fixed(p) for name, p in params.items()},
        {name: fixed(b) for name, b in buffers.items()},
        symbolic(types, 0),
        symbolic(edge_vec, 0),
        symbolic(edge_index, 1),
    )
    return mode, inputs


def _slots(network: nn.Module, kind: str) -> list[tuple[str, nn.Module, str]]:
    """``(qualified name, owning module, attribute)`` of every parameter (``kind="_parameters"``)
    or buffer (``"_buffers"``) of ``network``, in ``named_parameters`` / ``named_buffers`` order."""
    names = [name for name, _ in (network.named_parameters() if kind == "_parameters" else network.named_buffers())]
    slots = []
    for name in names:
        owner, _, attr = name.rpartition(".")
        slots.append((name, network.get_submodule(owner) if owner else network, attr))
    return slots


def _reattach_saved_outputs(graph: torch.fx.GraphModule) -> None:
    """Remove the ``detach`` nodes of a traced double-differentiable graph, in place.

    Autograd saves the outputs of operations such as ``sigmoid``, ``tanh``, ``exp`` or
    ``sqrt`` for their backward, and ``make_fx`` records each unpacked saved output as a
    ``detach`` of it. The backward written into the graph then uses a detached copy, and a
    loss on the forces loses the gradient that flows through it (the parameter gradients of
    a gated network come out wrong). The network itself detaches nothing, so every ``detach``
    in the trace is such a record and the derivative is restored by using the tensor itself.
    """
    for node in list(graph.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            graph.graph.erase_node(node)
    graph.graph.lint()
    graph.recompile()
