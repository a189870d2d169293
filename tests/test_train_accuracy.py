"""Training reaches a real accuracy on Lennard-Jones data, and MD with the trained model
conserves energy through the ASE calculator.

The accuracy requirement (force MAE below 2% of the test set's force RMS) is checked on a
shipped model, :class:`equimol.models.pair.PairNN`, trained by ``PotentialModule`` under
Lightning; a user's own model class (``InversePowerPair``) is trained the same way and
must recover the Lennard-Jones coefficients.
"""

from __future__ import annotations

import copy
import functools
from typing import Callable

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from torch_geometric.data import Data

from equimol import _keys as K
from equimol.calculator import EquimolCalculator
from equimol.data.graph import edge_vectors
from equimol.models.base import Potential, num_structures, structure_index
from equimol.models.species import ALL_ELEMENTS
from equimol.models.pair import PairNN
from equimol.train import EMA, PotentialModule

CUTOFF = 3.0  # every pair of the rattled 8-atom cluster is within 3 sigma
GENERATOR = {"n_atoms": 8, "rattle_std": 0.05}  # lj-cluster options besides n_frames and seed


class InversePowerPair(Potential):
    """A user's own model: ``E = sum_{i<j} sum_k c_k r^-k`` with learnable ``c_k``.

    Lennard-Jones (``c_12 = 4, c_6 = -4``, reduced units) lies in its span, so a correct
    training loop must drive the force error close to zero.
    """

    def __init__(self, cutoff: float, powers: list[int] = [6, 12]) -> None:  # noqa: B006
        super().__init__(ALL_ELEMENTS, cutoff)  # one pair function for every element
        self.register_buffer("powers", torch.tensor(powers, dtype=torch.float32))
        self.coefficients = torch.nn.Parameter(torch.zeros(len(powers)))

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        vectors = edge_vectors(pos, data.edge_index, data.edge_shift, cell, getattr(data, "batch", None))
        r = torch.linalg.vector_norm(vectors, dim=-1)
        pair = 0.5 * (r[:, None] ** -self.powers.to(r.dtype) * self.coefficients.to(r.dtype)).sum(-1)
        per_atom = torch.zeros(len(pos), dtype=pos.dtype, device=pos.device).index_add(0, data.edge_index[1], pair)
        energy = torch.zeros(num_structures(data), dtype=pos.dtype, device=pos.device)
        return {K.ENERGY: energy.index_add(0, structure_index(data), per_atom)}


@pytest.fixture(scope="module")
def train(lj_datamodule, quiet_trainer):
    """``train(make_model, root, lr, epochs, cosine)``: fit ``make_model()`` (built after seeding,
    so its initial weights are reproducible) on 120 rattled LJ8 frames (40 validation, 40 test);
    returns ``(module, datamodule, test metrics, force RMS of the test set)``."""

    def train(make_model: Callable[[], Potential], root, lr: float, epochs: int, cosine: bool):
        pl.seed_everything(0)
        datamodule = lj_datamodule(root / "data", n_frames=200, cutoff=CUTOFF, generator_options=GENERATOR,
                                   split=[120, 40, 40], batch_size=20)
        scheduler = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs) if cosine else None
        module = PotentialModule(
            make_model(),
            energy_weight=1.0,
            forces_weight=1.0,
            optimizer=functools.partial(torch.optim.Adam, lr=lr),
            lr_scheduler=scheduler,
        )
        trainer = quiet_trainer(root, max_epochs=epochs, enable_checkpointing=False, callbacks=[EMA(decay=0.9)])
        trainer.fit(module, datamodule)
        metrics = trainer.test(module, datamodule, verbose=False)[0]
        forces = torch.cat([datamodule.test_set[i].forces for i in range(len(datamodule.test_set))])
        return module, datamodule, metrics, float(forces.pow(2).mean().sqrt())

    return train


@pytest.fixture(scope="module")
def trained_pair_nn(tmp_path_factory, train):
    """The shipped pair network, inverse-distance basis, Adam 0.05 with cosine decay, 40 epochs."""
    def make_model() -> PairNN:
        return PairNN(CUTOFF, hidden=[32, 32], basis="inverse", basis_min=0.8)

    return train(make_model, tmp_path_factory.mktemp("pair_nn"), lr=0.05, epochs=40, cosine=True)


@pytest.fixture(scope="module")
def trained_inverse_power(tmp_path_factory, train):
    return train(lambda: InversePowerPair(CUTOFF), tmp_path_factory.mktemp("inverse_power"), lr=0.2, epochs=40, cosine=False)


def test_pair_nn_force_error_is_below_two_percent_of_force_rms(trained_pair_nn):
    _, _, metrics, force_rms = trained_pair_nn
    assert metrics["test/forces_mae"] < 0.02 * force_rms, (metrics["test/forces_mae"], force_rms)
    assert metrics["test/energy_r2"] > 0.99


def test_pair_nn_learns_the_lennard_jones_pair_force(trained_pair_nn):
    """Where the data samples pair distances densely (the first and second neighbour shells,
    0.95-1.3 and 1.7-1.95 sigma; the gap between them holds almost no pairs), the learned pair
    force -dphi/dr stays within 2% of the largest |LJ force| there (59 epsilon/sigma)."""
    module, _, _, _ = trained_pair_nn
    r = torch.cat([torch.linspace(0.95, 1.3, 36), torch.linspace(1.7, 1.95, 26)]).double().requires_grad_(True)
    model = copy.deepcopy(module.model).double()
    learned = -torch.autograd.grad(model.pair_energy(r).sum(), r)[0]
    r = r.detach()
    exact = 4.0 * (12.0 * r**-13 - 6.0 * r**-7)
    assert (learned - exact).abs().max() < 0.02 * exact.abs().max(), (learned - exact).abs().max()


def test_user_model_recovers_lennard_jones_coefficients(trained_inverse_power):
    module, _, metrics, force_rms = trained_inverse_power
    assert metrics["test/forces_mae"] < 0.02 * force_rms, (metrics["test/forces_mae"], force_rms)
    assert metrics["test/energy_r2"] > 0.99
    np.testing.assert_allclose(module.model.coefficients.detach().numpy(), [-4.0, 4.0], rtol=0.01)


@pytest.mark.parametrize("fixture", ["trained_pair_nn", "trained_inverse_power"])
def test_nve_md_with_trained_model_conserves_energy(fixture, request):
    """VelocityVerlet, dt = 0.002 (reduced time), 500 steps, float64 calculator:
    |E(t) - E(0)| / N stays below 1e-3 epsilon per atom (the kinetic energy per atom is ~0.1)."""
    module, datamodule, _, _ = request.getfixturevalue(fixture)
    atoms = datamodule.dataset.atoms(datamodule.split_indices["test"][0])
    atoms.calc = EquimolCalculator(module.model, dtype=torch.float64)
    atoms.set_masses(np.ones(len(atoms)))  # reduced units: m = 1
    MaxwellBoltzmannDistribution(atoms, temperature_K=0.1 / units.kB, rng=np.random.default_rng(0))
    start = atoms.get_total_energy()
    drift = []
    dynamics = VelocityVerlet(atoms, timestep=0.002)
    dynamics.attach(lambda: drift.append(abs(atoms.get_total_energy() - start) / len(atoms)), interval=10)
    dynamics.run(500)
    assert atoms.get_kinetic_energy() / len(atoms) > 0.01  # the cluster really moves
    assert max(drift) < 1e-3, max(drift)
