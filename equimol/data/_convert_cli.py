"""``equimol convert INPUT OUTPUT.eqd``: a structure file as an on-disk data set, read lazily in training."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterator, Literal, Optional

import ase
from jsonargparse import ActionYesNo, ArgumentParser
from tqdm import tqdm

from equimol import _cli_errors as errors

__all__ = ["convert_main", "build_convert_parser"]


def build_convert_parser() -> ArgumentParser:
    """The parser of ``equimol convert``."""
    from equimol.data.ondisk import ONDISK_SUFFIX

    parser = ArgumentParser(
        prog="equimol convert",
        description=(
            f"Convert a structure file (extended XYZ, anything ASE reads, or an ASE database) into an on-disk "
            f"data set ({ONDISK_SUFFIX}) that training reads frame by frame (data.path: OUTPUT). The input is "
            "read one frame at a time and every frame is checked as the in-memory data set checks it; the "
            "output appears only when complete."
        ),
        **errors.PARSER_KWARGS,
    )
    parser.add_argument("input", type=str, help="structure file, optionally with a frame selection: 'md.xyz@-1000:'")
    parser.add_argument("output", type=str, help=f"the data set to write, *{ONDISK_SUFFIX}")
    parser.add_argument("--energy_key", type=Optional[str], default="energy",
                        help="key of the total energy, eV (info or calculator results); null leaves it out")
    parser.add_argument("--forces_key", type=Optional[str], default="forces",
                        help="key of the forces, eV/Å (arrays or calculator results); null leaves them out")
    parser.add_argument("--stress_key", type=Optional[str], default="stress",
                        help="key of the stress, eV/Å³ (info or calculator results); null leaves it out")
    parser.add_argument("--require", type=list[Literal["energy", "forces", "stress"]], default=["energy"],
                        help="labels every frame must have")
    parser.add_argument("--info_keys", type=list[str], default=[], help="numeric atoms.info entries to keep")
    parser.add_argument("--cutoff", type=Optional[float], default=None,
                        help="also store the radius graphs of this cutoff, Å: training with that cutoff then reads "
                             "its edges instead of building them (faster; any other cutoff still works)")
    parser.add_argument("--on_isolated", type=Literal["error", "ignore"], default="error",
                        help="with --cutoff: an atom without neighbours is an error, or ignored")
    parser.add_argument("--min_distance", type=float, default=0.1,
                        help="the smallest distance, Å, two atoms may have (0: no check)")
    parser.add_argument("--overwrite", action=ActionYesNo, default=False,
                        help="replace OUTPUT if it exists")
    parser.add_argument("--progress", action=ActionYesNo, default=True,
                        help="show a progress bar on stderr (--no_progress hides it)")
    return parser


def _numbered(path: Path, index: str | None) -> Iterator[tuple[str, int, ase.Atoms]]:
    """``(source, frame number, atoms)`` of the frames of ``path`` (all, or the selection ``index``)."""
    from ase.io.formats import string2index

    from equimol.data.io import iter_frames

    frames = iter_frames(path, ":" if index is None else index)
    selection = string2index(index) if index is not None else slice(None)
    if isinstance(selection, int):
        start, step, known = selection, 1, selection >= 0
    else:
        start, step = selection.start or 0, selection.step or 1
        known = start >= 0 and step > 0
    source = str(path) if known else f"{path}@{index}"  # from the end: numbered within the selection
    for count, atoms in enumerate(frames):
        yield source, (start + count * step if known else count), atoms


def convert_main(argv: list[str]) -> int:
    """Convert a structure file into an on-disk data set; returns an exit code. Errors (a
    missing file, a bad frame, a missing label, an existing OUTPUT) raise, for the ``equimol``
    command to report in one line."""
    args = build_convert_parser().parse_args(list(argv))
    from equimol.data.io import parse_source
    from equimol.data.ondisk import ONDISK_SUFFIX, write_ondisk

    path, index = parse_source(args.input)
    output = Path(args.output)
    if output.suffix.lower() != ONDISK_SUFFIX:
        raise ValueError(
            f"{output}: OUTPUT must end in {ONDISK_SUFFIX}, the suffix training recognises the data set by"
        )
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such structure file")
    if output.exists() and not args.overwrite:
        raise ValueError(f"{output}: exists; choose another name or pass --overwrite to replace it")
    if output.exists() and path.resolve() == output.resolve():
        raise ValueError(f"{output}: INPUT and OUTPUT are the same file")

    start = time.perf_counter()
    frames = tqdm(_numbered(path, index), desc=f"converting {path.name}", unit=" frames",
                  disable=not args.progress, file=sys.stderr, mininterval=0.5)
    try:
        summary = write_ondisk(
            frames,
            output,
            energy_key=args.energy_key,
            forces_key=args.forces_key,
            stress_key=args.stress_key,
            require=args.require,
            info_keys=args.info_keys,
            cutoff=args.cutoff,
            on_isolated=args.on_isolated,
            min_distance=args.min_distance,
            source=str(path),
            overwrite=args.overwrite,
        )
    finally:
        frames.close()
    graphs = f", graphs of cutoff {summary.cutoff:g} Å ({summary.num_edges} edges)" if summary.cutoff else ""
    print(
        f"wrote {output}: {summary.num_frames} structures, {summary.num_atoms} atoms, labels "
        f"{list(summary.labels)}, species {list(summary.species)}{graphs}; {summary.size / 1e6:.1f} MB "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0

