"""MD steps per second of one equimol model through the ASE calculator, TorchSim and LAMMPS.

Two systems, both periodic, cutoff 5 Å:

- ``Cu-108``: fcc copper, 3x3x3 cubic cells (a = 3.61 Å), rattled by 0.05 Å;
- ``ethanol-64``: 64 ethanol molecules (576 atoms) in a cubic box at the liquid's density
  (0.789 g/cm³, edge 18.4 Å), on a 4x4x4 grid with random orientations.

Each engine runs velocity-Verlet NVE (0.5 fs, velocities at 300 K) with the same backend
(an untrained ``EquivariantPotential``, l_max 1, 16 channels, 2 layers, its energies scaled
by 0.01 so that atoms stay apart; or a ``.pt2`` package with ``--package``): ASE's
``VelocityVerlet`` on ``EquimolCalculator``, TorchSim's ``nve`` on ``EquimolTorchSimModel``
(one system, and ``--copies`` copies in one batch: time per system and step) and LAMMPS's
``fix nve`` with ``EquimolLammps``. "model only" is the backend's call on a graph built
once: the floor under every engine. The "(no model)" rows run each engine with a backend
that returns zeros at once: what the engine itself costs per step (neighbour list, graph,
integrator, coupling). Each row is the median over ``--repeats`` blocks of ``--steps`` steps
after one warm-up block, each block from the same first configuration and velocities, the
engines taking turns block by block; one torch thread, one OpenMP thread.

    python benchmarks/md_engines.py [--steps 10] [--repeats 3] [--dtype float32] [--copies 4]
                                    [--package model.pt2] [--clock wall|cpu] [--no-overhead]

On a busy machine ``--clock cpu`` times this process's CPU time instead of wall time.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import bulk, molecule  # noqa: E402
from ase.md.verlet import VelocityVerlet  # noqa: E402
from scipy.spatial.transform import Rotation  # noqa: E402

from equimol.data.graph import atoms_to_graph  # noqa: E402
from equimol.engines import EquimolCalculator, InferenceBackend, load_backend  # noqa: E402
from equimol.models.equivariant import EquivariantPotential  # noqa: E402

CUTOFF = 5.0
SPECIES = ["H", "C", "O", "Cu"]
TIMESTEP_FS = 0.5
TEMPERATURE_K = 300.0


def copper_108(seed: int) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    atoms.rattle(0.05, seed=seed)
    return atoms


def ethanol_64(seed: int, density: float = 0.789) -> Atoms:
    """64 ethanol molecules at ``density`` g/cm³ in a periodic cube, on a 4x4x4 grid with random
    orientations (each redrawn until no atom is within 1.6 Å of another molecule's)."""
    rng = np.random.default_rng(seed)
    template = molecule("CH3CH2OH")
    template.positions -= template.get_center_of_mass()
    mass_g = 64 * template.get_masses().sum() / units.mol
    edge = (mass_g / density * 1e24) ** (1.0 / 3.0)  # Å
    spacing = edge / 4
    placed: list[np.ndarray] = []
    for index in np.ndindex(4, 4, 4):
        centre = (np.array(index) + 0.5) * spacing
        others = np.concatenate(placed) if placed else np.zeros((0, 3))
        for _ in range(1000):
            trial = Rotation.random(random_state=rng).apply(template.positions) + centre
            gaps = trial[:, None, :] - others[None, :, :]
            gaps -= edge * np.round(gaps / edge)  # minimum image in the cube
            if len(others) == 0 or np.linalg.norm(gaps, axis=2).min() > 1.6:
                break
        else:
            raise RuntimeError("could not place an ethanol molecule; lower the density")
        placed.append(trial)
    symbols = list(template.get_chemical_symbols()) * 64
    return Atoms(symbols, positions=np.concatenate(placed), cell=np.eye(3) * edge, pbc=True)


class NoModel(InferenceBackend):
    """A backend that returns zero energies and forces at once: an engine's step with it
    costs what the engine adds to the model (graph, integrator, coupling)."""

    def __init__(self, like: InferenceBackend) -> None:
        super().__init__(like.cutoff, like.atomic_numbers, like.dtype, like.device, "NoModel")

    def compute(self, graph, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        count = int(graph.num_graphs) if getattr(graph, "batch", None) is not None else 1
        out = {"energy": graph.pos.new_zeros(count), "forces": torch.zeros_like(graph.pos)}
        if compute_stress:
            out["stress"] = graph.pos.new_zeros(count, 3, 3)
        return out


# Each engine gives (reset, block): ``reset`` puts the system back at its first step (not
# timed), ``block`` runs ``steps`` MD steps (timed). Every block thus starts from the same
# configuration, and no block wanders off into configurations an untrained model (or no
# model at all) cannot hold together.
Block = tuple[Callable[[], None], Callable[[], None]]


def ase_block(backend: InferenceBackend, atoms: Atoms, steps: int) -> Block:
    atoms = atoms.copy()
    masses = atoms.get_masses()[:, None]
    momenta = np.random.default_rng(0).normal(size=(len(atoms), 3)) * np.sqrt(masses * units.kB * TEMPERATURE_K)
    momenta -= momenta.mean(axis=0)
    positions = atoms.positions.copy()
    atoms.calc = EquimolCalculator(backend)
    dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)

    def reset() -> None:
        atoms.set_positions(positions)
        atoms.set_momenta(momenta)
        atoms.get_forces()  # as at the end of a step: the block's first step reuses them

    return reset, lambda: dynamics.run(steps)


def torchsim_block(backend: InferenceBackend, atoms: Atoms, steps: int, copies: int) -> Block:
    import torch_sim as ts

    from equimol.engines.torchsim import EquimolTorchSimModel

    model = EquimolTorchSimModel(backend, compute_stress=False)
    metal = ts.units.MetalUnits
    init, update = ts.nve(
        model,
        dt=torch.tensor(TIMESTEP_FS * 1e-3 * metal.time, dtype=model.dtype),
        kT=torch.tensor(TEMPERATURE_K * metal.temperature, dtype=model.dtype),
        seed=0,
    )
    first = init(ts.io.atoms_to_state([atoms] * copies, model.device, model.dtype))
    state = [first]

    def reset() -> None:
        state[0] = first.clone()  # the integrator changes its state in place

    def block() -> None:
        for _ in range(steps):
            state[0] = update(state[0])

    return reset, block


def lammps_block(backend: InferenceBackend, atoms: Atoms, steps: int) -> Block:
    from equimol.engines.lammps import EquimolLammps, create_lammps

    lmp, elements = create_lammps(atoms)
    coupling = EquimolLammps(lmp, backend, elements, virial=False)
    coupling.command(
        f"velocity all create {TEMPERATURE_K} 42 dist gaussian mom yes rot no\n"
        f"fix nve all nve\ntimestep {TIMESTEP_FS * 1e-3}\nthermo 0"
    )
    coupling.run(0)
    positions, velocities = lmp.gather_atoms("x", 1, 3), lmp.gather_atoms("v", 1, 3)

    def reset() -> None:
        lmp.scatter_atoms("x", 1, 3, positions)
        lmp.scatter_atoms("v", 1, 3, velocities)

    return reset, lambda: coupling.run(steps, "pre no post no")


def model_block(backend: InferenceBackend, atoms: Atoms, steps: int) -> Block:
    graph = atoms_to_graph(atoms, backend.cutoff, dtype=backend.dtype).to(backend.device)

    def block() -> None:
        for _ in range(steps):
            backend.compute(graph)

    return (lambda: None), block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="MD steps per timed block")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks (the median is shown)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--copies", type=int, default=4, help="systems in TorchSim's batched row (0: no such row)")
    parser.add_argument("--package", help="a .pt2 package (species H, C, O, Cu; cutoff 5 Å) instead of the eager model")
    parser.add_argument("--systems", nargs="+", default=["Cu-108", "ethanol-64"], choices=["Cu-108", "ethanol-64"])
    parser.add_argument("--engines", nargs="+", default=["model", "ase", "torchsim", "lammps"],
                        choices=["model", "ase", "torchsim", "lammps"])
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True,
                        help="also time each engine with a backend that returns zeros (what the engine adds)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    if args.package:
        backend = load_backend(args.package)
        model_name = args.package
    else:
        # untrained: its energies scaled down, so that a network that has not learnt any
        # repulsion yet does not pull atoms together within the timed steps (the cost of a
        # step does not depend on the weights)
        model = EquivariantPotential(SPECIES, cutoff=CUTOFF, l_max=1, channels=16, num_layers=2, energy_scale=0.01)
        backend = load_backend(model, dtype=dtype, compile=False)
        model_name = "EquivariantPotential(l_max=1, channels=16, num_layers=2), untrained, eager"
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    systems = {"Cu-108": copper_108, "ethanol-64": ethanol_64}

    print("python " + " ".join(sys.argv))
    print(f"{model_name}; {backend.dtype}, cutoff {CUTOFF} Å, NVE {TIMESTEP_FS} fs, "
          f"median of {args.repeats} blocks of {args.steps} steps, 1 torch thread, {args.clock} clock; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    header = f"| {'system':10} | {'atoms':>5} | {'edges':>6} | {'engine':37} | {'ms/step':>8} | {'steps/s':>8} | {'vs ASE':>6} |"
    print(header)
    print("|" + "|".join("-" * (len(cell)) for cell in header.split("|")[1:-1]) + "|")
    for name in args.systems:
        atoms = systems[name](args.seed)
        edges = atoms_to_graph(atoms, CUTOFF).edge_index.shape[1]
        runs = [("", backend)] + ([(" (no model)", NoModel(backend))] if args.overhead else [])
        for label, used in runs:
            rows = engine_rows(used, atoms, args, clock)
            ase = next((seconds for engine, seconds, _ in rows if engine.startswith("ASE")), None)
            for engine, seconds, copies in rows:
                per_step = seconds / args.steps / copies  # per system and step
                ratio = f"{(ase / args.steps) / per_step:6.2f}" if ase else "     -"
                print(f"| {name:10} | {len(atoms):5d} | {edges:6d} | {engine + label:37} | {1e3 * per_step:8.2f} | "
                      f"{1.0 / per_step:8.1f} | {ratio} |")


def engine_rows(backend: InferenceBackend, atoms: Atoms, args: argparse.Namespace,
                clock: Callable[[], float]) -> list[tuple[str, float, int]]:
    """(engine, median seconds of a block, systems per step) for each engine asked for.

    The engines take turns, block by block, so that a busy spell of the machine slows all of
    them alike instead of whichever engine ran then."""
    blocks: list[tuple[str, Block, int]] = []
    for engine in args.engines:
        if engine == "model" and not isinstance(backend, NoModel):
            blocks.append(("model only", model_block(backend, atoms, args.steps), 1))
        elif engine == "ase":
            blocks.append(("ASE VelocityVerlet", ase_block(backend, atoms, args.steps), 1))
        elif engine == "torchsim":
            blocks.append(("TorchSim nve", torchsim_block(backend, atoms, args.steps, 1), 1))
            if args.copies > 1:
                blocks.append((f"TorchSim nve, {args.copies} in a batch",
                               torchsim_block(backend, atoms, args.steps, args.copies), args.copies))
        elif engine == "lammps":
            blocks.append(("LAMMPS fix nve", lammps_block(backend, atoms, args.steps), 1))
    for _, (reset, block), _ in blocks:  # warm-up
        reset()
        block()
    times: list[list[float]] = [[] for _ in blocks]
    for _ in range(args.repeats):
        for (_, (reset, block), _), spent in zip(blocks, times):
            reset()
            start = clock()
            block()
            spent.append(clock() - start)
    return [(name, statistics.median(spent), copies) for (name, _, copies), spent in zip(blocks, times)]

if __name__ == "__main__":
    main()
