"""Every model equimol ships: equimol.testing's physics checks, and forces by autograd in the
modes a caller runs a model in.

The equivariant potential and the invariant baselines must pass every check at round-off;
the MLPs on hand-made features must be reported for exactly the symmetries they break. A model
in eval mode still lets its energy be backpropagated after computing forces, and says clearly
why it cannot compute forces under ``torch.inference_mode``.
"""

from __future__ import annotations

from typing import Callable

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk

from equimol.data import atoms_to_graph
from equimol.models import EquivariantPotential, FeatureMLP, LinearModel, PairNN
from equimol.testing import check_model

CUTOFF = 4.0
SPECIES = [1, 6, 8]


def random_periodic_cell(rng: np.random.Generator) -> ase.Atoms:
    """A rattled, sheared 4-atom cell with H, C and O (several images within the cutoff)."""
    atoms = bulk("C", "fcc", a=3.2, cubic=True)
    atoms.numbers = np.array([1, 6, 8, 6])
    atoms.set_cell(atoms.cell[:] + rng.normal(0.0, 0.3, size=(3, 3)), scale_atoms=True)
    atoms.rattle(0.1, rng=rng)
    return atoms


def graphs(atoms_list: list[ase.Atoms], dtype: torch.dtype) -> list:
    return [atoms_to_graph(atoms, CUTOFF, dtype=dtype) for atoms in atoms_list]


@pytest.fixture
def compact_molecule(random_molecule, rng: np.random.Generator) -> Callable[[], ase.Atoms]:
    """Draws a random six-atom molecule (H, C, O) from ``rng``: atoms at least 0.9 Å apart inside
    a 3 Å box."""
    return lambda: random_molecule(rng, [1, 1, 6, 6, 8, 1], box=3.0, min_distance=0.9)


@pytest.fixture
def molecules(compact_molecule) -> list[ase.Atoms]:
    return [compact_molecule() for _ in range(2)]


@pytest.fixture
def mixed(rng: np.random.Generator, molecules: list[ase.Atoms]) -> list[ase.Atoms]:
    return molecules + [random_periodic_cell(rng)]


def _randomised(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The model with random (non-zero) parameters in ``dtype``, in eval mode."""
    torch.manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equivariant_potential_passes_every_physics_check(mixed, dtype) -> None:
    model = _randomised(EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=8, l_max=2), dtype)
    report = check_model(model, graphs(mixed, dtype), strict=True)
    expected = {"rotation/energy", "reflection/energy", "permutation/forces", "forces_fd", "stress_fd",
                "batch/energy", "gradient_leak", "cutoff_smoothness/energy"}
    assert expected <= set(report), sorted(report)


def test_pair_network_passes_every_physics_check(mixed) -> None:
    model = _randomised(PairNN(cutoff=CUTOFF, species=SPECIES), torch.float64)
    report = check_model(model, graphs(mixed, torch.float64), strict=True)
    assert {"rotation/energy", "permutation/energy", "stress_fd", "cutoff_smoothness/energy"} <= set(report)


def test_mlp_on_summed_symmetry_functions_is_invariant(molecules) -> None:
    model = FeatureMLP(n_atoms=6, featurizer="acsf", featurizer_kwargs={"cutoff": CUTOFF, "species": SPECIES})
    report = check_model(
        _randomised(model, torch.float64),
        graphs(molecules, torch.float64),
        checks=["rotation", "reflection", "translation", "permutation", "forces_fd", "batch", "gradient_leak"],
        strict=True,
    )
    assert report["permutation/energy"] < 1e-9


def test_mlp_on_absolute_positions_is_reported_as_not_invariant(molecules) -> None:
    model = _randomised(FeatureMLP(n_atoms=6, featurizer="positions"), torch.float64)
    report = check_model(model, graphs(molecules, torch.float64), checks=["rotation", "translation", "permutation", "forces_fd"])
    assert report["rotation/energy"] > 1e-3
    assert report["translation/energy"] > 1e-3
    assert report["permutation/energy"] > 1e-3
    assert report["forces_fd"] < 1e-6  # its forces are still exact derivatives of its energy


def test_mlp_on_distances_is_rotation_invariant_but_not_permutation_invariant(molecules) -> None:
    model = _randomised(FeatureMLP(n_atoms=6, featurizer="distances"), torch.float64)
    report = check_model(model, graphs(molecules, torch.float64), checks=["rotation", "reflection", "translation", "permutation"])
    assert report["rotation/energy"] < 1e-9
    assert report["reflection/energy"] < 1e-9
    assert report["translation/energy"] < 1e-9
    assert report["permutation/energy"] > 1e-3


def test_linear_model_on_inverse_distances_breaks_only_permutation(molecules, compact_molecule) -> None:
    train = graphs([compact_molecule() for _ in range(40)], torch.float64)
    for graph in train:  # an order-dependent target, so the fitted weights differ per pair
        graph.energy = (1.0 / torch.pdist(graph.pos)).cumsum(0)[-1:] + (1.0 / torch.pdist(graph.pos))[:1]
    model = LinearModel(n_atoms=6).to(torch.float64).fit(train)
    report = check_model(model.eval(), graphs(molecules, torch.float64), checks=["rotation", "translation", "permutation"])
    assert report["rotation/energy"] < 1e-9
    assert report["translation/energy"] < 1e-9
    assert report["permutation/energy"] > 1e-4


# ---- forces by autograd, in eval and inference mode ------------------------------------------


@pytest.fixture
def copper_graph(emt_copper):
    return atoms_to_graph(emt_copper(0), CUTOFF, dtype=torch.float64)


def test_energy_can_be_backpropagated_in_eval_mode_after_forces_were_computed(copper_graph) -> None:
    model = PairNN(CUTOFF).double().eval()
    out = model(copper_graph)
    out["energy"].sum().backward()  # the force computation must not free the energy's graph
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_forces_inside_inference_mode_raise_a_clear_error(copper_graph) -> None:
    model = PairNN(CUTOFF).double().eval()
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model(copper_graph)
