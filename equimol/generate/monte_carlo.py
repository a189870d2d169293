"""Metropolis Monte Carlo of a Lennard-Jones fluid under gravity in a hard-walled box.

Reduced units throughout (epsilon = sigma = k_B = 1): lengths in sigma, energies and
temperature in epsilon, gravity strength ``gamma`` in epsilon/sigma. The potential is

    U = 4 sum_{i<j} [r_ij^-12 - r_ij^-6] + 4 gamma sum_i h_i,

where the height ``h`` is the *last active axis*: ``y`` for ``dim=2`` and ``z`` for
``dim=3``. Particles live in the box ``[0, L]^dim``; in 2D the ``z`` coordinate is 0.
Walls are hard: a trial move that leaves the box is mirrored back into it (a symmetric
proposal, so detailed balance holds without a wall energy). Each trial move displaces one
random particle by a uniform vector in ``[-step, step]^dim`` and is accepted with probability
``min(1, exp(-dU / T))``; ``dU`` is computed from the moved particle's ``N - 1`` pair terms
only (O(N) per move), with the pair-energy matrix kept up to date.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from ._checks import check_non_negative, check_positive
from ._frames import frame_generator, label_frame
from .potentials import lj_gravity_energy_forces

__all__ = [
    "LJGravityMetropolis",
    "integrated_autocorrelation_time",
    "lj_gravity_mc",
    "metropolis_log_acceptance",
]


def metropolis_log_acceptance(delta_u: float, temperature: float) -> float:
    """Log of the Metropolis acceptance ratio, ``-dU / T`` (accept if ``log u`` is below it)."""
    return -delta_u / temperature


class LJGravityMetropolis:
    """Single-particle Metropolis sampler of the Lennard-Jones fluid under gravity.

    Args:
        positions: ``[N, dim]`` start positions inside ``[0, box_length]^dim``, sigma.
        box_length: side ``L`` of the box, sigma.
        gamma: gravity strength, epsilon/sigma (energy ``4 gamma h`` per particle).
        temperature: ``T``, epsilon.
        lj: include the Lennard-Jones pair term (``False``: ideal gas in gravity).
        step: largest displacement per axis of a trial move, sigma (must be < ``L``).
        rng: NumPy generator for the moves.
        log_acceptance: ``f(dU, T)``, the log acceptance ratio of a move that raises the
            energy by ``dU``; the default is Metropolis' ``-dU / T``. Exposed so that tests can
            check that a wrong rule is detected.

    Attributes:
        positions: ``[N, dim]`` current positions (updated in place).
        energy: current ``U``, kept by adding each accepted ``dU``.
        pair_terms: ``[N, N]`` current ``r_ij^-12 - r_ij^-6`` (``None`` without LJ), updated
            row and column on each accepted move, so a move costs O(N).
        n_trials, n_accepted: move counters.
    """

    def __init__(
        self,
        positions: np.ndarray,
        box_length: float,
        gamma: float,
        temperature: float,
        lj: bool = True,
        step: float = 0.5,
        rng: np.random.Generator | None = None,
        log_acceptance: Callable[[float, float], float] = metropolis_log_acceptance,
    ) -> None:
        positions = np.array(positions, dtype=float)
        if positions.ndim != 2 or positions.shape[1] not in (2, 3):
            raise ValueError(f"positions must be [N, 2] or [N, 3], got shape {positions.shape}")
        check_positive("box_length", box_length)
        check_positive("temperature", temperature)
        check_positive("step", step)
        if step >= box_length:
            raise ValueError(f"step ({step}) must be smaller than box_length ({box_length})")
        if np.any(positions < 0) or np.any(positions > box_length):
            raise ValueError(f"positions must lie in [0, box_length={box_length}]")
        self.positions = positions
        self.dim = positions.shape[1]
        self.box_length = float(box_length)
        self.gamma = float(gamma)
        self.temperature = float(temperature)
        self.lj = bool(lj)
        self.step = float(step)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.log_acceptance = log_acceptance
        self.pair_terms = self._pair_terms_matrix() if self.lj else None
        self.energy = self.total_energy()
        if not np.isfinite(self.energy):
            raise ValueError("start positions overlap: the start energy is not finite")
        self.n_trials = 0
        self.n_accepted = 0

    @property
    def n_particles(self) -> int:
        return len(self.positions)

    def _pair_terms_matrix(self) -> np.ndarray:
        """``[N, N]`` LJ pair terms ``r^-12 - r^-6`` (a quarter of the pair energy), zero
        diagonal."""
        diff = self.positions[:, None, :] - self.positions[None, :, :]
        r2 = np.einsum("ijk,ijk->ij", diff, diff)
        np.fill_diagonal(r2, np.inf)
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            inv6 = 1.0 / (r2 * r2 * r2)
            return inv6 * inv6 - inv6

    def total_energy(self) -> float:
        """``U`` recomputed from scratch, O(N^2), epsilon."""
        energy, _ = lj_gravity_energy_forces(
            self._positions_3d(), self.gamma, self.dim, lj=self.lj
        )
        return energy

    def energy_and_forces(self) -> tuple[float, np.ndarray]:
        """``(U, F)`` of the current configuration; ``F`` is ``[N, 3]`` (walls excluded)."""
        return lj_gravity_energy_forces(self._positions_3d(), self.gamma, self.dim, lj=self.lj)

    def _positions_3d(self) -> np.ndarray:
        pos = np.zeros((self.n_particles, 3))
        pos[:, : self.dim] = self.positions
        return pos

    def sweep(self, n_sweeps: int = 1) -> None:
        """Run ``n_sweeps`` sweeps of ``N`` single-particle trial moves each."""
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            energy, accepted = self._run(n_sweeps, self.energy)
        self.energy = energy
        self.n_trials += n_sweeps * self.n_particles
        self.n_accepted += accepted

    def _run(self, n_sweeps: int, energy: float) -> tuple[float, int]:
        """The move loop of :meth:`sweep`; returns the new energy and the accepted count."""
        n, dim, box = self.n_particles, self.dim, self.box_length
        pos, pair, lj = self.positions, self.pair_terms, self.lj
        grav = 4.0 * self.gamma
        temperature, log_acc = self.temperature, self.log_acceptance
        accepted = 0
        for _ in range(n_sweeps):
            # random numbers for the whole sweep at once; trial positions are formed from the
            # particle's position at the time of its move
            indices = self.rng.integers(n, size=n).tolist()
            displacements = self.rng.uniform(-self.step, self.step, size=(n, dim))
            log_u = np.log(self.rng.random(n)).tolist()
            for k in range(n):
                i = indices[k]
                new = pos[i] + displacements[k]
                # mirror into [0, L] (hard walls): valid for displacements shorter than L
                new = box - np.abs(box - np.abs(new))
                delta = grav * (float(new[-1]) - float(pos[i, -1]))
                if lj:
                    d = pos - new
                    r2 = np.einsum("ij,ij->i", d, d)
                    r2[i] = np.inf
                    inv6 = r2**-3
                    row = inv6 * inv6 - inv6
                    delta += 4.0 * float(row.sum() - pair[i].sum())
                if delta <= 0.0 or log_u[k] < log_acc(delta, temperature):
                    pos[i] = new
                    energy += delta
                    accepted += 1
                    if lj:
                        pair[i] = row
                        pair[:, i] = row
        return energy, accepted


def integrated_autocorrelation_time(series: np.ndarray, window_factor: float = 5.0) -> float:
    """Integrated autocorrelation time ``tau = 1 + 2 sum_t rho(t)`` of a 1D series.

    The sum is cut at Sokal's self-consistent window: the smallest ``M`` with
    ``M >= window_factor * tau(M)``. ``tau`` is in units of the sampling interval (so in
    sweeps for one sample per sweep); samples ``tau`` apart are roughly independent, and a
    series of length ``n`` holds about ``n / tau`` independent samples.

    Args:
        series: ``[n]`` samples, e.g. the energy after each sweep.
        window_factor: Sokal's ``c`` (5 for nearly exponential decay).

    Returns:
        ``tau >= 1`` (1 for a constant series).
    """
    x = np.asarray(series, dtype=float)
    if x.ndim != 1 or len(x) < 4:
        raise ValueError(f"series must be 1D with at least 4 samples, got shape {x.shape}")
    x = x - x.mean()
    n = len(x)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(x, size)
    acf = np.fft.irfft(f * np.conj(f), size)[:n]
    if acf[0] <= 0:
        return 1.0
    rho = acf / acf[0]
    tau = 2.0 * np.cumsum(rho) - 1.0
    window = np.arange(n)
    ok = window >= window_factor * tau
    m = int(np.argmax(ok)) if ok.any() else n - 1
    return float(max(tau[m], 1.0))


def _initial_positions(
    n_particles: int, dim: int, box_length: float, lj: bool, rng: np.random.Generator
) -> np.ndarray:
    """Random distinct sites of a square/cubic grid filling the box, ``[N, dim]``."""
    per_side = math.ceil(n_particles ** (1.0 / dim) - 1e-9)
    while per_side**dim < n_particles:
        per_side += 1
    spacing = box_length / per_side
    if lj and spacing < 0.9:
        raise ValueError(
            f"box_length={box_length} is too small for n_particles={n_particles} in {dim}D "
            f"with the Lennard-Jones term: the start grid spacing {spacing:.3f} is below 0.9"
        )
    grid = np.stack(
        np.meshgrid(*([np.arange(per_side)] * dim), indexing="ij"), axis=-1
    ).reshape(-1, dim)
    sites = rng.choice(len(grid), size=n_particles, replace=False)
    return (grid[sites] + 0.5) * spacing


@frame_generator("lj-gravity-mc")
def lj_gravity_mc(
    n_particles: int = 32,
    dim: int = 2,
    box_length: float = 10.0,
    gamma: float = 0.1,
    temperature: float = 1.0,
    lj: bool = True,
    n_frames: int = 500,
    step: float = 0.5,
    n_equilibration_sweeps: int = 500,
    n_preliminary_sweeps: int = 10000,
    decorrelation_sweeps: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[Atoms]:
    """Decorrelated Metropolis samples of a Lennard-Jones fluid under gravity.

    See the module docstring for the potential, walls and moves (reduced units). After
    ``n_equilibration_sweeps``, a preliminary run of ``n_preliminary_sweeps`` records the
    energy after every sweep; its integrated autocorrelation time ``tau`` (in sweeps, see
    :func:`integrated_autocorrelation_time`) sets the spacing ``ceil(tau)`` between saved
    frames, unless ``decorrelation_sweeps`` is given. Then one frame is saved per spacing.

    Args:
        n_particles: number of particles ``N`` (argon symbols).
        dim: 2 (``z = 0``, height ``y``) or 3 (height ``z``).
        box_length: side ``L`` of the box, sigma.
        gamma: gravity strength, epsilon/sigma.
        temperature: ``T``, epsilon (k_B = 1).
        lj: include the Lennard-Jones pair term; ``False`` samples the ideal barometric gas.
        n_frames: number of frames saved.
        step: largest displacement per axis of a trial move, sigma (about 50% acceptance for
            the defaults in 2D).
        n_equilibration_sweeps: sweeps discarded before the preliminary run.
        n_preliminary_sweeps: sweeps of the run that measures ``tau`` (0 is allowed only
            with ``decorrelation_sweeps``).
        decorrelation_sweeps: sweeps between frames; ``None`` uses ``ceil(tau)``.
        seed: seed of the start configuration and the moves.
        progress: show a progress bar.

    Returns:
        ``n_frames`` frames: positions ``[N, 3]`` in ``[0, L]`` (cell ``L`` on each active
        axis, ``pbc`` False), ``energy`` = ``U`` (epsilon) and ``forces`` = ``-dU/dpos``
        (epsilon/sigma, walls excluded), with ``info`` keys ``generator``, the arguments
        (``decorrelation_sweeps`` as the spacing used), ``tau_int_sweeps``,
        ``acceptance_rate``, ``sweep``, ``units`` and ``call``.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    check_positive("n_particles", n_particles)
    check_positive("n_frames", n_frames)
    check_non_negative("n_equilibration_sweeps", n_equilibration_sweeps)
    check_non_negative("n_preliminary_sweeps", n_preliminary_sweeps)
    if decorrelation_sweeps is not None:
        check_positive("decorrelation_sweeps", decorrelation_sweeps)
    elif n_preliminary_sweeps < 16:
        raise ValueError(
            "n_preliminary_sweeps must be at least 16 to estimate the decorrelation time "
            f"(got {n_preliminary_sweeps}); or give decorrelation_sweeps"
        )
    rng = np.random.default_rng(seed)
    start = _initial_positions(n_particles, dim, box_length, lj, rng)
    sampler = LJGravityMetropolis(start, box_length, gamma, temperature, lj, step, rng)

    bar = tqdm(
        total=n_equilibration_sweeps + n_preliminary_sweeps,
        desc="lj-gravity-mc: equilibrate + measure tau",
        unit="sweep",
        disable=not progress,
    )
    for _ in range(n_equilibration_sweeps):
        sampler.sweep()
        bar.update()
    energies = np.empty(n_preliminary_sweeps)
    for s in range(n_preliminary_sweeps):
        sampler.sweep()
        energies[s] = sampler.energy
        bar.update()
    bar.close()
    tau = integrated_autocorrelation_time(energies) if n_preliminary_sweeps >= 16 else float("nan")
    if n_preliminary_sweeps < 20 * tau:
        warnings.warn(
            f"lj_gravity_mc: the preliminary run ({n_preliminary_sweeps} sweeps) is shorter than "
            f"20 autocorrelation times (tau = {tau:.1f} sweeps), so tau is a rough estimate; "
            "raise n_preliminary_sweeps or give decorrelation_sweeps",
            stacklevel=2,
        )
    spacing = decorrelation_sweeps if decorrelation_sweeps is not None else math.ceil(tau)

    cell = np.zeros((3, 3))
    cell[np.arange(dim), np.arange(dim)] = box_length
    frames = []
    sweeps_done = n_equilibration_sweeps + n_preliminary_sweeps
    for _ in tqdm(range(n_frames), desc="lj-gravity-mc: sample", unit="frame", disable=not progress):
        sampler.sweep(spacing)
        sweeps_done += spacing
        energy, forces = sampler.energy_and_forces()
        sampler.energy = energy  # resynchronise the running sum (removes round-off drift)
        atoms = Atoms(["Ar"] * n_particles, positions=sampler._positions_3d(), cell=cell, pbc=False)
        info = {
            "tau_int_sweeps": tau,
            "decorrelation_sweeps": spacing,
            "acceptance_rate": sampler.n_accepted / sampler.n_trials,
            "sweep": sweeps_done,
            "units": "reduced",
        }
        frames.append(label_frame(atoms, energy, forces, info=info))
    return frames
