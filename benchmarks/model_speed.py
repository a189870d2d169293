"""Speed of EquivariantPotential: forward and forward + forces on fcc Cu supercells.

Prints, for a 64-atom and a 1000-atom rattled fcc Cu cell (cutoff 5 Å, about 42 neighbours
per atom), the median time of an energy-only forward pass and of a forward pass with forces
(autograd, inference mode), and the atoms per second, for a small and a medium model, on the
CPU with one thread and on CUDA when available.

    python benchmarks/model_speed.py [--repeats 5] [--sizes 64 1000]
"""

from __future__ import annotations

import argparse

import ase.build
import torch

from _timing import median_seconds
from equimol.data.graph import atoms_to_graph
from equimol.models.equivariant import EquivariantPotential

MODELS = {
    "small (l_max 1, 16 ch, 2 layers)": dict(l_max=1, channels=16, num_layers=2),
    "medium (l_max 2, 32 ch, 3 layers)": dict(l_max=2, channels=32, num_layers=3),
}
CUTOFF = 5.0
# primitive fcc cells: n^3 atoms
SUPERCELL = {64: 4, 1000: 10}


def copper(num_atoms: int, seed: int = 0) -> ase.Atoms:
    if num_atoms not in SUPERCELL:
        raise ValueError(f"--sizes must be among {sorted(SUPERCELL)}, got {num_atoms}")
    n = SUPERCELL[num_atoms]
    atoms = ase.build.bulk("Cu", "fcc", a=3.61).repeat((n, n, n))
    atoms.rattle(0.05, seed=seed)
    return atoms


def median_time(function, device: torch.device, repeats: int) -> float:
    synchronize = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    return median_seconds(function, repeats, synchronize=synchronize)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))

    print(f"torch {torch.__version__}, float32, cutoff {CUTOFF} Å, median of {args.repeats}, 1 CPU thread")
    header = (
        f"{'device':6} {'model':34} {'atoms':>5} {'edges':>6} "
        f"{'forward ms':>11} {'+forces ms':>11} {'atoms/s (forces)':>17}"
    )
    print(header)
    print("-" * len(header))
    for device in devices:
        for name, options in MODELS.items():
            torch.manual_seed(args.seed)
            for num_atoms in args.sizes:
                graph = atoms_to_graph(copper(num_atoms, args.seed), CUTOFF).to(device)
                neighbours = graph.edge_index.shape[1] / num_atoms
                model = EquivariantPotential(["Cu"], cutoff=CUTOFF, avg_num_neighbors=neighbours, **options)
                model = model.to(device).eval()

                def energy_only() -> None:
                    with torch.no_grad():
                        model(graph, compute_forces=False)

                def with_forces() -> None:
                    model(graph, compute_forces=True)

                forward = median_time(energy_only, device, args.repeats)
                backward = median_time(with_forces, device, args.repeats)
                print(
                    f"{device.type:6} {name:34} {num_atoms:5d} {graph.edge_index.shape[1]:6d} "
                    f"{1e3 * forward:11.1f} {1e3 * backward:11.1f} {num_atoms / backward:17.0f}"
                )


if __name__ == "__main__":
    main()
