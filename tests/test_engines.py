"""One inference path: every engine runs a model through an ``InferenceBackend``.

The compiled and packaged backends are checked against eager numbers in
``test_equivariant_potential.py`` (compiled) and ``test_aot.py`` (packages); here the
interface itself: what the eager backend computes, that a new backend is one class the
calculator takes as it is, and the errors of loading.
"""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.data.graph import atoms_to_graph
from equimol.engines import Eager, EquimolCalculator, InferenceBackend, load_backend, load_model
from equimol.models import PairNN

CUTOFF = 4.0


@pytest.fixture(scope="module")
def pair_model() -> PairNN:
    torch.manual_seed(0)
    return PairNN(CUTOFF, hidden=[8], species=[29, 79]).double().eval()


@pytest.fixture
def alloy() -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.symbols[[1, 2]] = "Au"
    atoms.rattle(0.1, seed=2)
    return atoms


def test_eager_backend_computes_what_the_model_computes(pair_model, alloy):
    backend = load_backend(pair_model)
    assert isinstance(backend, Eager)
    assert backend.cutoff == CUTOFF and backend.atomic_numbers == (29, 79) and backend.dtype == torch.float64
    graph = atoms_to_graph(alloy, CUTOFF, dtype=torch.float64)
    expected = pair_model(graph, compute_stress=True)
    out = backend.compute(graph, compute_stress=True)
    for key in (K.ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(out[key], expected[key].detach(), rtol=1e-12, atol=1e-12)
        assert not out[key].requires_grad


class HalvedEnergy(InferenceBackend):
    """A backend written by hand: another backend's outputs, halved (one class, nothing else)."""

    def __init__(self, inner: InferenceBackend) -> None:
        super().__init__(inner.cutoff, inner.atomic_numbers, inner.dtype, inner.device, name="HalvedEnergy")
        self.inner = inner

    def compute(self, graph: Data, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        return {key: 0.5 * value for key, value in self.inner.compute(graph, compute_stress).items()}


def test_a_new_backend_is_one_class_the_calculator_takes(pair_model, alloy):
    reference = EquimolCalculator(pair_model)
    halved = EquimolCalculator(HalvedEnergy(load_backend(pair_model)))
    assert halved.get_potential_energy(alloy) == pytest.approx(0.5 * reference.get_potential_energy(alloy), rel=1e-12)
    np.testing.assert_allclose(halved.get_forces(alloy), 0.5 * reference.get_forces(alloy), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(halved.get_stress(alloy), 0.5 * reference.get_stress(alloy), rtol=1e-12, atol=1e-14)


def test_every_backend_refuses_an_element_the_model_does_not_know(pair_model):
    nickel = ase.Atoms("CuNi", positions=[[0, 0, 0], [0, 0, 2.4]])
    with pytest.raises(ValueError, match=r"\[28\] not known to PairNN.*\[29, 79\]"):
        EquimolCalculator(pair_model).get_potential_energy(nickel)
    with pytest.raises(ValueError, match=r"\[28\] not known to HalvedEnergy"):
        HalvedEnergy(load_backend(pair_model)).species_index(torch.tensor([29, 28]))


def test_backends_leave_the_callers_model_as_it_was(pair_model):
    model = PairNN(CUTOFF, hidden=[8]).train()
    backend = load_backend(model, dtype=torch.float64)
    assert model.training and next(model.parameters()).dtype == torch.float32
    assert backend.model is not model and not backend.model.training
    assert not any(p.requires_grad for p in backend.model.parameters())


def test_loading_names_what_it_cannot_use(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        load_backend(tmp_path / "missing.ckpt")
    with pytest.raises(TypeError, match="Linear"):
        load_model(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="equimol Potential"):
        Eager(nn.Linear(2, 2))


def test_torchscript_files_are_refused_with_the_command_that_replaces_them(tmp_path):
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(ValueError, match=r"TorchScript.*equimol compile"):
        EquimolCalculator(path)
