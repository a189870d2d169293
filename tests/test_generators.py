"""Tests of the data generators in equimol.generate: labels, physics, seeds and errors."""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from scipy import stats

from equimol.data.samples import available_samples, sample_path
from equimol.generate import (
    GENERATORS,
    TOY2D_EQUILIBRIUM,
    LennardJonesExact,
    LJGravityMetropolis,
    coulomb_energy_forces,
    emt_md,
    generator_call,
    integrated_autocorrelation_time,
    lennard_jones_energy_forces,
    lj_cluster,
    lj_gravity_energy_forces,
    lj_gravity_mc,
    molecule_md,
    relaxed_lj_cluster,
    toy2d,
    write_frames,
)


def finite_difference_forces(
    energy: Callable[[np.ndarray], float], pos: np.ndarray, h: float
) -> np.ndarray:
    """``-dE/dpos`` by central differences, ``[N, 3]``."""
    forces = np.zeros_like(pos)
    for index in np.ndindex(*pos.shape):
        plus, minus = pos.copy(), pos.copy()
        plus[index] += h
        minus[index] -= h
        forces[index] = -(energy(plus) - energy(minus)) / (2 * h)
    return forces


def calculator_energy(atoms, make_calculator) -> Callable[[np.ndarray], float]:
    def energy(pos: np.ndarray) -> float:
        trial = atoms.copy()
        trial.positions = pos
        trial.calc = make_calculator()
        return trial.get_potential_energy()

    return energy


# cheap settings per generator, for the seed tests
CHEAP = {
    "toy2d": dict(n_samples=5),
    "lj-cluster": dict(n_atoms=5, n_frames=5),
    "lj-gravity-mc": dict(
        n_particles=8, box_length=5.0, n_frames=3, n_equilibration_sweeps=5,
        n_preliminary_sweeps=0, decorrelation_sweeps=2,
    ),
    "emt-md": dict(size=1, n_frames=3, stride=2, n_equilibration_steps=2),
    "molecule-md": dict(molecule="H2O", n_frames=3, stride=2, n_equilibration_steps=2),
}  # fmt: skip


# --- every generator -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_gives_same_frames_and_other_seed_differs(name: str) -> None:
    first = GENERATORS[name](seed=3, **CHEAP[name])
    again = GENERATORS[name](seed=3, **CHEAP[name])
    other = GENERATORS[name](seed=4, **CHEAP[name])
    assert len(first) == len(again) == len(other) > 0
    # Equal to round-off, not bitwise: tblite's threaded reductions may change the last bit.
    for a, b in zip(first, again):
        np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-12)
        np.testing.assert_allclose(a.get_potential_energy(), b.get_potential_energy(), rtol=1e-13)
        np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-12)
        assert a.info["seed"] == 3 and a.info["generator"] == name
    assert not np.allclose(first[-1].positions, other[-1].positions)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_labels_survive_an_extxyz_round_trip(name: str, tmp_path) -> None:
    frames = GENERATORS[name](seed=0, **CHEAP[name])
    path = tmp_path / f"{name}.xyz"
    write_frames(frames, path)
    back = ase.io.read(path, ":")
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-7)
        assert b.get_potential_energy() == pytest.approx(a.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(b.get_forces(), a.get_forces(), atol=1e-7)
        assert b.info["generator"] == name and b.info["call"] == a.info["call"]
        if a.pbc.any():
            np.testing.assert_allclose(b.get_stress(), a.get_stress(), atol=1e-10)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_frames_record_every_argument_and_the_call_that_reproduces_them(name: str) -> None:
    function = GENERATORS[name]
    frames = function(seed=2, **CHEAP[name])
    arguments = [key for key in inspect.signature(function).parameters if key != "progress"]
    assert all(key in frames[-1].info for key in arguments)
    again = eval(frames[-1].info["call"], {function.__name__: function})  # noqa: S307
    np.testing.assert_allclose(again[-1].positions, frames[-1].positions, rtol=0, atol=1e-12)


def test_generator_call_applies_defaults_and_names_unknown_arguments() -> None:
    function, arguments = generator_call("toy2d", {"seed": 5})
    assert function is toy2d and arguments == {"n_samples": 500, "noise_std": 0.1, "seed": 5}
    with pytest.raises(ValueError, match=r"data\.generator: 'toy2d' takes no argument\(s\) \['n_sample'\]"):
        generator_call("toy2d", {"n_sample": 5}, where="data.generator")
    with pytest.raises(ValueError, match="lj-cluster"):
        generator_call("lj-clustr", {})


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("toy2d", dict(n_samples=-1)),
        ("lj-cluster", dict(n_atoms=-3)),
        ("lj-cluster", dict(n_frames=0)),
        ("lj-gravity-mc", dict(n_particles=-5)),
        ("lj-gravity-mc", dict(dim=4)),
        ("emt-md", dict(size=-2)),
        ("emt-md", dict(size=(2, 0, 2))),
        ("molecule-md", dict(n_frames=-1)),
    ],
)
def test_negative_or_invalid_sizes_raise_naming_the_argument(name: str, bad: dict) -> None:
    (key,) = bad
    with pytest.raises(ValueError, match=key):
        GENERATORS[name](**bad)


# --- toy2d ------------------------------------------------------------------------------


def test_toy2d_frames_are_planar_four_atom_molecules() -> None:
    frames = toy2d(n_samples=50, seed=0)
    assert len(frames) == 50
    pos = np.stack([f.positions for f in frames])
    assert pos.shape == (50, 4, 3)
    assert np.all(pos[..., 2] == 0.0)
    assert np.all(np.stack([f.get_forces() for f in frames])[..., 2] == 0.0)
    assert all(not f.pbc.any() and f.get_chemical_symbols() == ["H"] * 4 for f in frames)
    noise = pos[..., :2] - TOY2D_EQUILIBRIUM[None, :, :2]
    assert noise.std() == pytest.approx(0.1, rel=0.15)
    assert toy2d.__name__ in frames[0].info["call"]


def test_toy2d_energy_equals_independent_pair_sum() -> None:
    for frame in toy2d(n_samples=20, seed=1):
        pos = frame.positions
        expected = sum(
            1.0 / math.dist(pos[i], pos[j]) for i in range(4) for j in range(i + 1, 4)
        )
        assert frame.get_potential_energy() == pytest.approx(expected, rel=1e-12)


def test_toy2d_forces_match_finite_differences() -> None:
    frame = toy2d(n_samples=3, seed=2)[-1]
    fd = finite_difference_forces(lambda p: coulomb_energy_forces(p)[0], frame.positions, 1e-5)
    np.testing.assert_allclose(frame.get_forces(), fd, atol=1e-7)


# --- lj-cluster -------------------------------------------------------------------------


def test_exact_lennard_jones_agrees_with_ase_at_a_large_cutoff(rng) -> None:
    atoms = relaxed_lj_cluster(6, seed=1)
    atoms.rattle(0.05, rng=rng)
    ours = atoms.copy()
    ours.calc = LennardJonesExact()
    ase_lj = atoms.copy()
    ase_lj.calc = LennardJones(epsilon=1.0, sigma=1.0, rc=1e3, smooth=False)
    assert ours.get_potential_energy() == pytest.approx(ase_lj.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(ours.get_forces(), ase_lj.get_forces(), atol=1e-9)


def test_relaxed_lj_cluster_has_near_zero_forces() -> None:
    atoms = relaxed_lj_cluster(8, seed=0)
    forces = lennard_jones_energy_forces(atoms.positions)[1]
    assert np.abs(forces).max() < 1e-5
    assert atoms.get_potential_energy() < -15.0  # 8 bound atoms (global minimum -19.82)


def test_lj_cluster_frames_are_rattled_by_the_requested_std() -> None:
    frames = lj_cluster(n_atoms=8, n_frames=200, rattle_std=0.05, seed=0)
    minimum = relaxed_lj_cluster(8, seed=0).positions
    displacement = np.stack([f.positions for f in frames]) - minimum
    assert displacement.mean() == pytest.approx(0.0, abs=0.003)
    assert displacement.std() == pytest.approx(0.05, rel=0.03)
    assert frames[0].info["minimum_energy"] < min(f.get_potential_energy() for f in frames)


def test_lj_cluster_forces_match_finite_differences() -> None:
    frame = lj_cluster(n_atoms=8, n_frames=2, seed=5)[-1]
    fd = finite_difference_forces(
        lambda p: lennard_jones_energy_forces(p)[0], frame.positions, 1e-5
    )
    np.testing.assert_allclose(frame.get_forces(), fd, atol=1e-6)


# --- lj-gravity-mc ----------------------------------------------------------------------


@pytest.mark.parametrize("dim", [2, 3])
def test_lj_gravity_forces_match_finite_differences(dim: int) -> None:
    frame = lj_gravity_mc(
        n_particles=12, dim=dim, box_length=4.0, gamma=0.3, n_frames=1,
        n_equilibration_sweeps=20, n_preliminary_sweeps=0, decorrelation_sweeps=5, seed=0,
    )[0]  # fmt: skip
    energy = lambda p: lj_gravity_energy_forces(p, gamma=0.3, dim=dim)[0]  # noqa: E731
    assert frame.get_potential_energy() == pytest.approx(energy(frame.positions), rel=1e-12)
    fd = finite_difference_forces(energy, frame.positions, 1e-6)
    scale = np.abs(frame.get_forces()).max()
    np.testing.assert_allclose(frame.get_forces(), fd, atol=1e-6 * max(scale, 1.0))


@pytest.mark.filterwarnings("ignore:lj_gravity_mc. the preliminary run")
@pytest.mark.parametrize("dim", [2, 3])
def test_mc_frames_lie_in_the_box_and_record_their_parameters(dim: int) -> None:
    frames = lj_gravity_mc(
        n_particles=16, dim=dim, box_length=6.0, gamma=0.2, temperature=1.5, n_frames=5,
        n_equilibration_sweeps=50, n_preliminary_sweeps=400, seed=1,
    )  # fmt: skip
    for frame in frames:
        pos = frame.positions
        assert np.all(pos[:, :dim] >= 0.0) and np.all(pos[:, :dim] <= 6.0)
        if dim == 2:
            assert np.all(pos[:, 2] == 0.0) and np.all(frame.get_forces()[:, 2] == 0.0)
        np.testing.assert_allclose(frame.cell.lengths()[:dim], 6.0)
        assert not frame.pbc.any()
        info = frame.info
        assert (info["gamma"], info["temperature"], info["dim"], info["box_length"]) == (
            0.2, 1.5, dim, 6.0,
        )  # fmt: skip
        assert info["decorrelation_sweeps"] == math.ceil(info["tau_int_sweeps"])
    steps = np.diff([f.info["sweep"] for f in frames])
    assert np.all(steps == frames[0].info["decorrelation_sweeps"])


@pytest.mark.parametrize("dim", [2, 3])
def test_incremental_energy_equals_full_recomputation_after_many_moves(dim: int, rng) -> None:
    start = lj_gravity_mc(
        n_particles=30, dim=dim, box_length=5.0 if dim == 3 else 8.0, n_frames=1,
        n_equilibration_sweeps=0, n_preliminary_sweeps=0, decorrelation_sweeps=1, seed=2,
    )[0].positions[:, :dim]  # fmt: skip
    sampler = LJGravityMetropolis(
        start, box_length=5.0 if dim == 3 else 8.0, gamma=0.5, temperature=0.8, step=0.3, rng=rng
    )
    sampler.sweep(200)
    assert sampler.n_accepted > 1000  # thousands of accepted moves entered the running sum
    assert sampler.energy == pytest.approx(sampler.total_energy(), rel=1e-10, abs=1e-9)
    np.testing.assert_allclose(sampler.pair_terms, sampler._pair_terms_matrix(), atol=1e-10)


def truncated_exponential_cdf(rate: float, length: float) -> Callable[[np.ndarray], np.ndarray]:
    """CDF of ``p(h) ∝ exp(-rate h)`` on ``[0, length]``: the barometric law."""

    def cdf(h: np.ndarray) -> np.ndarray:
        return -np.expm1(-rate * np.clip(h, 0.0, length)) / -np.expm1(-rate * length)

    return cdf


GAMMA, TEMPERATURE, LENGTH = 0.125, 2.0, 5.0  # barometric rate 4 gamma / T = 0.25 per sigma


@pytest.mark.filterwarnings("ignore:lj_gravity_mc. the preliminary run")
def test_ideal_gas_heights_follow_the_barometric_law() -> None:
    frames = lj_gravity_mc(
        n_particles=20, dim=3, box_length=LENGTH, gamma=GAMMA, temperature=TEMPERATURE,
        lj=False, n_frames=300, step=1.0, n_equilibration_sweeps=50, n_preliminary_sweeps=500,
        seed=0,
    )  # fmt: skip
    heights = np.concatenate([f.positions[:, 2] for f in frames])
    cdf = truncated_exponential_cdf(4 * GAMMA / TEMPERATURE, LENGTH)
    assert stats.kstest(heights, cdf).pvalue > 1e-3
    # the horizontal axes stay uniform
    assert stats.kstest(frames[0].positions[:, 0] / LENGTH, "uniform").pvalue > 1e-3


def _heights_from_sampler(log_acceptance, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sampler = LJGravityMetropolis(
        rng.uniform(0, LENGTH, size=(20, 3)), LENGTH, GAMMA, TEMPERATURE, lj=False, step=1.0,
        rng=rng, log_acceptance=log_acceptance,
    )  # fmt: skip
    sampler.sweep(50)
    heights = []
    for _ in range(300):
        sampler.sweep(20)
        heights.append(sampler.positions[:, 2].copy())
    return np.concatenate(heights)


@pytest.mark.parametrize(
    ("rule", "is_correct"),
    [
        (lambda du, t: -du / t, True),  # Metropolis
        (lambda du, t: -du, False),  # temperature forgotten
        (lambda du, t: du / t, False),  # wrong sign: every move is accepted
        (lambda du, t: -du / t**2, False),  # temperature squared
    ],
    ids=["metropolis", "no-temperature", "wrong-sign", "temperature-squared"],
)
def test_barometric_check_rejects_wrong_acceptance_rules(rule, is_correct: bool) -> None:
    heights = _heights_from_sampler(rule)
    pvalue = stats.kstest(heights, truncated_exponential_cdf(4 * GAMMA / TEMPERATURE, LENGTH)).pvalue
    # measured with seed 0: Metropolis p = 0.19; the wrong rules p < 1e-40
    if is_correct:
        assert pvalue > 1e-3
    else:
        assert pvalue < 1e-8


def test_short_preliminary_run_warns_that_tau_is_rough() -> None:
    with pytest.warns(UserWarning, match="rough estimate"):
        lj_gravity_mc(
            n_particles=6, box_length=4.0, n_frames=1, n_equilibration_sweeps=0,
            n_preliminary_sweeps=16, seed=0,
        )  # fmt: skip


def test_integrated_autocorrelation_time_of_an_ar1_process(rng) -> None:
    phi = 0.8  # x_t = phi x_{t-1} + noise: tau_int = (1 + phi) / (1 - phi) = 9
    noise = rng.normal(size=100_000)
    x = np.empty_like(noise)
    x[0] = noise[0]
    for t in range(1, len(x)):
        x[t] = phi * x[t - 1] + noise[t]
    assert integrated_autocorrelation_time(x) == pytest.approx(9.0, rel=0.1)
    assert integrated_autocorrelation_time(noise) == pytest.approx(1.0, abs=0.1)


# --- emt-md -----------------------------------------------------------------------------


def test_emt_frames_are_periodic_with_stress_and_fd_forces() -> None:
    frames = emt_md(element="Ni", size=(1, 1, 2), n_frames=2, stride=5, n_equilibration_steps=5)
    frame = frames[-1]
    assert len(frame) == 8 and frame.pbc.all()
    assert frame.get_stress().shape == (6,)
    assert frame.info["element"] == "Ni" and list(frame.info["size"]) == [1, 1, 2]
    # EMT is smooth: central differences with h = 1e-4 Å agree to ~1e-8 eV/Å
    fd = finite_difference_forces(calculator_energy(frame, EMT), frame.positions, 1e-4)
    np.testing.assert_allclose(frame.get_forces(), fd, atol=1e-6)
    reference = frame.copy()
    reference.calc = EMT()
    assert frame.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(frame.get_stress(), reference.get_stress(), atol=1e-10)


def test_emt_unknown_element_names_it_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"'Fe'.*Cu, Ni, Al, Ag, Au, Pd, Pt"):
        emt_md(element="Fe")


# --- molecule-md and the shipped sample ---------------------------------------------------


def test_shipped_ethanol_sample_labels_are_gfn2_energies_and_forces() -> None:
    from equimol.generate import xtb_calculator

    frames = ase.io.read(sample_path("ethanol_gfn2"), ":")
    assert len(frames) == 300
    assert sample_path("ethanol_gfn2").stat().st_size < 2_000_000
    assert frames[0].get_chemical_formula() == "C2H6O"
    assert frames[0].info["call"].startswith("molecule_md(")
    assert frames[0].info["method"] == "GFN2-xTB" and frames[0].info["temperature_K"] == 500.0
    frame = frames[123]
    recomputed = frame.copy()
    recomputed.calc = xtb_calculator()
    # the SCC solution during MD starts from the previous step's, so a fresh calculation agrees
    # to the SCC convergence only (measured: 2e-8 eV, 3.4e-5 eV/Å)
    assert frame.get_potential_energy() == pytest.approx(recomputed.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(frame.get_forces(), recomputed.get_forces(), atol=2e-4)
    # measured: max |F - F_fd| = 6e-5 eV/Å at h = 1e-3 Å (SCC convergence limits it)
    fd = finite_difference_forces(calculator_energy(frame, xtb_calculator), frame.positions, 1e-3)
    np.testing.assert_allclose(frame.get_forces(), fd, atol=5e-4)


def test_molecule_md_labels_are_the_unconstrained_xtb_forces() -> None:
    from equimol.generate import xtb_calculator

    frames = molecule_md(molecule="ethanol", n_frames=2, stride=3, n_equilibration_steps=3)
    for frame in frames:
        fresh = frame.copy()
        fresh.calc = xtb_calculator()
        np.testing.assert_allclose(frame.get_forces(), fresh.get_forces(), atol=2e-4)
        assert np.abs(frame.get_forces().sum(axis=0)).max() < 1e-3  # no net force on a molecule


def test_molecule_md_without_tblite_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tblite.ase", None)
    with pytest.raises(ImportError, match=r'pip install "equimol\[xtb\]"'):
        molecule_md(n_frames=1)


def test_molecule_md_unknown_molecule_is_named() -> None:
    with pytest.raises(ValueError, match="'unobtainium'"):
        molecule_md(molecule="unobtainium")


def test_unknown_sample_lists_the_available_ones() -> None:
    assert "ethanol_gfn2" in available_samples()
    with pytest.raises(ValueError, match="ethanol_gfn2"):
        sample_path("methanol_gfn2")
