"""Ahead-of-time compiled packages (``.pt2``): the same energies, forces and stress as the
model they were compiled from, through ``EquimolCalculator``, with the symmetries and the
derivatives of a potential. One package is compiled for the whole module (tens of seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError
from scipy.spatial.transform import Rotation

from equimol.calculator import EquimolCalculator
from equimol.engines import Package
from equimol.models.aot import export_aot
from equimol.models.equivariant import EquivariantPotential

CUTOFF = 3.0


_CONFIG = """
trainer: {max_epochs: 1, max_steps: 2, logger: false, enable_progress_bar: false}
model:
  class_path: equimol.train.PotentialModule
  init_args:
    model:
      class_path: equimol.models.equivariant.EquivariantPotential
      init_args: {species: [H, C, O], cutoff: 3.0, channels: 4, num_layers: 2, self_connection: true}
data:
  class_path: equimol.train.AtomsDataModule
  init_args: {cutoff: 3.0, sample: ethanol_gfn2, batch_size: 5}
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[EquivariantPotential, str]:
    """A model fitted for two steps and compiled from its checkpoint with ``equimol compile``
    (in float64, for tight comparisons; ethanol's species, H, C and O), and the model itself
    in float64."""
    from equimol.engines import load_model
    from equimol.cli import main

    root = tmp_path_factory.mktemp("aot")
    config = root / "config.yaml"
    config.write_text(_CONFIG)
    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root)]) == 0
    checkpoint = root / "checkpoints" / "last.ckpt"
    path = root / "ethanol.pt2"
    assert main(["compile", str(checkpoint), str(path), "--dtype", "float64"]) == 0
    return load_model(checkpoint).double(), str(path)


def test_compile_command_names_a_missing_checkpoint(tmp_path, capsys):
    from equimol.cli import main

    assert main(["compile", str(tmp_path / "none.ckpt"), str(tmp_path / "out.pt2")]) == 2
    assert "none.ckpt" in capsys.readouterr().err


def random_structure(rng: np.random.Generator, n_atoms: int, periodic: bool) -> Atoms:
    box = 4.0 + 0.5 * n_atoms ** (1 / 3)
    atoms = Atoms(
        rng.choice(["H", "C", "O"], size=n_atoms).tolist(),
        positions=rng.uniform(0.0, box, size=(n_atoms, 3)),
        cell=np.diag([box, box * 1.1, box * 0.9]) + rng.normal(scale=0.2, size=(3, 3)) if periodic else None,
        pbc=periodic,
    )
    return atoms


@pytest.mark.parametrize("n_atoms, periodic", [(3, False), (12, False), (7, True)])
def test_package_gives_the_models_energy_forces_and_stress(compiled, rng, n_atoms, periodic):
    model, path = compiled
    atoms = random_structure(rng, n_atoms, periodic)
    eager = EquimolCalculator(model, compile=False)
    package = EquimolCalculator(path)
    properties = ["energy", "forces"] + (["stress"] if periodic else [])
    eager.calculate(atoms, properties)
    package.calculate(atoms, properties)
    assert np.abs(eager.results["forces"]).max() > 1e-3
    for name in properties:
        np.testing.assert_allclose(package.results[name], eager.results[name], rtol=1e-9, atol=1e-10)


def test_single_atom_without_edges_gives_its_isolated_energy(compiled):
    model, path = compiled
    atom = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    atom.calc = EquimolCalculator(path)
    expected = EquimolCalculator(model, compile=False).get_potential_energy(atom.copy())
    assert atom.get_potential_energy() == pytest.approx(expected, abs=1e-10)
    np.testing.assert_array_equal(atom.get_forces(), np.zeros((1, 3)))


def test_package_is_invariant_under_rotation_reflection_and_permutation(compiled, rng):
    _, path = compiled
    atoms = random_structure(rng, 10, periodic=False)
    calc = EquimolCalculator(path)
    energy, forces = calc.get_potential_energy(atoms), calc.get_forces(atoms)
    rotation = Rotation.random(random_state=1).as_matrix() @ np.diag([1.0, 1.0, -1.0])
    order = rng.permutation(len(atoms))
    moved = atoms[order]
    moved.positions = moved.positions @ rotation.T + np.array([0.3, -1.0, 2.0])
    assert calc.get_potential_energy(moved) == pytest.approx(energy, abs=1e-9)
    np.testing.assert_allclose(calc.get_forces(moved), forces[order] @ rotation.T, atol=1e-9)


def test_package_forces_and_stress_match_finite_differences(compiled, rng):
    _, path = compiled
    atoms = random_structure(rng, 6, periodic=True)
    calc = EquimolCalculator(path)
    atoms.calc = calc
    np.testing.assert_allclose(atoms.get_forces(), calc.calculate_numerical_forces(atoms, d=1e-5), atol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), calc.calculate_numerical_stress(atoms, d=1e-6), atol=1e-7)


def test_package_records_what_it_needs_to_run(compiled):
    model, path = compiled
    package = Package(path)
    assert package.cutoff == model.cutoff
    assert package.atomic_numbers == (1, 6, 8)
    assert package.dtype == torch.float64


def test_package_refuses_unknown_elements_and_clusters_stress(compiled):
    _, path = compiled
    calc = EquimolCalculator(path)
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[7\] not known.*\[1, 6, 8\]"):
        calc.get_potential_energy(Atoms("NO", positions=[[0, 0, 0], [0, 0, 1.2]]))
    with pytest.raises(PropertyNotImplementedError):
        calc.get_stress(Atoms("OH", positions=[[0, 0, 0], [0, 0, 1.0]]))
    with pytest.raises(ValueError, match="non-finite positions"):
        calc.get_potential_energy(Atoms("OH", positions=[[0, 0, 0], [0, 0, np.nan]]))


def test_package_runs_only_in_its_own_dtype(compiled):
    _, path = compiled
    with pytest.raises(ValueError, match="computes in torch.float64"):
        EquimolCalculator(path, dtype=torch.float32)


def test_export_and_load_reject_what_is_not_a_package(compiled, tmp_path):
    model, _ = compiled
    with pytest.raises(ValueError, match=r"\*\.pt2"):
        export_aot(model, tmp_path / "model.pt")
    with pytest.raises(TypeError, match="EquivariantPotential"):
        export_aot(torch.nn.Linear(2, 2), tmp_path / "linear.pt2")
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        Package(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a package")
    with pytest.raises(ValueError, match="junk.pt2"):
        EquimolCalculator(junk)
