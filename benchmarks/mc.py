"""Monte Carlo speed: trial moves per second of the Lennard-Jones-in-gravity sampler.

Prints a table for 2D and 3D at N = 32 and 128 (density 0.3 sigma^-dim, gamma = 0.1,
T = 1, step 0.5), with and without the LJ term: the median of a few repeats, one thread,
timed in CPU seconds of this process.

    python benchmarks/mc.py [--repeats 5] [--moves 100000]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from equimol.generate import LJGravityMetropolis, lj_gravity_mc  # noqa: E402


def moves_per_second(n: int, dim: int, lj: bool, moves: int, seed: int) -> tuple[float, float]:
    """Trial moves per second and acceptance rate of one timed run after a short warm-up."""
    box = (n / 0.3) ** (1.0 / dim)
    start = lj_gravity_mc(
        n_particles=n, dim=dim, box_length=box, n_frames=1, n_equilibration_sweeps=0,
        n_preliminary_sweeps=0, decorrelation_sweeps=1, seed=seed,
    )[0].positions[:, :dim]  # fmt: skip
    sampler = LJGravityMetropolis(
        start, box, gamma=0.1, temperature=1.0, lj=lj, step=0.5, rng=np.random.default_rng(seed)
    )
    sampler.sweep(20)
    sweeps = max(1, moves // n)
    trials, accepted = sampler.n_trials, sampler.n_accepted
    t0 = time.process_time()  # CPU time of this process: robust to other load on the machine
    sampler.sweep(sweeps)
    elapsed = time.process_time() - t0
    return sweeps * n / elapsed, (sampler.n_accepted - accepted) / (sampler.n_trials - trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--moves", type=int, default=100_000, help="trial moves per repeat")
    args = parser.parse_args()
    print(f"{'dim':>3} {'N':>5} {'LJ':>5} {'moves/s (median)':>17} {'min':>9} {'max':>9} {'accept':>7}")
    for dim in (2, 3):
        for n in (32, 128):
            for lj in (True, False):
                runs = [moves_per_second(n, dim, lj, args.moves, seed) for seed in range(args.repeats)]
                rates = [r for r, _ in runs]
                acceptance = statistics.median(a for _, a in runs)
                print(
                    f"{dim:>3} {n:>5} {str(lj):>5} {statistics.median(rates):>17,.0f} "
                    f"{min(rates):>9,.0f} {max(rates):>9,.0f} {acceptance:>7.2f}"
                )


if __name__ == "__main__":
    main()
