"""Every architecture that ``equimol compile`` and ``compile: true`` meet gives the eager numbers.

Compiled models and ``.pt2`` packages are built from one traced graph of the network and its
edge gradients (``trace_edge_gradients``; packages then go through ``torch.export``). Tracing
is where an architecture can fail: a constant that is not a buffer, or a size the trace
specialised on, after which the graph runs for one number of atoms only. For each
configuration below, at tiny width, the inference graph traced on a 5-atom example is run
on structures of 9 and 4 atoms and compared with eager autograd: per-atom energies, forces
and the virial (stress times volume), to 1e-5 relative in float32 and 1e-9 in float64. The
configurations are the architectures of every shipped config (read from ``configs/``) and a
matrix over the options ``EquivariantPotential`` accepts. One architecture also goes through
``torch.export`` here; compiling with AOTInductor is tested on a package
(``tests/test_aot.py``), and ``torch.compile`` of the training graph in
``tests/test_compiled_potential.py``. (Tracing takes 5-40 s per architecture.)
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from equimol.models._traced import forces_from_edge_gradients, trace_edge_gradients
from equimol.models.aot import _example_graph, export_program
from equimol.models.equivariant import EquivariantPotential, radial_widths

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SPECIES = ["H", "C", "O"]
CUTOFF = 3.0
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-9}
# what sets the graph's structure; the rest (species, cutoff, widths, statistics) only sizes it
ARCHITECTURE = ("l_max", "parity", "num_layers", "self_connection", "correlation", "radial_hidden", "tensor_product")
DEFAULTS = {name: inspect.signature(EquivariantPotential).parameters[name].default for name in ARCHITECTURE}


def _equivariant_init_args(node) -> list[dict]:
    """The ``init_args`` of every EquivariantPotential anywhere in a parsed YAML document."""
    found = []
    if isinstance(node, dict):
        if str(node.get("class_path", "")).endswith("EquivariantPotential"):
            found.append(dict(node.get("init_args") or {}))
        for value in node.values():
            found += _equivariant_init_args(value)
    elif isinstance(node, list):
        for value in node:
            found += _equivariant_init_args(value)
    return found


def shipped_architectures() -> dict[str, dict]:
    """``{first config using it: architecture options}`` for each distinct architecture in configs/."""
    architectures: dict[str, dict] = {}
    seen = set()
    for path in sorted(CONFIGS.rglob("*.yaml")):
        for init_args in _equivariant_init_args(yaml.safe_load(path.read_text())):
            options = {key: init_args.get(key, DEFAULTS[key]) for key in ARCHITECTURE}
            # the depth of the radial network sets the graph, not its width
            options["radial_hidden"] = [8] * len(radial_widths(options["radial_hidden"]))
            key = repr(sorted(options.items()))
            if key not in seen:
                seen.add(key)
                architectures[f"{path.relative_to(CONFIGS)}:{len(architectures)}"] = options
    return architectures


# The options EquivariantPotential accepts, each value at least once: l_max 0-3, 1-6 layers,
# parity on and off, self-connection, correlation 1-3, radial depth, both dtypes and both
# tensor-product backends that run on a CPU. Three layers from l_max 2 on, so that a middle
# layer uses the generic (Clebsch-Gordan) paths.
MATRIX: dict[str, tuple[dict, torch.dtype]] = {
    "l0-6 layers": (dict(l_max=0, num_layers=6), torch.float32),
    "l1-no parity-self-connection": (dict(l_max=1, parity=False, num_layers=2, self_connection=True), torch.float64),
    "l3-no parity-3 layers": (dict(l_max=3, parity=False, num_layers=3), torch.float64),
    "l1-e3nn-correlation 2-radial 2x8": (
        dict(l_max=1, num_layers=2, tensor_product="e3nn", correlation=2, radial_hidden=[8, 8]),
        torch.float32,
    ),
}


def cases() -> list:
    shipped = [pytest.param(options, torch.float32, id=name) for name, options in shipped_architectures().items()]
    matrix = [pytest.param(options, dtype, id=name) for name, (options, dtype) in MATRIX.items()]
    return shipped + matrix


def test_the_shipped_configs_are_found():
    """The search reads the configs: the peers' compiled models and an l_max 2 network are there."""
    architectures = list(shipped_architectures().values())
    assert any(options.get("correlation") == 3 and options.get("self_connection") for options in architectures)
    assert any(options.get("l_max") == 2 and options.get("num_layers") == 3 for options in architectures)


def random_graph(num_atoms: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, ...]:
    """``types, edge_vec, edge_index`` of a random molecule: every pair within the cutoff."""
    rng = np.random.default_rng(seed)
    pos = torch.as_tensor(rng.uniform(0.0, 3.5, (num_atoms, 3)), dtype=dtype)
    distances = torch.cdist(pos, pos)
    centre, neighbour = torch.nonzero((distances < CUTOFF) & (distances > 0), as_tuple=True)
    edge_index = torch.stack([neighbour, centre])
    edge_vec = pos[edge_index[0]] - pos[edge_index[1]]
    types = torch.as_tensor(rng.integers(0, len(SPECIES), num_atoms))
    return types, edge_vec, edge_index


def eager_outputs(model: EquivariantPotential, types, edge_vec, edge_index) -> dict[str, torch.Tensor]:
    edge_vec = edge_vec.clone().requires_grad_(True)
    per_atom = model.network(types, edge_vec, edge_index)
    (edge_grad,) = torch.autograd.grad(per_atom.sum(), edge_vec)
    return {
        "per_atom_energy": per_atom.detach(),
        "forces": forces_from_edge_gradients(edge_grad, edge_index, types.shape[0]),
        "virial": -(edge_vec.detach().T @ edge_grad),
    }


def tiny_model(options: dict, dtype: torch.dtype) -> EquivariantPotential:
    torch.manual_seed(0)
    model = EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=2, avg_num_neighbors=5.0, **options).to(dtype).eval()
    with torch.no_grad():  # shifts and scales away from 0 and 1, so that they are exercised
        model.network.scale_shift.set_values(scales=[1.5, 0.7, 1.1], shifts=[-0.3, 0.2, 0.5])
    return model


def assert_graph_gives_eager_outputs(graph, model: EquivariantPotential, dtype: torch.dtype) -> None:
    """``graph(types, edge_vec, edge_index) -> (per-atom energies, forces, dE/d edge_vec)``
    against eager autograd, on two structures of other sizes than the traced example."""
    for num_atoms, seed in ((9, 1), (4, 2)):
        types, edge_vec, edge_index = random_graph(num_atoms, dtype, seed)
        expected = eager_outputs(model, types, edge_vec, edge_index)
        per_atom, forces, edge_grad = graph(types, edge_vec, edge_index)
        got = {"per_atom_energy": per_atom, "forces": forces, "virial": -(edge_vec.T @ edge_grad)}
        for key, value in expected.items():
            scale = value.abs().max().clamp_min(1e-12)
            error = float((got[key] - value).abs().max() / scale)
            assert error < TOLERANCE[dtype], f"{key} of {num_atoms} atoms: relative error {error:.1e}"


@pytest.mark.parametrize("options, dtype", cases())
def test_traced_graph_gives_the_eager_energies_forces_and_virial(options, dtype):
    model = tiny_model(options, dtype)
    network = model.network
    params = {name: p.detach() for name, p in network.named_parameters()}
    buffers = dict(network.named_buffers())
    example = _example_graph(len(SPECIES), dtype, torch.device("cpu"))
    traced = trace_edge_gradients(network, params, buffers, *example, differentiable=False)
    assert_graph_gives_eager_outputs(lambda *graph: traced(params, buffers, *graph), model, dtype)


def test_exported_program_of_products_at_l_2_runs_for_any_number_of_atoms():
    """The program a package is compiled from. Products at l_max 2 once tied the number of
    atoms to the 5 components of an l = 2 feature (the trace's example has 5 atoms), and
    export refused the graph."""
    model = tiny_model(dict(l_max=2, num_layers=2, correlation=2, self_connection=True), torch.float32)
    assert_graph_gives_eager_outputs(export_program(model).module(), model, torch.float32)
