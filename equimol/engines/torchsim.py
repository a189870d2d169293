"""TorchSim engine: an equimol potential as a TorchSim ``ModelInterface``.

`TorchSim <https://github.com/TorchSim/torch-sim>`_ (``pip install torch-sim-atomistic``)
runs molecular dynamics and relaxations of many systems at once: its integrators (NVE, NVT
Langevin and Nose-Hoover, NPT) and optimizers (FIRE, gradient descent, with or without the
cell) call a model on a ``SimState`` that holds every system, and get energies ``[B]``,
forces ``[N, 3]`` and stress ``[B, 3, 3]`` back. :class:`EquimolTorchSimModel` is that model:
it builds the batched radius graph of the state (one vesin neighbour list per system, reused
from call to call) and hands it to an :class:`~equimol.engines.InferenceBackend`, so a
checkpoint, a compiled model and a ``.pt2`` package all run the same way.

Example::

    import torch
    import torch_sim as ts
    from ase.build import bulk, molecule

    model = EquimolTorchSimModel("model.ckpt", dtype=torch.float64)
    systems = [bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3), bulk("Cu", "fcc", a=3.6).repeat(2)]
    final = ts.integrate(systems, model, integrator=ts.nvt_langevin, n_steps=1000,
                         temperature=300.0, timestep=0.002)   # K, ps

Units are TorchSim's ``metal`` units, which are equimol's: Å, eV, eV/Å, eV/Å³ (ASE's stress
sign). TorchSim cells are column vectors (``state.cell[b, :, k]`` is lattice vector ``k``);
the graph uses rows (``state.row_vector_cell``), as equimol and ASE do.
"""

from __future__ import annotations

import os

import ase
import numpy as np
import torch
import vesin
from torch import nn
from torch_geometric.data import Batch

try:
    from torch_sim.models.interface import ModelInterface
    from torch_sim.state import SimState
except ImportError as error:
    raise ImportError(
        "the TorchSim engine needs TorchSim: pip install torch-sim-atomistic (or equimol's md extra)"
    ) from error

from equimol import _keys as K
from equimol.data.graph import DEFAULT_MIN_DISTANCE, atoms_to_graph
from equimol.engines.backends import InferenceBackend, load_backend

__all__ = ["EquimolTorchSimModel", "state_graph"]


class EquimolTorchSimModel(ModelInterface):
    """A trained equimol potential as a TorchSim model.

    Args:
        model: a checkpoint (``.ckpt``), a package (``.pt2``), a model object or an
            :class:`~equimol.engines.InferenceBackend`.
        device: torch device (default: CUDA when available, else the CPU; a package runs on
            the device type it was compiled for).
        dtype: floating dtype of the computation (default: the model's own; ``torch.float64``
            for tight energy conservation). TorchSim states are converted to it.
        compute_stress: return ``stress [B, 3, 3]`` (needed by cell optimizers and NPT); zeros
            for states that are not periodic.
        compile: as in :func:`~equimol.engines.load_backend`.
        cutoff: radius of the graph, Å (default and minimum: the model's cutoff).
        min_distance: two atoms closer than this (Å) are an error naming the system and the
            atoms, as in the ASE calculator (0 turns the check off).

    :meth:`forward` takes a ``SimState`` (or TorchSim's dict form of one) holding any number
    of systems of any sizes and elements; all of them go through the model in one call.
    """

    def __init__(
        self,
        model: str | os.PathLike | nn.Module | InferenceBackend,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        compute_stress: bool = True,
        compile: bool | None = None,
        cutoff: float | None = None,
        min_distance: float = DEFAULT_MIN_DISTANCE,
    ) -> None:
        super().__init__()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.backend = load_backend(model, device=device, dtype=dtype, compile=compile)
        self._device = self.backend.device
        self._dtype = self.backend.dtype
        self._compute_stress = bool(compute_stress)
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"
        if cutoff is not None and float(cutoff) < self.backend.cutoff:
            raise ValueError(f"cutoff={cutoff} Å is smaller than the model's cutoff of {self.backend.cutoff} Å")
        self.cutoff = float(cutoff) if cutoff is not None else self.backend.cutoff
        self.min_distance = float(min_distance)
        # one neighbour list for all systems and calls: it keeps its buffers
        self._neighbours = vesin.NeighborList(cutoff=self.cutoff, full_list=True) if self.cutoff > 0 else None

    @property
    def compute_stress(self) -> bool:
        """Whether :meth:`forward` returns ``stress``."""
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    @property
    def compute_forces(self) -> bool:
        """Always True: forces are what the integrators need."""
        return self._compute_forces

    @compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        if not value:
            raise NotImplementedError("an equimol potential always computes forces")

    def forward(self, state: SimState | dict, **kwargs) -> dict[str, torch.Tensor]:
        """``energy [B]`` eV, ``forces [N, 3]`` eV/Å and, when :attr:`compute_stress`,
        ``stress [B, 3, 3]`` eV/Å³ of every system in ``state`` (on the model's device and in
        its dtype; not differentiable)."""
        if isinstance(state, dict):
            state = SimState(**{"masses": torch.ones_like(state["positions"][:, 0]), **state})
        if state.atomic_numbers is None:
            raise ValueError("the state has no atomic_numbers: an equimol potential needs the elements")
        graph = state_graph(
            state,
            self.cutoff,
            dtype=self.dtype,
            device=self.device,
            neighbour_list=self._neighbours,
            min_distance=self.min_distance,
        )
        want_stress = self.compute_stress and bool(graph.pbc.all(dim=1).any())
        out = self.backend.compute(graph, compute_stress=want_stress)
        results = {"energy": out[K.ENERGY], "forces": out[K.FORCES]}
        if self.compute_stress:
            results["stress"] = out[K.STRESS] if want_stress else graph.cell.new_zeros(graph.cell.shape)
        return results


def state_graph(
    state: SimState,
    cutoff: float,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    neighbour_list: vesin.NeighborList | None = None,
    min_distance: float = DEFAULT_MIN_DISTANCE,
) -> Batch:
    """The batched radius graph of a TorchSim ``SimState``, in equimol's fields.

    Each system's graph is built as the ASE calculator builds it (``atoms_to_graph``: the
    same checks, and a vesin neighbour list on the CPU in float64); the graphs are joined
    into one ``Batch`` with ``pos [N, 3]`` (the state's own order of atoms),
    ``z [N]``, ``cell [B, 3, 3]`` (lattice vectors as rows), ``pbc [B, 3]``,
    ``edge_index [2, E]``, ``edge_shift [E, 3]`` and ``batch [N] = state.system_idx``
    (the atoms of each system contiguous and the systems in order, as TorchSim keeps them).

    Args:
        state: the systems (TorchSim 0.3's ``pbc`` is one bool for all of them; a ``[3]``
            or ``[B, 3]`` tensor works too).
        cutoff: radius, Å.
        dtype, device: of the graph's floating fields (default: the state's).
        neighbour_list: a full vesin ``NeighborList`` of this cutoff to reuse.
        min_distance: the smallest distance, Å, two atoms (or periodic images) may have;
            :class:`~equimol.data.graph.CloseAtomsError` names the system and its atoms
            otherwise. 0 turns the check off.
    """
    dtype = dtype or state.positions.dtype
    device = torch.device(device) if device is not None else state.positions.device
    positions = state.positions.detach()
    system_idx = state.system_idx.detach().to(torch.long)
    num_systems = int(system_idx.max()) + 1 if system_idx.numel() else 0
    cells = state.row_vector_cell.detach().reshape(-1, 3, 3)
    if cells.shape[0] == 1 and num_systems > 1:
        cells = cells.expand(num_systems, 3, 3)
    pbc = torch.as_tensor(state.pbc, dtype=torch.bool).cpu()
    pbc = (pbc.reshape(1).expand(3) if pbc.numel() == 1 else pbc).reshape(-1, 3).expand(num_systems, 3)

    positions_np = positions.cpu().to(torch.float64).numpy()
    cells_np = cells.cpu().to(torch.float64).numpy()
    pbc_np = pbc.numpy()
    numbers = state.atomic_numbers.detach().cpu().numpy()
    systems = system_idx.cpu().numpy()
    if len(systems) > 1 and bool(np.any(systems[1:] < systems[:-1])):
        raise ValueError("TorchSim state: the atoms of each system must be contiguous, systems in order")
    bounds = np.searchsorted(systems, np.arange(num_systems + 1))
    edge_parts, shift_parts = [], []
    for b in range(num_systems):
        start, stop = int(bounds[b]), int(bounds[b + 1])
        if stop == start:
            continue
        # the ASE calculator's own path: the same checks, messages and neighbour search
        atoms = ase.Atoms(numbers=numbers[start:stop], positions=positions_np[start:stop], cell=cells_np[b],
                          pbc=pbc_np[b])
        graph = atoms_to_graph(atoms, cutoff, dtype=dtype, on_isolated="ignore", min_distance=min_distance,
                               source=f"TorchSim system {b}", neighbour_list=neighbour_list)
        edge_parts.append(graph.edge_index + start)
        shift_parts.append(graph.edge_shift)
    edge_index = torch.cat(edge_parts, dim=1) if edge_parts else torch.zeros((2, 0), dtype=torch.long)
    edge_shift = torch.cat(shift_parts, dim=0) if shift_parts else torch.zeros((0, 3), dtype=dtype)

    graph = Batch(
        pos=positions.to(device=device, dtype=dtype),
        z=state.atomic_numbers.detach().to(device=device, dtype=torch.long),
        cell=cells.to(device=device, dtype=dtype).contiguous(),
        pbc=pbc.to(device),
        edge_index=edge_index.to(device),
        edge_shift=edge_shift.to(device=device, dtype=dtype),
        batch=system_idx.to(device),
    )
    graph._num_graphs = num_systems
    return graph

