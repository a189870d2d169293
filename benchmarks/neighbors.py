"""Time to build the radius graph of a periodic cell: equimol against ASE's neighbour list.

Rattled fcc Cu supercells (1000 and 10000 atoms, periodic, cutoff 5 Å by default). Each row
gives the median wall time of several repeats of

- ``radius_graph``: the neighbour list alone (vesin), as NumPy arrays;
- ``atoms_to_graph``: the whole ``ase.Atoms -> Data`` conversion (checks, neighbour list,
  tensors);
- ``ase.neighborlist.neighbor_list("ijS")``: ASE's own implementation, for reference;

and the ratio of ASE's time to each, measured in the same run. One torch thread. On a busy
machine, ``--clock cpu`` times this process's CPU time instead of wall time.

    python benchmarks/neighbors.py [--repeats 5] [--cutoff 5.0] [--sizes 1000 10000] [--clock cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from functools import partial
from typing import Callable

import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list

from _timing import median_seconds
from equimol.data import atoms_to_graph, radius_graph

_SUPERCELLS = {1000: (5, 5, 10), 10000: (10, 10, 25)}  # repeats of the 4-atom cubic cell


def copper_cell(num_atoms: int, seed: int) -> Atoms:
    """A rattled fcc Cu supercell (a = 3.61 Å) of 1000, 10000 or 4 n^3 atoms."""
    shape = _SUPERCELLS.get(num_atoms)
    if shape is None:
        side = round((num_atoms / 4) ** (1 / 3))
        if 4 * side**3 != num_atoms:
            raise ValueError(f"no supercell of {num_atoms} atoms; use 1000, 10000 or 4 n^3")
        shape = (side, side, side)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(shape)
    atoms.rattle(0.05, seed=seed)
    return atoms


def median_time(function: Callable[[], object], repeats: int, clock: Callable[[], float]) -> float:
    """Median time in seconds of ``repeats`` calls on ``clock``, after one warm-up call."""
    return median_seconds(function, repeats, clock=clock)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or this process's CPU time (steadier on a busy machine; all three are "
        "single-threaded)",
    )
    args = parser.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(1)

    print(
        f"# radius graph of rattled fcc Cu, periodic, cutoff {args.cutoff} Å; "
        f"median {args.clock} time of {args.repeats} repeats"
    )
    print(
        f"# {platform.machine()}, torch threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    header = (
        f"| {'atoms':>6} | {'edges':>9} | {'radius_graph ms':>15} | {'atoms_to_graph ms':>17} "
        f"| {'ASE ms':>8} | {'ASE / radius_graph':>18} | {'ASE / atoms_to_graph':>20} |"
    )
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for num_atoms in args.sizes:
        atoms = copper_cell(num_atoms, args.seed)
        positions, cell, pbc = atoms.positions, atoms.cell[:], atoms.pbc
        edge_index, _ = radius_graph(positions, cell, pbc, args.cutoff)
        ase_edges = len(neighbor_list("i", atoms, args.cutoff))
        if ase_edges != edge_index.shape[1]:
            raise RuntimeError(f"edge counts differ: equimol {edge_index.shape[1]}, ASE {ase_edges}")
        t_radius = median_time(partial(radius_graph, positions, cell, pbc, args.cutoff), args.repeats, clock)
        t_graph = median_time(partial(atoms_to_graph, atoms, args.cutoff), args.repeats, clock)
        t_ase = median_time(partial(neighbor_list, "ijS", atoms, args.cutoff), args.repeats, clock)
        print(
            f"| {num_atoms:>6} | {edge_index.shape[1]:>9} | {1e3 * t_radius:>15.2f} | {1e3 * t_graph:>17.2f} "
            f"| {1e3 * t_ase:>8.1f} | {t_ase / t_radius:>18.1f} | {t_ase / t_graph:>20.1f} |"
        )


if __name__ == "__main__":
    main()
