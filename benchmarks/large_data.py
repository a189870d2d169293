"""Training from an on-disk data set against the in-memory path: epoch time, throughput, memory.

Generates a molecular data set locally (small H/C/N/O molecules of ASE's G2 collection, 4-12
atoms, rattled by 0.05 Å and labelled with ASE's EMT: cheap labels, since this measures I/O and
memory, not chemistry), converts it with ``equimol convert`` (structures only, and with the
graphs of the cutoff stored), and trains a tiny EquivariantPotential for a few epochs through
AtomsDataModule from each source. Every configuration runs in a fresh process, with one torch
thread, and reports:

- setup: seconds from the data module's construction to the first training step (reading,
  graph building and statistics for the in-memory path; the streaming statistics pass for
  an on-disk file),
- epoch: the median over the epochs of one training epoch's seconds (no validation),
- structures/s: training structures per median epoch second,
- peak memory: the largest proportional set size (PSS, psutil) of the process and its
  DataLoader workers together, sampled every 0.5 s over the whole run; PSS shares the pages
  that forked workers have in common among them, where a sum of resident sizes would count
  them once per process.

    python benchmarks/large_data.py [--frames 100000] [--epochs 3] [--workers 1] [--folder DIR]
    python benchmarks/large_data.py --frames 5000 --epochs 2     # a quick run

The generated and converted files are kept in ``--folder`` (default: ``equimol-large-data`` in
the temporary folder) and reused; graphs the in-memory path caches go to a fresh folder every
run, so that its setup is always measured cold.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

CUTOFF = 4.0
SPECIES = ("H", "C", "N", "O")
MODEL = dict(channels=8, num_layers=1, l_max=1)
SEED = 0
_CHUNK = 1000


# -- data ----------------------------------------------------------------------------------


def _molecule_names() -> list[str]:
    from ase.collections import g2

    return sorted(name for name in g2.names if set(g2[name].get_chemical_symbols()) <= set(SPECIES)
                  and 4 <= len(g2[name]) <= 12)


def _frames_chunk(arguments: tuple[int, int]) -> list:
    """Frames ``start .. start + count - 1``: each a G2 molecule rattled with its own seed, EMT labels."""
    import ase.build
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    start, count = arguments
    names = _molecule_names()
    frames = []
    for number in range(start, start + count):
        rng = np.random.default_rng([SEED, number])
        atoms = ase.build.molecule(names[rng.integers(len(names))])
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def generate(path: Path, frames: int, jobs: int) -> float:
    """Write ``frames`` labelled molecules to ``path`` (extended XYZ) unless it is there; seconds taken."""
    import ase.io

    if path.exists():
        return 0.0
    start = time.perf_counter()
    partial = path.with_suffix(".partial.xyz")
    chunks = [(k, min(_CHUNK, frames - k)) for k in range(0, frames, _CHUNK)]
    with Pool(jobs) as pool, open(partial, "w") as handle:
        for done, chunk in enumerate(pool.imap(_frames_chunk, chunks), 1):
            ase.io.write(handle, chunk, format="extxyz")
            print(f"\rgenerating {path.name}: {done * _CHUNK} of {frames} frames", end="", file=sys.stderr)
    print(file=sys.stderr)
    os.replace(partial, path)
    return time.perf_counter() - start


def convert(source: Path, output: Path, cutoff: float | None) -> float:
    """``equimol convert`` ``source`` into ``output`` unless it is there; seconds taken."""
    from equimol.cli import main

    if output.exists():
        return 0.0
    start = time.perf_counter()
    options = ["--cutoff", str(cutoff)] if cutoff is not None else []
    if main(["convert", str(source), str(output), *options]) != 0:
        raise SystemExit(f"equimol convert {source} failed")
    return time.perf_counter() - start


# -- one configuration, in a process of its own ----------------------------------------------


class _PeakMemory:
    """The peak PSS of this process and its children, sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> int:
        import psutil

        total = 0
        for process in [self._process, *self._process.children(recursive=True)]:
            try:
                total += process.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self._interval)

    def stop(self) -> int:
        self.peak = max(self.peak, self._sample())
        self._stop.set()
        self._thread.join()
        return self.peak


def run_configuration(path: str, workers: int, epochs: int, batch_size: int) -> dict:
    """Train a tiny model for ``epochs`` epochs from ``path``; timings and peak memory."""
    import resource

    memory = _PeakMemory()
    import pytorch_lightning as pl
    import torch

    from equimol.models.equivariant import EquivariantPotential
    from equimol.train import AtomsDataModule, PotentialModule

    torch.set_num_threads(1)
    pl.seed_everything(SEED, verbose=False)

    class EpochTimer(pl.Callback):
        def __init__(self) -> None:
            self.first_step: float | None = None
            self.epochs: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self.first_step is None:
                self.first_step = time.perf_counter()

        def on_train_epoch_start(self, trainer, module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, module) -> None:
            self.epochs.append(time.perf_counter() - self._start)

    scratch = tempfile.mkdtemp(prefix="equimol-large-data-run-")
    start = time.perf_counter()
    data = AtomsDataModule(cutoff=CUTOFF, path=path, split=[0.95, 0.05], seed=SEED, batch_size=batch_size,
                           num_workers=workers, cache_dir=scratch)
    model = EquivariantPotential(species=list(SPECIES), cutoff=CUTOFF, **MODEL)
    timer = EpochTimer()
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[timer], default_root_dir=scratch)
    trainer.fit(PotentialModule(model, lr_scheduler=None), datamodule=data)
    peak = memory.stop()
    shutil.rmtree(scratch, ignore_errors=True)
    epoch = statistics.median(timer.epochs)
    return {
        "train_frames": len(data.train_set),
        "setup_s": timer.first_step - start,
        "epochs_s": timer.epochs,
        "epoch_s": epoch,
        "structures_per_s": len(data.train_set) / epoch,
        "peak_pss_mb": peak / 1e6,
        "maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3,
        "maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e3,
    }


def _in_subprocess(path: Path, workers: int, epochs: int, batch_size: int) -> dict:
    command = [sys.executable, __file__, "--_run", str(path), "--workers", str(workers), "--epochs", str(epochs),
               "--batch_size", str(batch_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# -- the table -----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="structures to generate")
    parser.add_argument("--in_memory_frames", type=int, default=None,
                        help="train the in-memory path on the first N frames only (default: all)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration (the median is reported)")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers of the on-disk configurations")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="processes generating the data")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "equimol-large-data")
    parser.add_argument("--_run", type=str, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._run is not None:
        print(json.dumps(run_configuration(args._run, args.workers, args.epochs, args.batch_size)))
        return

    args.folder.mkdir(parents=True, exist_ok=True)
    source = args.folder / f"molecules-{args.frames}.xyz"
    seconds = generate(source, args.frames, args.jobs)
    if seconds:
        print(f"generated {args.frames} frames in {seconds:.0f} s ({source.stat().st_size / 1e6:.0f} MB)")
    plain, graphs = args.folder / f"molecules-{args.frames}.eqd", args.folder / f"molecules-{args.frames}-graphs.eqd"
    for output, cutoff in ((plain, None), (graphs, CUTOFF)):
        seconds = convert(source, output, cutoff)
        if seconds:
            print(f"converted into {output.name} in {seconds:.0f} s ({output.stat().st_size / 1e6:.0f} MB)")
    in_memory = source
    if args.in_memory_frames is not None and args.in_memory_frames < args.frames:
        in_memory = Path(f"{source}@:{args.in_memory_frames}")

    rows = [
        (f"in memory ({in_memory.name})", in_memory, 0),
        ("on disk, graphs built in the workers", plain, args.workers),
        (f"on disk, stored graphs (cutoff {CUTOFF:g} Å)", graphs, args.workers),
    ]
    print(f"\n{args.frames} structures, {len(_molecule_names())} molecules of 4-12 atoms, cutoff {CUTOFF:g} Å, "
          f"batch {args.batch_size}, EquivariantPotential {MODEL}, median of {args.epochs} epochs, 1 torch thread\n")
    print("| data | workers | training structures | setup s | epoch s | structures/s | peak memory (PSS) MB |")
    print("|---|---|---|---|---|---|---|")
    for name, path, workers in rows:
        result = _in_subprocess(path, workers, args.epochs, args.batch_size)
        print(f"| {name} | {workers} | {result['train_frames']} | {result['setup_s']:.1f} | {result['epoch_s']:.1f} "
              f"| {result['structures_per_s']:.0f} | {result['peak_pss_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
