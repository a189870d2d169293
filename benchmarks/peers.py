"""equimol beside NequIP and MACE: speed, floating-point work and the ratio table.

The peer harness (a folder with ``bench_infer.py``, ``infer.sh``, ``make_data.py``; pass it as
``--harness DIR`` or ``$PEER_HARNESS``) trains and times NequIP and MACE on the same data; its
outputs live under ``$PEERBENCH`` (default ``./.peerbench``). This script puts equimol through
the same steps:

``speed``
    In one process, with one thread: the 108-atom fcc Cu cell (or the ethanol molecule) of
    the harness through the ASE calculator (neighbour list included), e3nn tensor products against the fused ones,
    eager, ``torch.compile``-d and as an ahead-of-time compiled ``.pt2`` package, as medians
    of CPU time and of wall time, with the load average; and the matrix-product work of one energy+forces call and of one training step
    (``torch.utils.flop_counter``) against a 100 GFLOP/s single-core floor. Needs no data.
    ``--size`` takes one of the network sizes of ``SIZES`` instead of the matched one.
``train``
    ``equimol fit`` with ``configs/peers/{cu,etoh}.yaml`` (the harness's matched settings)
    on ``$PEERBENCH/data/{system}_train.xyz`` for a wall-clock budget.
``infer``
    The harness's ``bench_infer.py`` on a trained model (``--peer py:peers:calculator``):
    accuracy on ``{system}_val.xyz`` and the median time of 30 energy+forces calls.
``sitting``
    The harness's ``infer.sh`` for NequIP (and MACE if asked) and for equimol, in turn,
    several times: accuracy on ``{system}_val.xyz`` and inference speed of the same sitting.
``sizes``
    At the network sizes people train (``SIZES``: l <= 1, 2 layers, 32 channels, the matched
    size; l <= 2 and l <= 3, 3 layers, 32 channels; l <= 2, 4 layers, 64 channels): equimol's
    ``.pt2`` package (compile time recorded) and eager model of a freshly initialised network,
    and NequIP's AOTInductor-compiled model of the same size
    (``$PEERBENCH/sizes/<size>.nequip.pt2``), each timed by the harness's ``bench_infer.py`` in
    turn; a Markdown table, also written to ``$PEERBENCH/results/sizes.md``.
``table``
    The ratio table: equimol's results against the peers' results of the same sitting
    when ``$PEERBENCH/results`` holds them, otherwise against the harness's published table;
    training throughput from the per-epoch times of both runs.

    python benchmarks/peers.py speed [--system cu|etoh] [--repeats 20] [--no-compile] [--size l1|l2|l3|l2w64]
    python benchmarks/peers.py train --system cu --budget 600
    python benchmarks/peers.py infer --system cu --model runs/peers_cu/checkpoints/best.ckpt
    python benchmarks/peers.py sitting --system cu --model runs/peers_cu/checkpoints/best-epoch=038.ckpt
    equimol compile runs/peers_etoh/checkpoints/best-epoch=NNN.ckpt runs/peers_etoh/model.pt2
    python benchmarks/peers.py sitting --system etoh --model runs/peers_etoh/model.pt2
    python benchmarks/peers.py table --system cu
    python benchmarks/peers.py sizes --sizes l1 l2 l3 l2w64 --reps 3 [--autotune] [--harness DIR]

``state_calculator(path)`` is the eager one of ``sizes`` (a model saved as its arguments and
weights). ``calculator(model_path)`` is the factory ``bench_infer.py --peer py:peers:calculator`` calls
(with ``benchmarks/`` on ``PYTHONPATH``), for a checkpoint or a ``.pt2`` package of ``equimol
compile``; ``$EQUIMOL_TENSOR_PRODUCT`` (``fused``, the default
here, or ``e3nn``) and ``$EQUIMOL_COMPILE`` (``1`` to ``torch.compile`` the network) choose the
path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import ase.build
import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[1]
FLOOR_FLOPS = 100e9  # float32 matrix product, one core, as measured by the harness
MATCHED = dict(cutoff=5.0, l_max=1, parity=True, channels=32, num_layers=2, num_radial_basis=8)
# the network sizes people train, on the same cell (``speed --size``, ``sizes``); l1 is MATCHED,
# whose radial MLP has one hidden layer of 64 (the others two). NequIP's counterparts
# (NequIPGNNModel): the same l_max, layers and features (num_features), a radial MLP of 2 x 64
# (radial_mlp_depth 2, radial_mlp_width 64) at every size, 8 Bessel functions.
SIZES = {
    "l1": MATCHED,
    "l2": dict(cutoff=5.0, l_max=2, parity=True, channels=32, num_layers=3, num_radial_basis=8,
               radial_hidden=[64, 64], self_connection=True),
    "l3": dict(cutoff=5.0, l_max=3, parity=True, channels=32, num_layers=3, num_radial_basis=8,
               radial_hidden=[64, 64]),
    "l2w64": dict(cutoff=5.0, l_max=2, parity=True, channels=64, num_layers=4, num_radial_basis=8,
                  radial_hidden=[64, 64]),
}


def describe(size: dict) -> str:
    """``2 layers, 32 channels, l <= 1, radial MLP 64`` for a dict of model arguments."""
    hidden = size.get("radial_hidden", 64)
    widths = "x".join(str(w) for w in ([hidden] if isinstance(hidden, int) else hidden))
    text = (f"{size['num_layers']} layers, {size['channels']} channels, l <= {size['l_max']}, "
            f"radial MLP {widths}, {size['num_radial_basis']} Bessel functions")
    return text + (", self-connection" if size.get("self_connection") else "")

# The harness's published table (1 thread, one sitting): ms per energy+forces call and
# training seconds per epoch of 100 steps at batch 5; accuracy after 600 s of training.
# NequIP AOTI: NequIP 0.19.1 compiled with AOTInductor; MACE l<=1: MACE 0.3.16, edge l <= 1.
PUBLISHED = {
    "cu": {
        "NequIP AOTI": dict(ms=17.5, epoch_s=36.4, e_mae=0.75, f_mae=3.2, atoms=108),
        "NequIP eager": dict(ms=27.4, epoch_s=None, e_mae=0.75, f_mae=3.2, atoms=108),
        "MACE l<=1": dict(ms=59.9, epoch_s=65.8, e_mae=2.74, f_mae=4.4, atoms=108),
    },
    "etoh": {
        "NequIP AOTI": dict(ms=0.86, epoch_s=2.06, e_mae=1.40, f_mae=25.2, atoms=9),
        "NequIP eager": dict(ms=4.35, epoch_s=None, e_mae=1.40, f_mae=25.2, atoms=9),
        "MACE l<=1": dict(ms=10.5, epoch_s=3.34, e_mae=3.74, f_mae=19.5, atoms=9),
    },
}
TARGETS = {"inference": 1.75, "training": 1.8}


# --------------------------------------------------------------------------- calculator


def use_tensor_product(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Switch every :class:`~equimol.nn.TensorProductConv` in ``model`` to ``name`` (same weights)."""
    from equimol.nn import TensorProductConv

    for module in model.modules():
        if isinstance(module, TensorProductConv):
            module.set_tensor_product(name)
    return model


def calculator(model_path: str):
    """ASE calculator for the harness: ``bench_infer.py --peer py:peers:calculator``.

    Loads a checkpoint of ``equimol fit`` (or a ``.pt2`` package), switches its convolutions to
    ``$EQUIMOL_TENSOR_PRODUCT`` (default ``fused``) and compiles it with ``$EQUIMOL_COMPILE=1``
    (energies and forces as one compiled graph; the first call then takes about a minute),
    runs it eagerly with ``$EQUIMOL_COMPILE=0``, and otherwise keeps the setting it was
    trained with (``compile: true`` in ``configs/peers``).
    """
    from equimol.calculator import EquimolCalculator
    from equimol.models.equivariant import EquivariantPotential

    flag = os.environ.get("EQUIMOL_COMPILE")
    calc = EquimolCalculator(model_path, compile=None if flag is None else flag == "1")
    model = getattr(calc.backend, "model", None)  # packages are compiled as they are
    if isinstance(model, EquivariantPotential):
        use_tensor_product(model, os.environ.get("EQUIMOL_TENSOR_PRODUCT", "fused"))
        if model.traced is not None:
            model.set_compile(True)  # trace again after the switch
    return calc


def state_calculator(model_path: str):
    """ASE calculator, eager, of a model that ``sizes`` saved as its arguments and weights
    (``<size>.equimol.pt``): ``bench_infer.py --peer py:peers:state_calculator``. The
    convolutions use ``$EQUIMOL_TENSOR_PRODUCT`` (default ``fused``)."""
    from equimol.calculator import EquimolCalculator
    from equimol.models.equivariant import EquivariantPotential

    saved = torch.load(model_path, map_location="cpu", weights_only=True)
    model = EquivariantPotential(saved["species"], **saved["arguments"])
    model.load_state_dict(saved["state_dict"])
    use_tensor_product(model, os.environ.get("EQUIMOL_TENSOR_PRODUCT", "fused"))
    return EquimolCalculator(model.eval(), compile=False)


# --------------------------------------------------------------------------- speed


def copper_108(seed: int = 0) -> ase.Atoms:
    """The harness's cell: fcc Cu 3x3x3 cubic (108 atoms, a = 3.61 Å), rattled by 0.05 Å."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=seed)
    return atoms


def ethanol() -> ase.Atoms:
    """The harness's molecule: ethanol (9 atoms), not periodic."""
    atoms = ase.build.molecule("CH3CH2OH")
    atoms.center(vacuum=5.0)
    atoms.pbc = False
    return atoms


SYSTEMS = {"cu": (copper_108, ["Cu"]), "etoh": (lambda seed=0: ethanol(), ["H", "C", "O"])}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def interleaved_medians(functions: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """``{name: (median CPU-time s, median wall s)}``, the functions called in turn ``repeats`` times.

    CPU time of the calling thread is the steadier number on a shared machine; wall time is
    what a user waits. Taking the calls in turn makes the ratios fair under changing load.
    """
    cpu: dict[str, list[float]] = {name: [] for name in functions}
    wall: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            c, w = time.thread_time(), time.perf_counter()
            function()
            cpu[name].append(time.thread_time() - c)
            wall[name].append(time.perf_counter() - w)
    return {name: (statistics.median(cpu[name]), statistics.median(wall[name])) for name in functions}


def matmul_flops(function: Callable[[], None]) -> int:
    """Floating-point operations of the matrix products (mm, bmm, addmm...) in ``function``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        function()
    return int(counter.get_total_flops())


def training_step(model: torch.nn.Module, batch, seed: int = 0) -> Callable[[], None]:
    """One optimisation step of the harness's recipe on ``batch`` (random labels of the right scale)."""
    generator = torch.Generator().manual_seed(seed)
    energy_label = torch.randn(int(batch.num_graphs), generator=generator)
    force_label = 0.3 * torch.randn(batch.pos.shape, generator=generator)
    atoms = torch.bincount(batch.batch).to(energy_label.dtype)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, amsgrad=True)
    model.train()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = model(batch, compute_forces=True)
        loss = ((out["energy"] - energy_label) / atoms).square().mean()
        loss = loss + 100.0 * (out["forces"] - force_label).square().mean()
        loss.backward()
        optimizer.step()

    return step


def training_step_flops(model: torch.nn.Module, batch) -> int:
    """Matrix-product FLOPs of one training step: energy, forces, force loss, backward."""
    model.train()

    def step() -> None:
        out = model(batch, compute_forces=True)
        loss = out["energy"].square().sum() + 100.0 * out["forces"].square().mean()
        loss.backward()

    flops = matmul_flops(step)
    model.zero_grad(set_to_none=True)
    model.eval()
    return flops


def rattled(build: Callable[..., ase.Atoms], seed: int) -> ase.Atoms:
    atoms = build(seed)
    atoms.rattle(0.05, seed=seed + 100)
    return atoms


# the paths the speed table compares: (name, tensor product, compiled)
PATHS = (("e3nn, eager", "e3nn", False), ("fused, eager", "fused", False), ("fused, compiled", "fused", True))


def path_models(species: list[str], reference: torch.nn.Module, no_compile: bool, size: dict = MATCHED):
    """``(name, model, compiled)`` for each of ``PATHS``, every model with ``reference``'s weights
    (``size``: the model's arguments, those of ``reference``)."""
    from equimol.models.equivariant import EquivariantPotential

    for name, tensor_product, compiled in PATHS:
        if compiled and no_compile:
            continue
        model = EquivariantPotential(species, tensor_product=tensor_product, compile=compiled, **size)
        model.load_state_dict(reference.state_dict())
        yield name, model, compiled


def speed(args: argparse.Namespace) -> None:
    from torch_geometric.data import Batch

    from equimol.calculator import EquimolCalculator
    from equimol.data.graph import atoms_to_graph
    from equimol.models.equivariant import EquivariantPotential

    torch.set_num_threads(1)
    size = SIZES[args.size] if args.size else MATCHED
    build, species = SYSTEMS[args.system]
    atoms = build(args.seed)
    graph = atoms_to_graph(atoms, size["cutoff"])
    num_edges = graph.edge_index.shape[1]
    torch.manual_seed(args.seed)
    reference = EquivariantPotential(species, avg_num_neighbors=num_edges / len(atoms), **size).eval()
    variants = {
        name: EquimolCalculator(model.eval(), compile=compiled)
        for name, model, compiled in path_models(species, reference, args.no_compile, size)
    }
    # the fused model alone, with the reference weights: for the package and the FLOP count
    fused = EquivariantPotential(species, tensor_product="fused", **size)
    fused.load_state_dict(reference.state_dict())
    fused.eval()
    package_folder = tempfile.TemporaryDirectory()  # kept until the end of the table
    if not args.no_compile:
        from equimol.models.aot import export_aot

        start = time.perf_counter()
        path = export_aot(fused, Path(package_folder.name) / "model.pt2")
        print(f"(AOT package compiled in {time.perf_counter() - start:.0f} s)")
        variants["fused, AOT package"] = EquimolCalculator(path)

    rng = np.random.default_rng(args.seed)
    frames = [atoms.copy() for _ in range(4)]
    for frame in frames[1:]:
        frame.positions += rng.normal(0.0, 1e-4, frame.positions.shape)

    def call(calc: EquimolCalculator) -> Callable[[], None]:
        state = {"i": 0}

        def run() -> None:
            frame = frames[state["i"] % len(frames)]
            state["i"] += 1
            calc.calculate(frame, ["energy", "forces"])

        return run

    energies = {}
    for name, calc in variants.items():
        start = time.perf_counter()
        calc.calculate(atoms, ["energy", "forces"])
        energies[name] = (calc.results["energy"], calc.results["forces"], time.perf_counter() - start)
    load_before = loadavg()
    times = interleaved_medians({name: call(calc) for name, calc in variants.items()}, args.repeats)
    load_after = loadavg()

    print(f"torch {torch.__version__}, 1 thread, float32, {args.system} {len(atoms)} atoms, {num_edges} edges "
          f"({num_edges / len(atoms):.1f} per atom), r_max {size['cutoff']} Å, "
          f"{'size ' + args.size if args.size else 'matched size'}: {describe(size)}, "
          f"{sum(p.numel() for p in reference.parameters()):,} parameters")
    print(f"ASE calculator energy+forces (neighbour list included), median of {args.repeats}, "
          f"load average {load_before} -> {load_after}")
    header = f"{'path':24} {'CPU ms':>8} {'wall ms':>8} {'atoms/s (CPU)':>14} {'x e3nn':>7} {'first call s':>13} {'max |dF| eV/Å':>14}"
    print(header)
    print("-" * len(header))
    base_cpu = times["e3nn, eager"][0]
    base_forces = energies["e3nn, eager"][1]
    for name, (cpu, wall) in times.items():
        d_forces = float(np.abs(energies[name][1] - base_forces).max())
        print(f"{name:24} {1e3 * cpu:8.1f} {1e3 * wall:8.1f} {len(atoms) / cpu:14.0f} {base_cpu / cpu:7.2f} "
              f"{energies[name][2]:13.1f} {d_forces:14.1e}")

    batch = Batch.from_data_list([atoms_to_graph(rattled(build, s), size["cutoff"]) for s in range(5)])
    steps = {}
    for name, model, compiled in path_models(species, reference, args.no_compile, size):
        steps[name] = training_step(model, batch)
        if compiled:
            start = time.perf_counter()
            steps[name]()
            print(f"(training graph traced and compiled in {time.perf_counter() - start:.0f} s)")
    load_before = loadavg()
    step_times = interleaved_medians(steps, max(3, args.repeats // 2))
    print()
    print(f"training step (batch of 5 x {len(atoms)} atoms, loss 1 x E/atom MSE + 100 x F MSE, backward, Adam amsgrad), "
          f"median of {max(3, args.repeats // 2)}, load average {load_before} -> {loadavg()}")
    header = f"{'path':24} {'CPU ms':>8} {'wall ms':>8} {'s per 100 steps (CPU)':>22} {'x e3nn':>7}"
    print(header)
    print("-" * len(header))
    for name, (cpu, wall) in step_times.items():
        print(f"{name:24} {1e3 * cpu:8.1f} {1e3 * wall:8.1f} {100 * cpu:22.1f} {step_times['e3nn, eager'][0] / cpu:7.2f}")

    inference = matmul_flops(lambda: fused(graph, compute_forces=True))
    training = training_step_flops(fused, batch)
    best = min(cpu for cpu, _ in times.values())
    print()
    print("matrix-product work (torch.utils.flop_counter; elementwise work not counted):")
    print(f"  energy+forces, {len(atoms)} atoms: {inference / 1e6:7.1f} MFLOP -> {1e3 * inference / FLOOR_FLOPS:5.2f} ms at "
          f"100 GFLOP/s; fastest path above {1e3 * best:.1f} ms = {best * FLOOR_FLOPS / inference:.1f}x the floor")
    print(f"  training step, batch of 5: {training / 1e6:7.1f} MFLOP -> {1e3 * training / FLOOR_FLOPS:5.2f} ms at "
          f"100 GFLOP/s; an epoch of 100 steps >= {100 * training / FLOOR_FLOPS:.2f} s")
    if size is not MATCHED:  # the published numbers are of the matched size only
        print()
        print("NequIP at this size: python benchmarks/peers.py sizes --sizes " + args.size)
        return
    nequip = PUBLISHED[args.system]["NequIP AOTI"]["ms"]
    epoch = PUBLISHED[args.system]["NequIP AOTI"]["epoch_s"]
    fastest_step = min(cpu for cpu, _ in step_times.values())
    print()
    print("against the harness's published NequIP numbers (not this sitting; peer time / equimol time):")
    print(f"  inference: {nequip} ms per call / {1e3 * best:.1f} ms = {nequip / (1e3 * best):.2f}x "
          f"(target {TARGETS['inference']}x)")
    print(f"  training: {epoch} s per epoch / {100 * fastest_step:.1f} s per 100 steps = {epoch / (100 * fastest_step):.2f}x "
          f"(target {TARGETS['training']}x)")


# --------------------------------------------------------------------------- harness


def peerbench() -> Path:
    return Path(os.environ.get("PEERBENCH", Path.cwd() / ".peerbench")).resolve()


def harness_dir(args: argparse.Namespace) -> Path:
    folder = args.harness or os.environ.get("PEER_HARNESS")
    if not folder or not (Path(folder) / "bench_infer.py").is_file():
        raise SystemExit("give the peer harness folder (with bench_infer.py) as --harness DIR or $PEER_HARNESS")
    return Path(folder).resolve()


def train(args: argparse.Namespace) -> None:
    data = peerbench() / "data"
    train_file = Path(args.train_file or data / f"{args.system}_train.xyz")
    if not train_file.is_file():
        raise SystemExit(f"{train_file}: no training data; run the harness's make_data.py --out {data}")
    val_file = Path(args.val_file or data / f"{args.system}_val.xyz")
    if not val_file.is_file():
        raise SystemExit(f"{val_file}: no validation data; run the harness's make_data.py --out {data}")
    root = Path(args.root or f"runs/peers_{args.system}")
    budget = int(args.budget)
    command = [
        sys.executable, "-m", "equimol.cli", "fit",
        "--config", str(REPOSITORY / "configs" / "peers" / f"{args.system}.yaml"),
        "--data.init_args.path", str(train_file),
        "--data.init_args.val_path", str(val_file),
        "--trainer.default_root_dir", str(root),
        "--trainer.max_time", f"00:00:{budget // 60:02d}:{budget % 60:02d}",
    ]
    if args.max_epochs is not None:
        command += ["--trainer.max_epochs", str(args.max_epochs)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    print(f"training took {time.perf_counter() - start:.0f} s; checkpoints in {root / 'checkpoints'}")


def infer(args: argparse.Namespace) -> None:
    harness = harness_dir(args)
    results = peerbench() / "results" / ("" if args.system == "cu" else args.system)
    results.mkdir(parents=True, exist_ok=True)
    tag = os.environ.get("EQUIMOL_TENSOR_PRODUCT", "fused") + ("_compiled" if os.environ.get("EQUIMOL_COMPILE") == "1" else "")
    out = results / f"infer_equimol_{tag}_t1.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPOSITORY / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    command = [
        sys.executable, str(harness / "bench_infer.py"), "--peer", "py:peers:calculator", "--model", str(args.model),
        "--data", str(peerbench() / "data" / f"{args.system}_val.xyz"), "--out", str(out),
        "--reps", str(args.reps or (30 if args.system == "cu" else 200)),
    ]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, env=env)
    print(json.dumps(json.loads(out.read_text()), indent=1)[:2000])


def sitting(args: argparse.Namespace) -> None:
    """The harness's ``infer.sh`` for NequIP and for equimol, in turn, ``--reps`` times.

    Interleaving the calls makes the ratio fair under changing load. (The harness's
    ``infer_reps.sh`` cannot take a ``py:MODULE:FUNC`` model, because it splits its
    arguments at the first colon.) Results go to the harness's results folder, where
    ``table`` finds them.
    """
    harness = harness_dir(args)
    env = dict(os.environ, PEERBENCH=str(peerbench()), SYSTEM=args.system, PEER_PY=sys.executable,
               PEER_MODEL=str(Path(args.model).resolve()),
               PYTHONPATH=os.pathsep.join([str(REPOSITORY / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    for repetition in range(1, args.reps + 1):
        for peer in [*args.peers, "py:peers:calculator"]:
            print(f"{args.system} r{repetition}: {peer} (load average {loadavg()})", flush=True)
            subprocess.run(["bash", str(harness / "infer.sh"), peer, f"r{repetition}"], check=True, env=env)
    table(args)


def _median_inference(results: Path, pattern: str) -> dict | None:
    """Medians over the repetitions ``infer_*_r<i>.json`` (or single files) matching ``pattern``."""
    runs = [json.loads(path.read_text()) for path in sorted(results.glob(pattern))] if results.is_dir() else []
    if not runs:
        return None
    return dict(
        ms=statistics.median(r["single_ms_median"] for r in runs),
        e_mae=statistics.median(r["E_MAE_meV_per_atom"] for r in runs),
        e_mae_total=statistics.median(r["E_MAE_meV"] for r in runs),
        f_mae=statistics.median(r["F_MAE_meV_per_A"] for r in runs),
        reps=len(runs),
        load=[r["loadavg_at_end"][0] for r in runs],
    )


def _median_epoch(path: Path) -> tuple[float, int] | None:
    """Median training wall time per epoch (validation excluded; the first epoch, which holds
    any compilation, left out) and the number of epochs, from an ``epoch_times.jsonl``."""
    if not path.is_file():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    times = [r["train_wall_s"] for r in records[1:] if r.get("n_steps")] or [r["train_wall_s"] for r in records]
    return (statistics.median(times), len(records)) if times else None


def table(args: argparse.Namespace) -> None:
    """The ratio table of one sitting: inference speed and accuracy from the harness's
    ``bench_infer.py`` results, training throughput from the per-epoch times."""
    results = peerbench() / "results" / ("" if args.system == "cu" else args.system)
    rows = {
        "equimol": (_median_inference(results, "infer_py_peers_calculator_t1*.json")
                    or _median_inference(results, "infer_equimol_*.json"),
                    _median_epoch(Path(args.root or f"runs/peers_{args.system}") / "epoch_times.jsonl")),
        "NequIP AOTI": (_median_inference(results, "infer_nequip_t1*.json"),
                        _median_epoch(peerbench() / f"nequip_{args.system}" / "out" / "epoch_times.jsonl")),
        "MACE l<=1": (_median_inference(results, "infer_mace_t1*.json"), None),
    }
    published = PUBLISHED[args.system]
    print(f"{args.system}: results in {results}; peers without results here use the harness's published table")
    header = (f"{'model':12} {'ms/call':>8} {'E meV/atom':>10} {'E meV':>7} {'F meV/Å':>8} {'s/epoch':>8} "
              f"{'epochs':>6}  {'inference x':>11} {'training x':>10}")
    print(header)
    print("-" * len(header))
    ours_inference, ours_epoch = rows["equimol"]
    for name, (inference, epoch) in rows.items():
        source = ""
        if inference is None and name in published:
            p = published[name]
            inference = dict(ms=p["ms"], e_mae=p["e_mae"], e_mae_total=p["e_mae"] * p["atoms"], f_mae=p["f_mae"])
            source = " (published)"
        if epoch is None and name in published and published[name]["epoch_s"] is not None:
            epoch = (published[name]["epoch_s"], 0)
        if inference is None:
            print(f"{name:12} no results")
            continue
        speed = f"{inference['ms'] / ours_inference['ms']:11.2f}" if ours_inference else f"{'':11}"
        train = f"{epoch[0] / ours_epoch[0]:10.2f}" if (epoch and ours_epoch) else f"{'':10}"
        epoch_s = f"{epoch[0]:8.1f}" if epoch else f"{'':8}"
        epochs = f"{epoch[1]:6d}" if epoch else f"{'':6}"
        print(f"{name:12} {inference['ms']:8.2f} {inference['e_mae']:10.2f} {inference['e_mae_total']:7.1f} "
              f"{inference['f_mae']:8.1f} {epoch_s} {epochs}  {speed} {train}{source}")
    print(f"(x: model's time / equimol's time; targets {TARGETS['inference']}x NequIP AOTInductor for "
          f"inference, {TARGETS['training']}x for training; s/epoch: median training wall time of 100 "
          f"steps without validation, first epoch (compilation) excluded)")


def sizes(args: argparse.Namespace) -> None:
    """equimol's package and eager model against NequIP's compiled model at each of ``--sizes``.

    For each size, a freshly initialised equimol model (seeded, ``avg_num_neighbors`` from the
    Cu-108 cell's edges) is compiled with :func:`~equimol.models.aot.export_aot` into
    ``$PEERBENCH/sizes/<size>.equimol.pt2`` (the compile time is recorded) and saved as its
    arguments and weights (``<size>.equimol.pt``, for the eager run). Then the harness's
    ``bench_infer.py`` times the package, the eager model and NequIP's
    ``$PEERBENCH/sizes/<size>.nequip.pt2`` (``nequip-compile --mode aotinductor --target ase`` of
    a NequIPGNNModel of that size, in the NequIP venv), in turn, ``--reps`` times, each in a
    process of its own with one thread. ``<size>.nequip.json`` beside NequIP's package may give
    its parameter count (``params``) and compile time (``compile_s``) for the table. The models
    are untrained, so the accuracy ``bench_infer.py`` also measures means nothing and is left
    out. The table goes to the screen and to ``$PEERBENCH/results/sizes.md``; each run's
    output to ``$PEERBENCH/results/sizes/``, from where ``--resume`` takes the runs an
    interrupted call finished.
    """
    from equimol.data.graph import atoms_to_graph
    from equimol.models.aot import export_aot
    from equimol.models.equivariant import EquivariantPotential

    harness = harness_dir(args)
    torch.set_num_threads(1)
    bench = peerbench()
    folder, results = bench / "sizes", bench / "results" / "sizes"
    folder.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    data = bench / "data" / "cu_val.xyz"
    if not data.is_file():
        raise SystemExit(f"{data}: no validation data; run the harness's make_data.py --out {bench / 'data'}")
    if args.frames < 100:  # bench_infer.py times frame 0 after a pass over every frame of the file
        import ase.io

        subset = results / f"cu_val_first{args.frames}.xyz"
        ase.io.write(subset, ase.io.read(data, index=f":{max(2, args.frames)}"), format="extxyz")
        data = subset
    nequip_python = Path(os.environ.get("NEQUIP_VENV", bench / "venv-nequip")) / "bin" / "python"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPOSITORY / "benchmarks"), os.environ.get("PYTHONPATH", "")]))
    atoms = copper_108(args.seed)
    num_edges = atoms_to_graph(atoms, 5.0).edge_index.shape[1]
    print(f"torch {torch.__version__}, 1 thread, float32, Cu {len(atoms)} atoms, {num_edges} edges "
          f"({num_edges / len(atoms):.1f} per atom) at 5 Å; export_aot autotune={args.autotune}; "
          f"bench_infer.py: median of {args.calls} energy+forces calls on frame 0 of {data.name} "
          f"(ASE calculator, neighbour list included), {args.reps} repetitions", flush=True)

    def bench_infer(python: Path, peer: str, model: Path, tag: str) -> dict:
        out = results / f"{tag}.json"
        if args.resume and out.is_file():
            return json.loads(out.read_text())
        command = [str(python), str(harness / "bench_infer.py"), "--peer", peer, "--model", str(model),
                   "--data", str(data), "--reps", str(args.calls), "--out", str(out)]
        with open(results / f"{tag}.log", "w") as log:
            subprocess.run(command, check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
        return json.loads(out.read_text())

    rows = []
    for name in args.sizes:
        size = SIZES[name]
        state, package = folder / f"{name}.equimol.pt", folder / f"{name}.equimol.pt2"
        record = folder / f"{name}.equimol.json"
        if args.resume and state.is_file() and package.is_file() and record.is_file():
            info = json.loads(record.read_text())
            print(f"{name}: reusing {package.name} (compiled in {info['compile_s']:.0f} s)", flush=True)
        else:
            torch.manual_seed(args.seed)
            model = EquivariantPotential(["Cu"], avg_num_neighbors=num_edges / len(atoms), **size).eval()
            arguments = dict(size, avg_num_neighbors=num_edges / len(atoms))
            torch.save(dict(species=["Cu"], arguments=arguments, state_dict=model.state_dict()), state)
            load_before = loadavg()
            start = time.perf_counter()
            export_aot(model, package, autotune=args.autotune)
            info = dict(compile_s=time.perf_counter() - start, autotune=args.autotune,
                        params=sum(p.numel() for p in model.parameters()), load=[load_before, loadavg()])
            record.write_text(json.dumps(info) + "\n")
            print(f"{name}: {describe(size)}; {info['params']:,} parameters; package compiled in "
                  f"{info['compile_s']:.0f} s (load average {load_before} -> {loadavg()})", flush=True)
        nequip = folder / f"{name}.nequip.pt2"
        nequip_record = folder / f"{name}.nequip.json"
        nequip_info = json.loads(nequip_record.read_text()) if nequip_record.is_file() else {}
        runs = {"package": [], "eager": [], "nequip": []}
        for repetition in range(1, args.reps + 1):
            plan = [("package", sys.executable, "py:peers:calculator", package),
                    ("eager", sys.executable, "py:peers:state_calculator", state)]
            if nequip.is_file():
                plan.append(("nequip", nequip_python, "nequip", nequip))
            for kind, python, peer, model in plan:
                result = bench_infer(python, peer, model, f"{name}_{kind}_r{repetition}")
                runs[kind].append(result)
                print(f"{name} r{repetition} {kind:8} {result['single_ms_median']:8.2f} ms "
                      f"(load average {' '.join(result['loadavg_at_start'])} -> "
                      f"{' '.join(result['loadavg_at_end'])})", flush=True)
        if not nequip.is_file():
            print(f"{name}: no {nequip}; NequIP left out", flush=True)
        loads = [float(r[key][0]) for kind in runs.values() for r in kind for key in ("loadavg_at_start", "loadavg_at_end")]
        ms = {kind: statistics.median(r["single_ms_median"] for r in kind_runs) if kind_runs else None
              for kind, kind_runs in runs.items()}
        rows.append(dict(size=name, params=info["params"], nequip_params=nequip_info.get("params"), **ms,
                         compile_s=info["compile_s"], nequip_compile_s=nequip_info.get("compile_s"),
                         load=f"{min(loads):.2f}-{max(loads):.2f}"))

    def cell(value, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    lines = [
        f"Cu {len(atoms)} atoms (fcc, periodic), 5 Å cutoff, float32, 1 thread, energy+forces through the "
        f"ASE calculator with the neighbour list: median ms per call of bench_infer.py ({args.calls} calls), "
        f"median of {args.reps} repetitions taken in turn; untrained models, so no accuracy. "
        f"equimol package: export_aot(autotune={args.autotune}); NequIP: nequip-compile --mode aotinductor. "
        f"Load average: the 1-minute load at the start and end of every run of the size (min-max).",
        "",
        "| size | equimol params | NequIP params | equimol package ms | equimol eager ms | NequIP compiled ms "
        "| NequIP / equimol package | equimol compile s | NequIP compile s | load average |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = row["nequip"] / row["package"] if row["nequip"] is not None else None
        lines.append(
            f"| {row['size']} | {row['params']:,} | {cell(row['nequip_params'], ',')} | {row['package']:.1f} "
            f"| {row['eager']:.1f} | {cell(row['nequip'], '.1f')} | {cell(ratio, '.2f')} "
            f"| {row['compile_s']:.0f} | {cell(row['nequip_compile_s'], '.0f')} | {row['load']} |"
        )
    lines += ["", "sizes: " + "; ".join(f"{name}: {describe(SIZES[name])}" for name in args.sizes)]
    text = "\n".join(lines) + "\n"
    print()
    print(text, end="")
    (bench / "results" / "sizes.md").write_text(text)
    print(f"(written to {bench / 'results' / 'sizes.md'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed", help="in-process speed of the tensor-product paths and the FLOP count")
    p.add_argument("--system", choices=["cu", "etoh"], default="cu")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (minutes to compile)")
    p.add_argument("--size", choices=list(SIZES), default=None,
                   help="network size (default: the matched size, l1); see SIZES")
    p = sub.add_parser("train", help="equimol fit with the matched settings")
    p.add_argument("--system", choices=["cu", "etoh"], default="cu")
    p.add_argument("--budget", type=int, default=600, help="wall-clock seconds of training")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--train-file", default=None, help="default: $PEERBENCH/data/{system}_train.xyz")
    p.add_argument("--val-file", default=None, help="default: $PEERBENCH/data/{system}_val.xyz")
    p.add_argument("--root", default=None, help="run folder; default runs/peers_{system}")
    p = sub.add_parser("infer", help="the harness's bench_infer.py on a trained equimol model")
    p.add_argument("--system", choices=["cu", "etoh"], default="cu")
    p.add_argument("--model", required=True)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--harness", default=None)
    p = sub.add_parser("sitting", help="the harness's infer.sh for the peers and equimol, interleaved")
    p.add_argument("--system", choices=["cu", "etoh"], default="cu")
    p.add_argument("--model", required=True, help="equimol checkpoint (best.ckpt of peers.py train)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--peers", nargs="*", default=["nequip"], help="peer names infer.sh takes (nequip, mace)")
    p.add_argument("--harness", default=None)
    p.add_argument("--root", default=None, help="equimol's run folder; default runs/peers_{system}")
    p = sub.add_parser("sizes", help="equimol's package and eager model against NequIP's compiled one, by network size")
    p.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    p.add_argument("--reps", type=int, default=3, help="repetitions of each timing, taken in turn")
    p.add_argument("--calls", type=int, default=30, help="timed calls per bench_infer.py run")
    p.add_argument("--frames", type=int, default=100,
                   help="validation frames bench_infer.py runs before timing (its accuracy pass; at least 2)")
    p.add_argument("--autotune", action="store_true",
                   help="export_aot autotuning the matrix products (off by default: at l <= 3 it takes the "
                        "compile past 7 minutes on one core)")
    p.add_argument("--resume", action="store_true",
                   help="after an interruption: keep the packages and the finished runs of the earlier call "
                        "(in $PEERBENCH/sizes and $PEERBENCH/results/sizes) and run only the missing ones")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--harness", default=None)
    p = sub.add_parser("table", help="the ratio table")
    p.add_argument("--system", choices=["cu", "etoh"], default="cu")
    p.add_argument("--root", default=None, help="equimol's run folder; default runs/peers_{system}")
    args = parser.parse_args()
    {"speed": speed, "train": train, "infer": infer, "sitting": sitting, "sizes": sizes, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
