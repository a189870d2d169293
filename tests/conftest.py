"""Shared pytest fixtures: a seeded generator, and the structures, data and trainers that several
test files build.

The builders are handed out as fixtures that return a function (``emt_copper(seed)``,
``random_molecule(rng)``, ...), so a test file asks for them by name and imports nothing from
here. They are session-scoped, so module-scoped fixtures can use them too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import ase
import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT


def _share_the_cores_between_workers() -> None:
    """Under ``pytest -n N`` (pyproject's default) each worker process gets its share of the
    cores for torch's own threads, so that N workers do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_share_the_cores_between_workers()

SPECIES = ("H", "C", "O")


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded NumPy generator, so a failing test fails the same way again."""
    return np.random.default_rng(20261121)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


# ---- structures -----------------------------------------------------------------------------


def _emt_copper(
    seed: int | np.random.Generator = 0,
    *,
    a: float = 3.6,
    repeat: tuple[int, int, int] = (1, 1, 1),
    strain: float = 0.0,
    rattle: float = 0.05,
    substitute: dict[int, str] | None = None,
) -> ase.Atoms:
    """A rattled cubic fcc Cu cell (4 atoms times ``repeat``, lattice constant ``a`` Å) labelled
    by ASE's EMT.

    In this order: with ``strain`` the cell is scaled by a random factor in ``1 ± strain``; every
    position moves by a normal displacement of standard deviation ``rattle`` Å; the atoms at the
    indices of ``substitute`` become the elements given there. ``seed`` is an integer (ASE's
    ``rattle(seed=...)``) or a generator that draws the strain and the displacements. The EMT
    calculator stays attached, with the energy (eV), forces (eV/Å) and stress (eV/Å³) computed.
    """
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat(repeat)
    if isinstance(seed, np.random.Generator):
        if strain:
            atoms.set_cell(atoms.cell[:] * (1.0 + seed.uniform(-strain, strain)), scale_atoms=True)
        atoms.rattle(rattle, rng=seed)
    else:
        if strain:
            raise ValueError("a random strain needs a generator as seed")
        atoms.rattle(rattle, seed=seed)
    for index, symbol in (substitute or {}).items():
        atoms.symbols[index] = symbol
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    return atoms


def _random_molecule(
    rng: np.random.Generator,
    atoms: int | Sequence[int | str] = 7,
    *,
    species: Sequence[str] = SPECIES,
    box: float = 2.5,
    min_distance: float = 0.0,
) -> ase.Atoms:
    """A random cluster in a cube of side ``box`` Å: ``atoms`` is a number of atoms (elements
    drawn from ``species``) or the elements themselves. Positions are uniform in the cube; with a
    ``min_distance`` (Å) each atom is redrawn until it is farther than that from those before it."""
    symbols = rng.choice(species, atoms) if isinstance(atoms, int) else list(atoms)
    if min_distance <= 0.0:
        return ase.Atoms(symbols, positions=rng.uniform(0.0, box, (len(symbols), 3)))
    positions: list[np.ndarray] = []
    while len(positions) < len(symbols):
        trial = rng.uniform(0.0, box, size=3)
        if all(np.linalg.norm(trial - p) > min_distance for p in positions):
            positions.append(trial)
    return ase.Atoms(symbols, positions=np.array(positions))


def _random_cell(
    rng: np.random.Generator, num_atoms: int = 5, *, species: Sequence[str] = SPECIES, size: float = 3.5
) -> ase.Atoms:
    """A periodic triclinic cell of about ``size`` Å (the identity times ``size`` plus normal
    noise of 0.4 Å) with ``num_atoms`` atoms of random elements at uniform fractional positions.
    With the 3 Å cutoffs of the tests, periodic images are neighbours."""
    cell = size * np.eye(3) + rng.normal(0.0, 0.4, (3, 3))
    return ase.Atoms(
        rng.choice(species, num_atoms), cell=cell, scaled_positions=rng.uniform(size=(num_atoms, 3)), pbc=True
    )


@pytest.fixture(scope="session")
def emt_copper() -> Callable[..., ase.Atoms]:
    """``emt_copper(seed, a=3.6, repeat=(1, 1, 1), strain=0.0, rattle=0.05, substitute=None)``:
    a rattled fcc Cu cell with EMT energy, forces and stress (see ``_emt_copper``)."""
    return _emt_copper


@pytest.fixture(scope="session")
def random_molecule() -> Callable[..., ase.Atoms]:
    """``random_molecule(rng, atoms=7, species=("H", "C", "O"), box=2.5, min_distance=0.0)``:
    a random cluster (see ``_random_molecule``)."""
    return _random_molecule


@pytest.fixture(scope="session")
def random_cell() -> Callable[..., ase.Atoms]:
    """``random_cell(rng, num_atoms=5, species=("H", "C", "O"), size=3.5)``: a small random
    periodic triclinic cell (see ``_random_cell``)."""
    return _random_cell


# ---- training -------------------------------------------------------------------------------


def _lj_datamodule(cache_dir: str | Path, n_frames: int, *, generator_seed: int = 0, cutoff: float = 2.5,
                   generator_options: dict[str, Any] | None = None, **options: Any):
    """An ``AtomsDataModule`` on ``n_frames`` Lennard-Jones cluster frames made by the
    ``lj-cluster`` generator (seeded by ``generator_seed``, further arguments in
    ``generator_options``) and cached under ``cache_dir``; ``options`` (``split``, ``batch_size``,
    ``seed`` of the split, ...) go to ``AtomsDataModule``."""
    from equimol.train import AtomsDataModule

    generator = {"name": "lj-cluster", "n_frames": n_frames, "seed": generator_seed, **(generator_options or {})}
    return AtomsDataModule(cutoff=cutoff, generator=generator, cache_dir=str(cache_dir), **options)


def _quiet_trainer(root: str | Path, **options: Any):
    """A Lightning ``Trainer`` in ``root`` without logger, progress bar or model summary, and
    outside inference mode (forces need autograd in validation); ``options`` add to or replace these."""
    import pytorch_lightning as pl

    settings = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                    default_root_dir=root)
    return pl.Trainer(**{**settings, **options})


def _write_fit_config(
    path: Path, data: dict[str, Any], model: dict[str, Any], trainer: dict[str, Any] | None = None,
    model_class: str = "equimol.models.pair.PairNN",
) -> Path:
    """Write a config for ``equimol fit`` to ``path``: ``PotentialModule`` around
    ``model_class(**model)``, ``AtomsDataModule(**data)``, and a one-epoch trainer without logging,
    updated by ``trainer``."""
    config = {
        "trainer": {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
                    **(trainer or {})},
        "model": {"class_path": "equimol.train.PotentialModule",
                  "init_args": {"model": {"class_path": model_class, "init_args": model}}},
        "data": {"class_path": "equimol.train.AtomsDataModule", "init_args": data},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def lj_datamodule() -> Callable[..., Any]:
    """``lj_datamodule(cache_dir, n_frames, generator_seed=0, cutoff=2.5, generator_options=None,
    **options)``: an ``AtomsDataModule`` on generated Lennard-Jones clusters (see ``_lj_datamodule``)."""
    return _lj_datamodule


@pytest.fixture(scope="session")
def quiet_trainer() -> Callable[..., Any]:
    """``quiet_trainer(root, **options)``: a Lightning ``Trainer`` that logs and prints nothing
    and keeps autograd on in validation and test (see ``_quiet_trainer``)."""
    return _quiet_trainer


@pytest.fixture(scope="session")
def write_fit_config() -> Callable[..., Path]:
    """``write_fit_config(path, data, model, trainer=None, model_class=PairNN's path)``: a small
    ``equimol fit`` config file (see ``_write_fit_config``)."""
    return _write_fit_config


def _write_tiny_ethanol_config(path: Path, split: Sequence[float] = (0.8, 0.2), **trainer: Any) -> Path:
    """An ``equimol fit`` config of a tiny ``EquivariantPotential`` (2 channels, 1 layer, cutoff
    3 Å) on the shipped ethanol sample, batch 5, one epoch without sanity checks, with the
    trainer settings ``trainer`` (for example ``limit_train_batches=2``)."""
    return _write_fit_config(
        path,
        data={"cutoff": 3.0, "sample": "ethanol_gfn2", "batch_size": 5, "split": list(split)},
        model={"species": ["H", "C", "O"], "cutoff": 3.0, "channels": 2, "num_layers": 1},
        trainer={"num_sanity_val_steps": 0, **trainer},
        model_class="equimol.models.equivariant.EquivariantPotential",
    )


@pytest.fixture(scope="session")
def write_tiny_ethanol_config() -> Callable[..., Path]:
    """``write_tiny_ethanol_config(path, split=(0.8, 0.2), **trainer)``: the config of a tiny
    potential on the shipped ethanol sample, for tests that fit a run to inspect its files
    (see ``_write_tiny_ethanol_config``)."""
    return _write_tiny_ethanol_config


@pytest.fixture(scope="session")
def fitted_copper_backend():
    """An ``Eager`` backend of a tiny float64 ``EquivariantPotential`` (species Cu, H, C, O,
    cutoff 4 Å) fitted for a few seconds to EMT copper: an untrained one pulls atoms together,
    a fitted one keeps fcc copper stable for MD tests. Fitted once per test session, with one
    torch thread, and shared by the engine tests."""
    from torch_geometric.data import Batch

    from equimol.data.graph import atoms_to_graph
    from equimol.engines import Eager
    from equimol.models.equivariant import EquivariantPotential

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        frames = []
        for _ in range(6):
            atoms = bulk("Cu", "fcc", a=3.6 * (1 + rng.uniform(-0.03, 0.03)), cubic=True).repeat((2, 2, 1))
            atoms.rattle(0.12, rng=rng)
            atoms.calc = EMT()
            labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
            frames.append(atoms_to_graph(atoms, 4.0, labels, dtype=torch.float64))
        batch = Batch.from_data_list(frames)
        atoms_per_frame = torch.bincount(batch.batch).double()
        potential = EquivariantPotential(["Cu", "H", "C", "O"], cutoff=4.0, channels=4, num_layers=2).double().train()
        optimizer = torch.optim.Adam(potential.parameters(), lr=3e-2)
        for _ in range(50):
            out = potential(batch, compute_forces=True)
            loss = (((out["energy"] - batch.energy) / atoms_per_frame) ** 2).mean()
            loss = loss + ((out["forces"] - batch.forces) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return Eager(potential.eval())
    finally:
        torch.set_num_threads(threads)
