"""TorchSim engine: ``EquimolTorchSimModel`` gives the ASE calculator's energies, forces and
stress, for every system of a batch of different sizes and elements as for each alone, and
runs TorchSim's integrators (energy-conserving NVE, Langevin NVT) and optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from equimol.data.graph import CloseAtomsError
from equimol.engines import Eager, EquimolCalculator
from equimol.models.equivariant import EquivariantPotential

ts = pytest.importorskip("torch_sim", reason="the TorchSim engine needs torch-sim-atomistic (pip install -e '.[md]')")
from equimol.engines.torchsim import EquimolTorchSimModel, state_graph  # noqa: E402

SPECIES = ["Cu", "H", "C", "O"]
CUTOFF = 4.0


@pytest.fixture(scope="module")
def model() -> Eager:
    """The tiny untrained model, as one backend that every engine of a test shares (each
    engine made from the model object would copy it, which takes seconds)."""
    torch.manual_seed(0)
    return Eager(EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=4, num_layers=2).double())


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: small graphs run faster so, above all on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def copper_model(one_thread, fitted_copper_backend) -> Eager:
    """The tiny model fitted to EMT copper (shared by the engine tests, see conftest)."""
    assert fitted_copper_backend.cutoff == CUTOFF
    return fitted_copper_backend


def _copper(seed: int, repeat=(2, 2, 2)) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.set_cell(atoms.cell[:] + np.array([[0.0, 0.1, 0.0], [0.0, 0.0, 0.0], [0.05, 0.0, 0.0]]), scale_atoms=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _mixed_cell(rng: np.random.Generator, num_atoms: int) -> Atoms:
    """A periodic triclinic cell of Cu, H, C and O at least 1 Å apart."""
    cell = 4.0 * np.eye(3) + rng.normal(0.0, 0.3, (3, 3))
    while True:
        atoms = Atoms(rng.choice(SPECIES, num_atoms), cell=cell, scaled_positions=rng.uniform(size=(num_atoms, 3)),
                      pbc=True)
        if atoms.get_all_distances(mic=True)[np.triu_indices(num_atoms, 1)].min() > 1.0:
            return atoms


def _reference(model, atoms: Atoms) -> tuple[float, np.ndarray, np.ndarray | None]:
    atoms = atoms.copy()
    atoms.calc = EquimolCalculator(model)
    stress = atoms.get_stress(voigt=False) if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def _assert_close(actual, expected, what: str, rtol: float = 1e-10) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    scale = max(float(np.abs(expected).max()), 1e-12)
    error = float(np.abs(actual - expected).max()) / scale
    assert error < rtol, f"{what}: relative difference {error:.2e} to the ASE calculator (tolerance {rtol:g})"


def _state(atoms_list, torch_model):
    return ts.io.atoms_to_state(list(atoms_list), torch_model.device, torch_model.dtype)


def test_periodic_copper_matches_the_ase_calculator(model):
    atoms = _copper(seed=1)
    torch_model = EquimolTorchSimModel(model, device="cpu")
    out = torch_model(_state([atoms], torch_model))
    energy, forces, stress = _reference(model, atoms)
    assert out["energy"].shape == (1,) and out["forces"].shape == (32, 3) and out["stress"].shape == (1, 3, 3)
    assert out["energy"].dtype == torch.float64
    _assert_close(out["energy"].numpy(), [energy], "energy")
    _assert_close(out["forces"].numpy(), forces, "forces")
    _assert_close(out["stress"][0].numpy(), stress, "stress")
    assert np.abs(forces).max() > 1e-3 and np.abs(stress).max() > 1e-4


def test_molecule_matches_the_ase_calculator_and_has_no_stress(model):
    ethanol = molecule("CH3CH2OH")
    torch_model = EquimolTorchSimModel(model, device="cpu")
    state = _state([ethanol], torch_model)
    assert state.pbc is False or not torch.as_tensor(state.pbc).any()
    out = torch_model(state)
    energy, forces, _ = _reference(model, ethanol)
    _assert_close(out["energy"].numpy(), [energy], "energy")
    _assert_close(out["forces"].numpy(), forces, "forces")
    assert torch.equal(out["stress"], torch.zeros(1, 3, 3, dtype=torch.float64))


def test_a_batch_of_cells_gives_each_its_own_energies_forces_and_stress(model, rng):
    systems = [_copper(seed=2), _mixed_cell(rng, 5), _copper(seed=3, repeat=(1, 2, 1)), _mixed_cell(rng, 9)]
    systems[2].symbols[[0, 3]] = ["O", "H"]
    torch_model = EquimolTorchSimModel(model, device="cpu")
    batched = torch_model(_state(systems, torch_model))
    assert batched["energy"].shape == (4,) and batched["stress"].shape == (4, 3, 3)
    start = 0
    for index, atoms in enumerate(systems):
        alone = torch_model(_state([atoms], torch_model))
        rows = slice(start, start + len(atoms))
        _assert_close(batched["energy"][index], alone["energy"][0], f"energy of system {index}", 1e-12)
        _assert_close(batched["forces"][rows], alone["forces"], f"forces of system {index}", 1e-12)
        _assert_close(batched["stress"][index], alone["stress"][0], f"stress of system {index}", 1e-12)
        energy, forces, stress = _reference(model, atoms)
        _assert_close(batched["energy"][index], energy, f"energy of system {index}")
        _assert_close(batched["forces"][rows], forces, f"forces of system {index}")
        _assert_close(batched["stress"][index], stress, f"stress of system {index}")
        start += len(atoms)


def test_a_batch_of_molecules_gives_each_its_own_energies(model):
    systems = [molecule("CH3CH2OH"), molecule("H2O"), molecule("CH4"), molecule("CH3COOH")]
    torch_model = EquimolTorchSimModel(model, device="cpu")
    batched = torch_model(_state(systems, torch_model))
    start = 0
    for index, atoms in enumerate(systems):
        energy, forces, _ = _reference(model, atoms)
        _assert_close(batched["energy"][index], energy, f"energy of molecule {index}")
        _assert_close(batched["forces"][start:start + len(atoms)], forces, f"forces of molecule {index}")
        start += len(atoms)


def test_the_model_passes_torch_sims_own_interface_check():
    from torch_sim.models.interface import validate_model_outputs

    torch.manual_seed(0)
    potential = EquivariantPotential(["Si", "Fe"], cutoff=CUTOFF, channels=4, num_layers=1).double()
    validate_model_outputs(EquimolTorchSimModel(potential, device="cpu"), torch.device("cpu"), torch.float64)


def test_a_model_object_and_a_float32_run_work_as_well(model):
    atoms = _copper(seed=6)
    energy, forces, _ = _reference(model, atoms)
    from_model = EquimolTorchSimModel(model.model, compute_stress=False)
    out = from_model(_state([atoms], from_model))
    assert "stress" not in out
    _assert_close(out["energy"], energy, "energy")
    single = EquimolTorchSimModel(model.model, device="cpu", dtype=torch.float32)
    out = single(_state([atoms], single))
    assert out["forces"].dtype == torch.float32
    _assert_close(out["forces"], forces, "float32 forces", 1e-4)


def test_unknown_elements_and_overlapping_atoms_are_errors(model):
    torch_model = EquimolTorchSimModel(model, device="cpu")
    with pytest.raises(ValueError, match="Fe|26"):
        torch_model(_state([bulk("Fe", "bcc", a=2.87, cubic=True)], torch_model))
    atoms = _copper(seed=7)
    atoms.positions[5] = atoms.positions[2] + 0.01
    with pytest.raises(CloseAtomsError, match="atoms 2 and 5|atoms 5 and 2"):
        torch_model(_state([atoms], torch_model))
    graph = state_graph(_state([atoms], torch_model), CUTOFF, min_distance=0.0)
    assert graph.num_graphs == 1


def test_batched_nve_conserves_energy(copper_model):
    """Velocity Verlet at 1 fs from 300 K on two copper cells of 32 and 48 atoms at once."""
    torch_model = EquimolTorchSimModel(copper_model, device="cpu", compute_stress=False)
    state = _state([_copper(seed=8), _copper(seed=9, repeat=(3, 2, 2))], torch_model)
    units = ts.units.MetalUnits
    init, update = ts.nve(torch_model, dt=torch.tensor(0.001 * units.time, dtype=torch.float64),
                          kT=torch.tensor(300.0 * units.temperature, dtype=torch.float64), seed=0)
    state = init(state)

    def total_energy(s):
        return s.energy + ts.calc_kinetic_energy(masses=s.masses, momenta=s.momenta, system_idx=s.system_idx)

    energies = [total_energy(state)]
    steps = 60
    for _ in range(steps):
        state = update(state)
        energies.append(total_energy(state))
    energies = torch.stack(energies).numpy()  # [steps + 1, 2]
    atoms = np.array([32, 48])
    deviation = np.abs(energies - energies[0]).max(axis=0) / atoms
    drift = np.polyfit(np.arange(steps + 1) * 1e-3, energies, 1)[0] / atoms  # eV/atom/ps
    temperature = (ts.calc_kT(masses=state.masses, momenta=state.momenta, system_idx=state.system_idx)
                   / units.temperature).numpy()
    report = (f"{steps} steps of 1 fs: largest |E - E0| {deviation} eV/atom, drift {drift} eV/atom/ps, "
              f"final temperature {temperature} K")
    assert np.all(temperature > 50) and np.all(temperature < 1000), report
    assert np.all(deviation < 2e-5), report
    assert np.all(np.abs(drift) < 2e-4), report


def test_nvt_langevin_and_fire_run_through_the_runners(copper_model):
    torch_model = EquimolTorchSimModel(copper_model, device="cpu")
    systems = [_copper(seed=10, repeat=(1, 1, 1)), _copper(seed=11, repeat=(2, 1, 1))]
    final = ts.integrate(systems, torch_model, integrator=ts.nvt_langevin, n_steps=20, temperature=300.0,
                         timestep=0.002, seed=0)
    assert final.n_systems == 2 and torch.isfinite(final.positions).all()
    convergence = ts.generate_force_convergence_fn(0.02, include_cell_forces=False)
    relaxed = ts.optimize(systems, torch_model, optimizer=ts.optimizers.fire, convergence_fn=convergence,
                          max_steps=400)
    forces = torch_model(relaxed)["forces"]
    assert forces.norm(dim=1).max() < 0.02


def test_cell_relaxation_uses_the_stress(copper_model):
    """FIRE on positions and cell (TorchSim's Frechet cell filter) takes a compressed and a
    stretched copper cell, in one batch, to the volume ASE's own cell relaxation finds."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    torch_model = EquimolTorchSimModel(copper_model, device="cpu")
    systems = [bulk("Cu", "fcc", a=3.5, cubic=True).repeat(2), bulk("Cu", "fcc", a=3.75, cubic=True).repeat((2, 2, 1))]
    convergence = ts.generate_force_convergence_fn(0.005, include_cell_forces=True)
    relaxed = ts.optimize(systems, torch_model, optimizer=ts.optimizers.frechet_cell_fire,
                          convergence_fn=convergence, max_steps=500)
    volumes = (torch.det(relaxed.cell) / torch.bincount(relaxed.system_idx)).numpy()
    assert torch_model(relaxed)["stress"].abs().max() < 1e-3
    reference = systems[0].copy()
    reference.calc = EquimolCalculator(copper_model)
    FIRE(FrechetCellFilter(reference), logfile=None).run(fmax=0.005, steps=500)
    expected = reference.get_volume() / len(reference)
    assert np.allclose(volumes, expected, rtol=5e-3), f"volumes per atom {volumes} Å³, ASE's {expected:.4f} Å³"
