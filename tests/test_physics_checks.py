"""The shipped physics checks pass a correct potential at round-off and catch broken ones.

The reference is a smooth Lennard-Jones pair potential with a polynomial cutoff, written on
``equimol.models.base.Potential``; each broken model differs from it by one classic mistake,
and the check made for that mistake must fail while it would pass the reference.
"""

from __future__ import annotations

import functools

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk
from torch import nn
from torch_geometric.data import Data

from equimol.data.graph import atoms_to_graph, edge_vectors
from equimol.models.base import Potential, num_structures, structure_index
from equimol.testing import (
    CHECKS,
    InvarianceReport,
    assert_batch_consistent,
    assert_forces_match_finite_differences,
    assert_no_gradient_leak,
    assert_permutation_invariant,
    assert_rotation_invariant,
    assert_smooth_at_cutoff,
    assert_stress_matches_finite_differences,
    assert_translation_invariant,
    batch_consistency_error,
    check_model,
    cutoff_smoothness_error,
    default_tolerance,
    force_finite_difference_error,
    gradient_leak_error,
    permutation_invariance_error,
    rotation_invariance_error,
    stress_finite_difference_error,
    translation_invariance_error,
)

CUTOFF = 4.5
SPECIES = (1, 6, 8)
# sigma (Å) and epsilon (eV) per species; pairs mix by Lorentz-Berthelot rules
SIGMA = {1: 1.5, 6: 1.9, 8: 1.7}
EPSILON = {1: 0.6, 6: 1.2, 8: 0.9}


def _scatter_sum(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    return torch.zeros(size, dtype=values.dtype, device=values.device).index_add(0, index, values)


class SmoothPairPotential(Potential):
    """``E = 1/2 sum_ij 4 eps (x^12 - x^6) (1 - (r/r_c)^2)^3``, x = sigma/r: smooth (C2) at r_c."""

    def __init__(self, cutoff: float = CUTOFF) -> None:
        super().__init__(list(SPECIES), cutoff)
        sigma, epsilon = torch.zeros(119), torch.zeros(119)
        for z in SPECIES:
            sigma[z], epsilon[z] = SIGMA[z], EPSILON[z]
        self.register_buffer("sigma", sigma)
        self.register_buffer("epsilon", epsilon)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        return (1.0 - (r / self.cutoff) ** 2).clamp(min=0.0) ** 3

    def per_atom_energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        vectors = edge_vectors(pos, data.edge_index, data.edge_shift, cell, getattr(data, "batch", None))
        r = vectors.norm(dim=1)
        j, i = data.edge_index
        z = data.z
        sigma = 0.5 * (self.sigma[z[i]] + self.sigma[z[j]])
        epsilon = torch.sqrt(self.epsilon[z[i]] * self.epsilon[z[j]])
        x6 = (sigma / r) ** 6
        pair = 4.0 * epsilon * (x6 * x6 - x6) * self.envelope(r)
        return _scatter_sum(0.5 * pair, i, pos.shape[0])

    def energy(self, data: Data, pos: torch.Tensor, cell: torch.Tensor) -> dict[str, torch.Tensor]:
        per_atom = self.per_atom_energy(data, pos, cell)
        return {"energy": _scatter_sum(per_atom, structure_index(data), num_structures(data))}


class CoordinateInEnergy(SmoothPairPotential):
    """Broken: adds 0.3 eV/Å times the x coordinate of every atom (not invariant)."""

    def energy(self, data, pos, cell):
        out = super().energy(data, pos, cell)
        out["energy"] = out["energy"] + _scatter_sum(0.3 * pos[:, 0], structure_index(data), num_structures(data))
        return out


class OrderDependent(SmoothPairPotential):
    """Broken: weights atom k of each structure by 1 + 0.1 k (depends on the atom order)."""

    def energy(self, data, pos, cell):
        batch = structure_index(data)
        counts = torch.bincount(batch, minlength=num_structures(data))
        first = torch.cumsum(counts, 0) - counts
        weights = 1.0 + 0.1 * (torch.arange(len(batch), device=batch.device) - first[batch])
        per_atom = self.per_atom_energy(data, pos, cell) * weights.to(pos.dtype)
        return {"energy": _scatter_sum(per_atom, batch, num_structures(data))}


class Chiral(SmoothPairPotential):
    """Rotation-invariant but not mirror-invariant: adds a triple product of the first atoms."""

    def energy(self, data, pos, cell):
        out = super().energy(data, pos, cell)
        batch = structure_index(data)
        counts = torch.bincount(batch, minlength=num_structures(data))
        first = torch.cumsum(counts, 0) - counts
        origin = pos[first]
        frame = torch.stack([pos[first + k] - origin for k in (1, 2, 3)], dim=1)  # [B, 3, 3]
        out["energy"] = out["energy"] + 0.1 * torch.linalg.det(frame)
        return out


class ForcesMissEnvelopeDerivative(SmoothPairPotential):
    """Broken: forces (and stress) from a head that drops the envelope's derivative.

    The energy is the reference energy, but the gradient is taken with the envelope held
    constant, a classic bug: the forces are not ``-dE/dx``.
    """

    def envelope(self, r):
        return super().envelope(r.detach())


class BatchMeanLeak(SmoothPairPotential):
    """Broken: subtracts 0.2 x the batch-wide mean per-atom energy from every atom."""

    def energy(self, data, pos, cell):
        per_atom = self.per_atom_energy(data, pos, cell)
        per_atom = per_atom - 0.2 * per_atom.mean()
        return {"energy": _scatter_sum(per_atom, structure_index(data), num_structures(data))}


class HardCutoff(SmoothPairPotential):
    """Broken: plain Lennard-Jones truncated at the cutoff (energy jumps there)."""

    def envelope(self, r):
        return torch.ones_like(r)


class EnergyOnly(nn.Module):
    """A model with ``forward(data)`` alone that returns energies only."""

    def __init__(self) -> None:
        super().__init__()
        self.potential = SmoothPairPotential()

    def forward(self, data):
        return {"energy": self.potential(data, compute_forces=False)["energy"]}


# ----------------------------------------------------------------------------------------
# structures


def _random_molecule(rng: np.random.Generator, n_atoms: int) -> ase.Atoms:
    """Atoms added one by one at 1.0-1.4 sigma from a random earlier atom, never closer than 0.95 sigma."""
    numbers = rng.choice(SPECIES, size=n_atoms)
    positions = [np.zeros(3)]
    while len(positions) < n_atoms:
        z = numbers[len(positions)]
        anchor = positions[rng.integers(len(positions))]
        direction = rng.normal(size=3)
        candidate = anchor + direction / np.linalg.norm(direction) * SIGMA[z] * rng.uniform(1.0, 1.4)
        gaps = [np.linalg.norm(candidate - p) / (0.5 * (SIGMA[z] + SIGMA[numbers[k]])) for k, p in enumerate(positions)]
        if min(gaps) > 0.95:
            positions.append(candidate)
    return ase.Atoms(numbers=numbers, positions=np.array(positions))


def _periodic_cell(rng: np.random.Generator) -> ase.Atoms:
    """A triclinic periodic cell with three species (8 atoms, cell shorter than twice the cutoff)."""
    atoms = bulk("Ar", "fcc", a=3.1, cubic=True).repeat((2, 1, 1))
    atoms.set_cell(atoms.cell[:] @ (np.eye(3) + 0.05 * rng.normal(size=(3, 3))), scale_atoms=True)
    atoms.numbers = rng.choice(SPECIES, size=len(atoms))
    atoms.numbers[:3] = SPECIES
    atoms.rattle(0.05, seed=int(rng.integers(1000)))
    return atoms


def _structures(dtype: torch.dtype) -> list[Data]:
    rng = np.random.default_rng(20261121)
    atoms = [_random_molecule(rng, 7), _random_molecule(rng, 10), _periodic_cell(rng)]
    return [atoms_to_graph(a, CUTOFF, dtype=dtype) for a in atoms]


@pytest.fixture(scope="module")
def structures() -> list[Data]:
    return _structures(torch.float64)


@pytest.fixture(scope="module")
def structures32() -> list[Data]:
    return _structures(torch.float32)


# ----------------------------------------------------------------------------------------
# the reference passes every check


def test_reference_potential_passes_every_check_at_round_off_in_float64(structures):
    report = check_model(SmoothPairPotential(), structures, strict=True)
    assert {key.split("/")[0] for key in report} == set(CHECKS)
    exact = [value for key, value in report.items() if not key.endswith("_fd")]
    assert max(exact) < 1e-12, report
    assert report["forces_fd"] < 1e-8 and report["stress_fd"] < 1e-8, report


def test_reference_potential_passes_every_check_within_1e5_in_float32(structures32):
    model = SmoothPairPotential()
    report = check_model(model, structures32, strict=True)
    assert max(value for key, value in report.items() if not key.endswith("_fd")) < 1e-5, report
    assert model.sigma.dtype == torch.float32 and model.training  # the caller's model is untouched


def test_assert_forms_pass_the_reference_and_return_the_measured_errors(structures):
    model = SmoothPairPotential()
    assert isinstance(assert_rotation_invariant(model, structures), InvarianceReport)
    assert assert_rotation_invariant(model, structures, reflections=True).worst < 1e-12
    assert assert_translation_invariant(model, structures).worst < 1e-12
    assert assert_permutation_invariant(model, structures, same_species_only=False).worst < 1e-12
    assert assert_forces_match_finite_differences(model, structures[0], max_components=None) < 1e-8
    assert assert_stress_matches_finite_differences(model, structures[2]) < 1e-8
    assert assert_batch_consistent(model, structures).worst < 1e-12
    assert assert_no_gradient_leak(model, structures) == 0.0
    assert assert_smooth_at_cutoff(model, CUTOFF, SPECIES).worst < 1e-12
    assert assert_smooth_at_cutoff(model, CUTOFF, SPECIES, dtype=torch.float32).worst < 1e-5


def test_planar_checks_pass_a_planar_structure():
    atoms = ase.Atoms("C4H2", positions=[[0, 0, 0], [1.9, 0.1, 0], [0.2, 2.0, 0], [2.0, 2.1, 0],
                                          [-1.4, -0.6, 0], [3.4, 2.5, 0]])
    graph = atoms_to_graph(atoms, CUTOFF, dtype=torch.float64)
    report = check_model(SmoothPairPotential(), [graph], ["rotation", "reflection", "translation"], planar=True)
    assert max(report.values()) < 1e-12, report


def test_energy_only_model_gets_energy_checks(structures):
    model = EnergyOnly()
    report = rotation_invariance_error(model, structures)
    assert report.force_error is None and report.energy_error < 1e-12
    summary = check_model(model, structures, strict=True)
    assert "forces_fd" not in summary and "rotation/forces" not in summary and "rotation/energy" in summary
    with pytest.raises(ValueError, match="returns no forces"):
        force_finite_difference_error(model, structures[0])
    with pytest.raises(ValueError, match="cannot run"):
        check_model(model, structures, ["forces_fd"])


# ----------------------------------------------------------------------------------------
# each broken model is caught by the check made for its mistake

# (broken model, the assert form of the check made for its mistake, what its error message says)
CAUGHT = [
    pytest.param(CoordinateInEnergy, assert_rotation_invariant, r"rotation invariance \(energy\): error .* exceeds",
                 id="coordinate-in-energy/rotation"),
    pytest.param(CoordinateInEnergy, assert_translation_invariant, "translation invariance",
                 id="coordinate-in-energy/translation"),
    pytest.param(OrderDependent, assert_permutation_invariant, "permutation invariance", id="order-dependent"),
    pytest.param(Chiral, functools.partial(assert_rotation_invariant, reflections=True), "reflection invariance",
                 id="chiral/reflection"),
    pytest.param(ForcesMissEnvelopeDerivative, assert_forces_match_finite_differences, "forces vs finite differences",
                 id="forces-miss-envelope/forces"),
    pytest.param(ForcesMissEnvelopeDerivative, assert_stress_matches_finite_differences,
                 "stress vs finite differences", id="forces-miss-envelope/stress"),
    pytest.param(BatchMeanLeak, assert_batch_consistent, "batch consistency", id="batch-mean-leak/batch"),
    pytest.param(BatchMeanLeak, assert_no_gradient_leak, "gradient leak", id="batch-mean-leak/gradient-leak"),
    pytest.param(HardCutoff, lambda model, _: assert_smooth_at_cutoff(model, CUTOFF, SPECIES),
                 "smoothness at the cutoff", id="hard-cutoff"),
]


@pytest.mark.parametrize(("broken", "assert_check", "message"), CAUGHT)
def test_assert_form_of_the_check_made_for_a_mistake_fails_naming_it(structures, broken, assert_check, message):
    with pytest.raises(AssertionError, match=message):
        assert_check(broken(), structures)


def test_coordinate_in_energy_fails_rotation_and_translation_checks(structures):
    model = CoordinateInEnergy()
    assert rotation_invariance_error(model, structures).energy_error > 1e-2
    assert translation_invariance_error(model, structures).energy_error > 1e-2
    # the mistake is not in its derivatives, its batching or its order dependence
    assert permutation_invariance_error(model, structures).worst < 1e-12
    assert force_finite_difference_error(model, structures) < 1e-8


def test_order_dependent_energy_fails_permutation_check(structures):
    model = OrderDependent()
    report = permutation_invariance_error(model, structures)
    assert report.energy_error > 1e-3 and report.force_error > 1e-3
    assert rotation_invariance_error(model, structures).worst < 1e-12


def test_chiral_energy_passes_rotation_check_but_fails_reflection_check(structures):
    model = Chiral()
    assert rotation_invariance_error(model, structures).worst < 1e-12
    report = rotation_invariance_error(model, structures, reflections=True)
    assert report.energy_error > 1e-2 and report.force_error > 1e-2


def test_forces_that_are_not_minus_energy_gradient_fail_finite_difference_checks(structures):
    model = ForcesMissEnvelopeDerivative()
    assert force_finite_difference_error(model, structures) > 1e-3
    assert stress_finite_difference_error(model, structures) > 1e-3
    # still equivariant: only the derivative check can see this mistake
    assert rotation_invariance_error(model, structures).worst < 1e-12


def test_batch_mean_normalisation_fails_batch_consistency_and_gradient_leak_checks(structures):
    model = BatchMeanLeak()
    assert batch_consistency_error(model, structures).energy_error > 1e-3
    assert gradient_leak_error(model, structures) > 1e-3
    # one structure at a time it is a fine potential
    assert rotation_invariance_error(model, structures).worst < 1e-12
    assert force_finite_difference_error(model, structures) < 1e-8


def test_hard_cutoff_fails_smoothness_check(structures):
    model = HardCutoff()
    report = cutoff_smoothness_error(model, CUTOFF, SPECIES)
    # the jump is the truncated pair energy and force at the cutoff
    assert report.energy_error > 1e-3 and report.force_error > 1e-3
    with pytest.raises(AssertionError, match="cutoff_smoothness/energy"):
        check_model(model, structures, ["cutoff_smoothness", "rotation"], strict=True)


def test_check_model_reports_every_failure_of_a_broken_model(structures):
    report = check_model(CoordinateInEnergy(), structures)
    tol = default_tolerance(torch.float64)
    failing = {key for key, value in report.items() if value > tol and not key.endswith("_fd")}
    assert failing == {"rotation/energy", "rotation/forces", "reflection/energy", "reflection/forces",
                       "translation/energy"}, report
    with pytest.raises(ValueError, match="unknown check"):
        check_model(CoordinateInEnergy(), structures, ["rotations"])
