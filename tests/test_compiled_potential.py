"""The compiled energy-and-forces graph of EquivariantPotential (``compile=True``).

The traced graph must give the eager model's energies, forces and stresses, and, for training,
the same parameter gradients of a loss on all three (a second derivative of the energy). The
trace is checked without ``torch.compile`` (fast), then one training step goes through the
real compiled graph (slow: compiling takes about a minute of CPU time).
"""

from __future__ import annotations

import ase
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from equimol.data.graph import atoms_to_graph
from equimol.models._traced import TracedEdgeGradients
from equimol.models.equivariant import EquivariantPotential

CUTOFF = 3.0
SPECIES = ["H", "C", "O"]


def batch_of(structures: list[ase.Atoms]) -> Batch:
    return Batch.from_data_list([atoms_to_graph(atoms, CUTOFF, dtype=torch.float64) for atoms in structures])


def eager_and_traced(
    compile: bool, num_layers: int = 2, channels: int = 4, **options
) -> tuple[EquivariantPotential, EquivariantPotential]:
    """Two float64 models with the same weights; the second through the traced graph.

    Three layers make odd scalars (tanh) besides the gates (sigmoid): both have backward
    passes that use their outputs, the case the trace must get right.
    """
    torch.manual_seed(0)
    eager = EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=channels, num_layers=num_layers, **options).double()
    traced = EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=channels, num_layers=num_layers, **options).double()
    traced.load_state_dict(eager.state_dict())
    traced.traced = TracedEdgeGradients(traced.network, compile=compile)
    return eager, traced


def loss_of(out: dict[str, torch.Tensor]) -> torch.Tensor:
    return out["energy"].square().sum() + 10.0 * out["forces"].square().sum() + 100.0 * out["stress"].square().sum()


def assert_same_frozen_inference(eager, traced, batch) -> None:
    """Frozen parameters (the calculator's copy): the traced graph gives the eager values."""
    for parameter in traced.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        got = traced.eval()(batch, compute_stress=True)
    expected = eager.eval()(batch, compute_stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(got[key], expected[key].detach(), rtol=1e-10, atol=1e-12)


def assert_same_training_gradients(eager, traced, batch) -> None:
    eager.train()
    traced.train()
    for model in (eager, traced):
        model.zero_grad(set_to_none=True)
        loss_of(model(batch, compute_stress=True)).backward()
    for (name, p), q in zip(eager.named_parameters(), traced.parameters()):
        assert q.grad is not None, name
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert ((p.grad - q.grad).abs().max() / scale) < 1e-9, name


def test_traced_graph_matches_eager_values_and_parameter_gradients(random_cell, random_molecule):
    rng = np.random.default_rng(0)
    batch = batch_of([random_cell(rng), random_molecule(rng), random_cell(rng, 6)])
    eager, traced = eager_and_traced(
        compile=False, num_layers=3, self_connection=True, radial_hidden=[8, 8], correlation=3
    )
    for mode in ("train", "eval"):
        getattr(eager, mode)()
        getattr(traced, mode)()
        expected, got = eager(batch, compute_stress=True), traced(batch, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(got[key], expected[key], rtol=1e-10, atol=1e-12)
    assert_same_training_gradients(eager, traced, batch)
    # a batch of another size goes through the same (symbolic) graph
    other = batch_of([random_molecule(rng, 4)])
    torch.testing.assert_close(traced(other)["forces"], eager(other)["forces"], rtol=1e-10, atol=1e-12)
    assert len(traced.traced._graphs) == 1


def test_traced_graph_of_a_frozen_model_is_the_inference_graph(random_cell):
    """Frozen parameters (the calculator's copy) use a graph without parameter gradients."""
    rng = np.random.default_rng(1)
    eager, traced = eager_and_traced(compile=False)
    assert_same_frozen_inference(eager, traced, batch_of([random_cell(rng)]))
    assert [differentiable for _, _, differentiable in traced.traced._graphs] == [False]
    # the time the graph took to make is kept (and logged): tracing, then the first call
    (timing,) = traced.traced.compile_times
    assert timing.what.startswith("inference") and timing.trace > 0 and timing.first_call > 0
    assert timing.total == timing.trace + timing.first_call


def test_compiled_model_copies_and_pickles_without_its_graphs():
    import copy
    import pickle

    _, traced = eager_and_traced(compile=False)
    traced.traced._graphs[("cpu", torch.float64, True)] = lambda *args: None  # as after a first call
    duplicate = copy.deepcopy(traced)
    assert duplicate.traced.network is duplicate.network and duplicate.traced._graphs == {}
    restored = pickle.loads(pickle.dumps(traced))
    assert restored.traced._graphs == {}


@pytest.mark.slow
def test_compiled_training_step_matches_eager(random_cell, random_molecule):
    """One loss on energies, forces and stresses through ``torch.compile``: the same parameter
    gradients as eager autograd (float64), and a batch of another size needs no new graph."""
    rng = np.random.default_rng(3)
    eager, compiled = eager_and_traced(compile=True)
    assert_same_training_gradients(eager, compiled, batch_of([random_cell(rng), random_molecule(rng)]))
    assert_same_training_gradients(eager, compiled, batch_of([random_cell(rng, 7)]))
    assert len(compiled.traced._graphs) == 1
