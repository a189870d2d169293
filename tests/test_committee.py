"""A committee of potentials: its mean and spread are NumPy's over the members, the ASE calculator
reports the spread, members that do not fit together are refused naming the member, and the
spread of three tiny models trained from different seeds ranks the force errors of held-out
ethanol frames (Spearman > 0.3)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from equimol.data import atoms_to_graph
from equimol.data.samples import sample_path
from equimol.engines import Committee, Eager, EquimolCalculator, load_backend
from equimol.models.equivariant import EquivariantPotential

CUTOFF = 3.0
SPECIES = ["H", "C", "O"]


def _potential(seed: int, species=SPECIES, cutoff: float = CUTOFF, dtype=torch.float64) -> EquivariantPotential:
    torch.manual_seed(seed)
    return EquivariantPotential(species, cutoff=cutoff, channels=4, num_layers=1).to(dtype)


@pytest.fixture(scope="module")
def members() -> list[EquivariantPotential]:
    """Three untrained float64 potentials of different seeds: they disagree everywhere."""
    return [_potential(seed) for seed in range(3)]


def _structures() -> list[ase.Atoms]:
    """Two ethanol molecules and one ethanol in a periodic 7 Å box (which has a stress)."""
    frames = ase.io.read(sample_path("ethanol_gfn2"), "0:3")
    frames[2].set_cell(np.eye(3) * 7.0)
    frames[2].center()
    frames[2].pbc = True
    return frames


def test_committee_mean_and_std_are_numpys_over_the_members(members):
    frames = _structures()
    batch = Batch.from_data_list([atoms_to_graph(atoms, CUTOFF, dtype=torch.float64) for atoms in frames])
    outputs = [Eager(member).compute(batch, compute_stress=True) for member in members]
    for ddof in (0, 1):
        committee = Committee([Eager(member) for member in members], ddof=ddof)
        out = committee.compute(batch, compute_stress=True)
        for key in ("energy", "forces", "stress"):
            stacked = np.stack([o[key].numpy() for o in outputs])
            np.testing.assert_allclose(out[key].numpy(), stacked.mean(axis=0), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(out[f"{key}_std"].numpy(), stacked.std(axis=0, ddof=ddof), rtol=1e-10, atol=1e-12)
        assert out["energy_std"].shape == (3,) and out["forces_std"].shape == (27, 3)
        assert float(out["forces_std"].min()) >= 0 and float(out["energy_std"].min()) > 0


def test_calculator_results_carry_energy_std_and_forces_std(members):
    atoms = _structures()[2]
    single = []
    for member in members:
        copy = atoms.copy()
        copy.calc = EquimolCalculator(member)
        single.append((copy.get_potential_energy(), copy.get_forces(), copy.get_stress()))
    atoms.calc = EquimolCalculator(members)
    assert isinstance(atoms.calc.backend, Committee)
    energies, forces, stresses = (np.array(values) for values in zip(*single))
    assert atoms.get_potential_energy() == pytest.approx(energies.mean(), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), forces.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), stresses.mean(axis=0), atol=1e-10)
    results = atoms.calc.results
    assert results["energy_std"] == pytest.approx(energies.std(), rel=1e-9)
    assert results["forces_std"].shape == (len(atoms), 3)
    np.testing.assert_allclose(results["forces_std"], forces.std(axis=0), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(results["stress_std"], stresses.std(axis=0), rtol=1e-8, atol=1e-12)
    assert atoms.calc.get_property("energy_std", atoms) == results["energy_std"]


def test_members_that_do_not_fit_together_are_refused_naming_the_member(members):
    with pytest.raises(ValueError, match=r"member 1 \(EquivariantPotential\) reads graphs of cutoff 4.0 Å"):
        load_backend([members[0], _potential(1, cutoff=4.0)])
    with pytest.raises(ValueError, match=r"member 2 \(EquivariantPotential\) computes in torch.float32"):
        load_backend([members[0], members[1], _potential(2, dtype=torch.float32)])
    assert load_backend([members[0], _potential(2, dtype=torch.float32)], dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="at least two members, got 1"):
        Committee([Eager(members[0])])
    with pytest.raises(TypeError, match="not a loaded backend"):
        Committee(members)
    assert isinstance(load_backend([members[0]]), Eager)  # a list of one is that model
    with pytest.raises(FileNotFoundError, match="missing.ckpt: no such checkpoint"):
        load_backend([members[0], "missing.ckpt"])


def test_the_committee_knows_the_elements_every_member_knows(members):
    copper = _potential(5, species=["Cu", "H", "C"])
    committee = load_backend([members[0], copper])
    assert committee.atomic_numbers == (1, 6)
    atoms = _structures()[0]  # ethanol: H, C and O
    atoms.calc = EquimolCalculator(committee)
    with pytest.raises(ValueError, match=r"atomic number\(s\) \[8\] not known to every committee member "
                                         r"\(8 to 1 \(EquivariantPotential\)\)"):
        atoms.get_potential_energy()


# ------------------------------------------------------------------ a trained committee

TRAIN_FRAMES = 50  # the first frames of the trajectory; the other 250 are held out


def _fit(seed: int, train: Path, held_out: Path, root: Path, quiet_trainer):
    from equimol.train import AtomsDataModule, PotentialModule

    torch.manual_seed(seed)
    # every training frame is trained on; the held-out file stands as validation set, never run
    datamodule = AtomsDataModule(cutoff=CUTOFF, path=str(train), val_path=str(held_out), batch_size=10,
                                 seed=seed, cache_dir=str(root / "cache"))
    model = EquivariantPotential(SPECIES, cutoff=CUTOFF, channels=4, num_layers=2)
    module = PotentialModule(model, optimizer=partial(torch.optim.Adam, lr=0.03),
                             lr_scheduler=partial(torch.optim.lr_scheduler.ExponentialLR, gamma=0.7))
    quiet_trainer(root / f"member{seed}", max_epochs=8, limit_val_batches=0, enable_checkpointing=False).fit(
        module, datamodule)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory, quiet_trainer) -> tuple[list, Path]:
    """Three tiny potentials fitted to the first 50 ethanol frames from seeds 0, 1, 2, and the
    file of the 250 held-out frames."""
    root = tmp_path_factory.mktemp("committee")
    frames = ase.io.read(sample_path("ethanol_gfn2"), ":")
    ase.io.write(root / "train.xyz", frames[:TRAIN_FRAMES])
    ase.io.write(root / "held_out.xyz", frames[TRAIN_FRAMES:])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        modules = [_fit(seed, root / "train.xyz", root / "held_out.xyz", root, quiet_trainer) for seed in range(3)]
    finally:
        torch.set_num_threads(threads)
    return modules, root / "held_out.xyz"


@pytest.fixture(scope="module")
def evaluation(trained, tmp_path_factory) -> tuple[dict, Path]:
    from equimol.engines.evaluate import evaluate

    modules, held_out = trained
    out = tmp_path_factory.mktemp("committee_evaluation")
    return evaluate(modules, held_out, out, batch_size=25, progress=False), out


def test_the_spread_ranks_the_force_errors_of_held_out_frames(evaluation):
    result, _ = evaluation
    uncertainty = result["uncertainty"]
    assert uncertainty["members"] == 3 and "ddof=0" in uncertainty["estimator"]
    assert uncertainty["forces"]["num_frames"] == 250
    print(f"Spearman(forces std, forces RMSE) per frame: {uncertainty['forces']['spearman']:.3f}; "
          f"energy per atom: {uncertainty['energy_per_atom']['spearman']:.3f}")
    assert uncertainty["forces"]["spearman"] > 0.3


def test_committee_predictions_carry_the_spread(evaluation, trained):
    result, out = evaluation
    modules, held_out = trained
    written = ase.io.read(out / "predictions.extxyz", "0:3")
    frames = ase.io.read(held_out, "0:3")
    calculator = EquimolCalculator(modules)
    for frame, source in zip(written, frames):
        source.calc = calculator
        np.testing.assert_allclose(frame.get_forces(), source.get_forces(), atol=2e-6)
        np.testing.assert_allclose(frame.arrays["forces_std"], calculator.results["forces_std"], atol=2e-6)
        assert frame.info["energy_std"] == pytest.approx(calculator.results["energy_std"], abs=1e-5)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["uncertainty"]["forces"]["spearman"] == pytest.approx(result["uncertainty"]["forces"]["spearman"])
    assert (out / "uncertainty.png").stat().st_size > 10_000
