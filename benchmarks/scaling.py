"""How EquivariantPotential scales with the number of atoms, and with threads.

fcc Cu cells (a = 3.61 Å, rattled by 0.05 Å, cutoff 5 Å, about 79 neighbours per atom) from
108 to about 20,000 atoms. For each size, in a fresh process (so that its peak memory is its
own): the median time of an energy+forces call through ``EquimolCalculator`` (neighbour
list included) and of a training step (energy and forces of one cell, a loss on both,
backward, Adam), as atoms per second, and the process's peak resident memory above what it
held before the first call. Then the same calls with 1 and 2 threads on a mid-sized cell.

    python benchmarks/scaling.py [--sizes 3 5 7 10 14 17] [--repeats 3] [--l_max 1 --channels 32 --layers 2]
        [--package] [--threads-cell 7] [--json out.json] [--figure docs/figures/scaling.png]

``--sizes`` are the cubic repeats n of the 4-atom cell (4 n^3 atoms). ``--package`` also
times an ahead-of-time compiled ``.pt2`` (compiled once without autotuning, a minute or two:
autotuning picks kernels for the small example it compiles with, not for large cells). Timings are
medians with one torch thread unless stated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _timing import median_seconds


def copper(n: int, seed: int = 0):
    import ase.build

    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat((n, n, n))
    atoms.rattle(0.05, seed=seed)
    return atoms


def build_model(args: argparse.Namespace, num_neighbours: float):
    import torch

    from equimol.models.equivariant import EquivariantPotential

    torch.manual_seed(0)
    return EquivariantPotential(
        ["Cu"], cutoff=5.0, l_max=args.l_max, channels=args.channels, num_layers=args.layers,
        radial_hidden=[64, 64], avg_num_neighbors=num_neighbours,
    )


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(args: argparse.Namespace) -> dict:
    """One size, one kind of call, in this process: the child's job."""
    import torch
    from torch_geometric.data import Batch

    from equimol.calculator import EquimolCalculator
    from equimol.data.graph import atoms_to_graph

    torch.set_num_threads(args.threads)
    atoms = copper(args.n)
    graph = atoms_to_graph(atoms, 5.0)
    num_edges = int(graph.edge_index.shape[1])
    model = build_model(args, num_edges / len(atoms))
    result = {"n": args.n, "atoms": len(atoms), "edges": num_edges, "kind": args.kind, "threads": args.threads}
    if args.kind == "train":
        batch = Batch.from_data_list([graph])
        energy = torch.tensor([-3.5 * len(atoms)])
        forces = 0.3 * torch.randn(len(atoms), 3, generator=torch.Generator().manual_seed(0))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.train()

        def call() -> None:
            optimizer.zero_grad(set_to_none=True)
            out = model(batch, compute_forces=True)
            loss = ((out["energy"] - energy) / len(atoms)).square().mean() + 100 * (out["forces"] - forces).square().mean()
            loss.backward()
            optimizer.step()
    else:
        source = args.package if args.kind == "package" else model.eval()
        calc = EquimolCalculator(source)
        frames = [atoms.copy() for _ in range(2)]
        frames[1].positions += 1e-4

        state = {"i": 0}

        def call() -> None:
            state["i"] += 1
            calc.calculate(frames[state["i"] % 2], ["energy", "forces"])

    del graph
    baseline = current_rss_mb()
    seconds = median_seconds(call, args.repeats)
    result.update(seconds=seconds, atoms_per_s=len(atoms) / seconds, peak_mb=peak_rss_mb() - baseline)
    return result


def run_child(args: argparse.Namespace, n: int, kind: str, threads: int, package: str | None) -> dict:
    command = [
        sys.executable, __file__, "--child", "--n", str(n), "--kind", kind, "--threads", str(threads),
        "--repeats", str(args.repeats), "--l_max", str(args.l_max), "--channels", str(args.channels),
        "--layers", str(args.layers),
    ]
    if package:
        command += ["--package-path", package]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"n": n, "kind": kind, "threads": threads, "error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def compile_package(args: argparse.Namespace, folder: str) -> tuple[str, float]:
    from equimol.data.graph import atoms_to_graph
    from equimol.models.aot import export_aot

    atoms = copper(3)
    graph = atoms_to_graph(atoms, 5.0)
    model = build_model(args, graph.edge_index.shape[1] / len(atoms))
    start = time.perf_counter()
    path = export_aot(model, Path(folder) / "cu.pt2", autotune=False)
    return str(path), time.perf_counter() - start


def figure(results: list[dict], path: str, title: str, command: str) -> None:
    """Atoms per second and peak memory against atoms; ``command`` is printed under it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (speed, memory) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in ("eager", "package", "train"):
        rows = [r for r in results if r.get("kind") == kind and r.get("threads") == 1 and "seconds" in r]
        if not rows:
            continue
        atoms = [r["atoms"] for r in rows]
        speed.plot(atoms, [r["atoms_per_s"] for r in rows], "o-", label=LABELS[kind])
        memory.plot(atoms, [r["peak_mb"] for r in rows], "o-", label=LABELS[kind])
    for axis, label in ((speed, "atoms per second (1 thread)"), (memory, "peak memory above baseline (MB)")):
        axis.set_xscale("log")
        axis.set_xlabel("atoms (fcc Cu, 5 Å cutoff)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    memory.set_yscale("log")
    fig.suptitle(title, fontsize=9)
    fig.text(0.01, 0.01, command, fontsize=7, family="monospace")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=120)


LABELS = {"eager": "energy+forces, eager", "package": "energy+forces, .pt2 package", "train": "training step, eager"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 5, 7, 10, 14, 17])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--l_max", type=int, default=1)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--package", action="store_true", help="also time an AOT-compiled .pt2 package")
    parser.add_argument("--no-train", action="store_true", help="skip the training steps")
    parser.add_argument("--threads-cell", type=int, default=7, help="n of the cell timed with 1 and 2 threads (0: none)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--figure", help="save the scaling figure here")
    parser.add_argument("--only-threads", action="store_true", help="only the 1- and 2-thread comparison")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--package-path", dest="package_path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.package = args.package_path
        print(json.dumps(measure(args)))
        return

    kinds = ["eager"] + (["package"] if args.package else []) + ([] if args.no_train else ["train"])
    folder = tempfile.TemporaryDirectory()
    package = None
    if args.package:
        package, seconds = compile_package(args, folder.name)
        print(f"(package compiled in {seconds:.0f} s)")
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else ["n/a"]
    size = f"l_max {args.l_max}, {args.channels} channels, {args.layers} layers, radial MLP 2x64"
    print(f"EquivariantPotential ({size}), float32, fcc Cu, cutoff 5 Å; load average {' '.join(load)}")
    results = []
    header = f"{'kind':28} {'threads':>7} {'atoms':>7} {'edges':>9} {'ms per call':>12} {'atoms/s':>9} {'peak MB':>8} {'MB/1000 atoms':>13}"
    print(header)
    print("-" * len(header))

    def show(row: dict) -> None:
        results.append(row)
        if "error" in row:
            print(f"{LABELS[row['kind']]:28} {row['threads']:7d} n={row['n']}: failed: {row['error']}")
            return
        print(f"{LABELS[row['kind']]:28} {row['threads']:7d} {row['atoms']:7d} {row['edges']:9d} {1e3 * row['seconds']:12.1f} "
              f"{row['atoms_per_s']:9.0f} {row['peak_mb']:8.0f} {1e3 * row['peak_mb'] / row['atoms']:13.1f}", flush=True)

    for kind in kinds:
        for n in [] if args.only_threads else args.sizes:
            show(run_child(args, n, kind, 1, package))
    print()
    print(f"threads (n = {args.threads_cell}):" if args.threads_cell > 0 else "")
    for kind in kinds if args.threads_cell > 0 else []:
        timed = {threads: run_child(args, args.threads_cell, kind, threads, package) for threads in (1, 2)}
        for row in timed.values():
            show(row)
        if all("seconds" in row for row in timed.values()):
            print(f"  {LABELS[kind]}: 2 threads {timed[1]['seconds'] / timed[2]['seconds']:.2f}x faster than 1")
    print(f"load average at the end {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.figure:
        command = " ".join(["python benchmarks/scaling.py", *sys.argv[1:]])
        figure(results, args.figure, f"EquivariantPotential ({size}), float32, 1 thread, median of {args.repeats}", command)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
