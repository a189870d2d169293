"""``EquimolCalculator``: energies, forces and Voigt stress of a model through ASE, consistent
with finite differences, from a model object or a checkpoint of ``equimol fit``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.cluster import Icosahedron

from equimol.calculator import EquimolCalculator
from equimol.models.equivariant import EquivariantPotential


@pytest.fixture
def model() -> EquivariantPotential:
    torch.manual_seed(0)
    return EquivariantPotential(["Cu"], cutoff=3.0, l_max=1, channels=4, num_layers=1).double()


@pytest.fixture
def copper(rng):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.set_cell(atoms.cell[:] + np.array([[0, 0.1, 0], [0, 0, 0], [0.05, 0, 0]]), scale_atoms=True)
    atoms.rattle(0.05, rng=rng)
    return atoms


def test_forces_match_finite_differences_of_the_energy(model, copper):
    calc = EquimolCalculator(model)
    copper.calc = calc
    forces = copper.get_forces()
    assert np.abs(forces).max() > 1e-3
    np.testing.assert_allclose(forces, calc.calculate_numerical_forces(copper, d=1e-5), atol=1e-6)


def test_stress_is_voigt_and_matches_finite_strain_derivative(model, copper):
    calc = EquimolCalculator(model)
    copper.calc = calc
    stress = copper.get_stress()
    assert stress.shape == (6,)
    assert np.abs(stress).max() > 1e-5
    np.testing.assert_allclose(stress, calc.calculate_numerical_stress(copper, d=1e-6), atol=1e-7)


def test_stress_of_a_cluster_is_not_implemented(model):
    cluster = Icosahedron("Cu", 2)
    cluster.calc = EquimolCalculator(model)
    assert np.isfinite(cluster.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError):
        cluster.get_stress()


def test_float32_model_runs_in_float64_when_asked(model, copper):
    single = EquivariantPotential(["Cu"], cutoff=3.0, l_max=1, channels=4, num_layers=1)
    single.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    calc = EquimolCalculator(single, dtype=torch.float64)
    assert calc.backend.dtype == torch.float64
    assert next(single.parameters()).dtype == torch.float32  # the caller's model is untouched
    copper.calc = calc
    energy64 = copper.get_potential_energy()
    copper.calc = EquimolCalculator(model)
    assert energy64 == pytest.approx(copper.get_potential_energy(), abs=1e-9)


def test_calculator_from_fit_checkpoint_gives_the_trained_models_energy(tmp_path):
    from equimol.train.cli import main
    from equimol.train.module import load_potential

    config = Path(__file__).resolve().parents[1] / "configs" / "lj_cluster.yaml"
    main(["fit", "--config", str(config), "--trainer.default_root_dir", str(tmp_path),
          "--trainer.logger", "false", "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
          "--data.init_args.generator.n_frames", "20"])
    checkpoint = tmp_path / "checkpoints" / "last.ckpt"
    module = load_potential(str(checkpoint))
    atoms = Icosahedron("Ar", 1)  # 13 atoms, reduced units as the training data
    atoms.positions *= 1.12 / 3.76  # nearest neighbours near the LJ minimum (sigma = 1)
    atoms.calc = EquimolCalculator(checkpoint)
    from equimol.data.graph import atoms_to_graph

    expected = module.model(atoms_to_graph(atoms, 2.5), compute_forces=False)["energy"].item()
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-6)
    assert atoms.calc.cutoff == 2.5


def test_check_state_reports_the_changes_ase_reports(model, copper):
    """The calculator's exact-comparison ``check_state`` finds what ASE's ``compare_atoms`` finds."""
    from ase.calculators.calculator import compare_atoms

    calc = EquimolCalculator(model)
    calc.calculate(copper, ["energy"])
    variants = {"unchanged": copper.copy()}
    moved = copper.copy()
    moved.positions[3, 1] += 1e-9
    variants["moved"] = moved
    swapped = copper.copy()
    swapped.numbers[0] = 30
    variants["numbers"] = swapped
    strained = copper.copy()
    strained.set_cell(copper.cell[:] * 1.01)
    variants["cell"] = strained
    slab = copper.copy()
    slab.pbc = [True, True, False]
    variants["pbc"] = slab
    magnetic = copper.copy()
    magnetic.set_initial_magnetic_moments(np.ones(len(copper)))
    variants["magmoms"] = magnetic
    for name, atoms in variants.items():
        assert sorted(calc.check_state(atoms)) == sorted(compare_atoms(calc.atoms, atoms)), name
    assert calc.check_state(variants["unchanged"]) == []
