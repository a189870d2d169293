"""``equimol committee --config X --size N``: N models trained from one config, for uncertainty.

The members are trained one after the other, each by ``equimol fit`` with the config and the
flags given (``--trainer.max_epochs 3`` and the like), and differ in their seed: member ``k``
runs with ``--seed_everything BASE+k`` (``BASE``: the config's ``seed_everything``) in its own
run folder ``DIR/member_k``. The training, validation and test sets stay the config's for
every member (the data module's ``seed`` is pinned to the base seed), so the members disagree
only where their initial weights and batch orders lead them; ``--resplit`` gives member ``k``
the split of seed ``BASE+k`` as well (and, for generated data, frames of that seed).

The command can be run again: a finished member is skipped, and one that was interrupted
resumes from its ``last.ckpt`` (``--ckpt_path last``). When every member has finished,
``DIR/committee.json`` lists their seeds and best checkpoints, and the command prints how to
use them (``equimol evaluate --ckpt A --ckpt B ...``, ``EquimolCalculator([A, B, ...])``).

::

    equimol committee --config my.yaml --size 4
    equimol committee --config my.yaml --size 4 --resplit --out runs/my_resplit --trainer.max_epochs 50
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any, Optional, Sequence

from jsonargparse import ActionYesNo, ArgumentParser

from equimol import _cli_errors as errors

__all__ = ["committee_main", "build_committee_parser", "split_arguments", "COMMITTEE_FILE", "MEMBER_FILE"]

#: The committee's record in ``DIR``: its members' seeds and checkpoints.
COMMITTEE_FILE = "committee.json"
#: A member's record in ``DIR/member_k``, written when its training has finished.
MEMBER_FILE = "member.json"

_OWN = {"--size": True, "--out": True, "--resplit": False, "--no_resplit": False}
_MANAGED = ("--ckpt_path", "--print_config")


def build_committee_parser() -> ArgumentParser:
    """The parser of the committee's own options (every other argument goes to ``equimol fit``)."""
    parser = ArgumentParser(
        prog="equimol committee",
        usage="equimol committee --config FILE --size N [--resplit] [--out DIR] [--KEY VALUE ...]",
        description=(
            "Train N models from one config, one after the other, member k with --seed_everything BASE+k "
            "in DIR/member_k; the split stays the config's unless --resplit. Run it again to resume: "
            "finished members are skipped, an interrupted one resumes from its last.ckpt. Every other "
            "argument (--config FILE, --trainer.max_epochs 3, ...) is passed to equimol fit."
        ),
        **errors.PARSER_KWARGS,
    )
    parser.add_argument("--size", type=int, required=True, help="the number of members")
    parser.add_argument("--resplit", action=ActionYesNo, default=False,
                        help="member k splits the data with seed BASE+k (default: the config's split for all)")
    parser.add_argument("--out", type=Optional[str], default=None,
                        help="the committee's folder (default: the config's trainer.default_root_dir + '_committee')")
    return parser


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(own, fit)``: the committee's options (``--size``, ``--out``, ``--resplit``, ``--help``)
    and the arguments for ``equimol fit``."""
    own: list[str] = []
    fit: list[str] = []
    args = list(argv)
    k = 0
    while k < len(args):
        arg = args[k]
        name = arg.split("=", 1)[0]
        if arg in ("-h", "--help"):
            own.append(arg)
        elif name in _OWN:
            own.append(arg)
            if _OWN[name] and "=" not in arg and k + 1 < len(args):
                own.append(args[k + 1])
                k += 1
        else:
            fit.append(arg)
        k += 1
    return own, fit


def _member_error(error: BaseException, index: int, folder: Path) -> BaseException:
    message = f"committee member {index} ({folder}) failed: {error}"
    try:
        return type(error)(message)
    except Exception:  # an error type that takes other arguments
        return RuntimeError(message)


def _best_checkpoint(folder: Path) -> Path | None:
    """The member's best checkpoint (``best*.ckpt``, the newest if several), else its last."""
    from equimol.train.checkpoints import last_checkpoint

    best = sorted(folder.glob("best*.ckpt"), key=lambda path: path.stat().st_mtime)
    return best[-1] if best else last_checkpoint(folder)


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` whole or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(record, indent=2))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def committee_main(argv: list[str]) -> int:
    """``equimol committee --config FILE --size N [--resplit] [--out DIR] [fit flags]``: train
    the members that have not finished, write ``DIR/committee.json`` and print how to use the
    committee; returns 0. A member that fails stops the command with an error naming the
    member and its folder (the members before it stay finished)."""
    own, fit_args = split_arguments(argv)
    args = build_committee_parser().parse_args(own)
    if args.size < 1:
        raise ValueError(f"--size must be at least 1, got {args.size}")
    for arg in fit_args:
        if arg.split("=", 1)[0] in _MANAGED:
            raise errors.CommandLineError(
                f"{arg.split('=', 1)[0]} is not an option of equimol committee: the committee resumes its "
                "members itself; run it again to continue"
            )

    from equimol.train.checkpoints import last_checkpoint
    from equimol.train.cli import main as fit_cli
    from equimol.train.cli import parse_config

    config = parse_config("fit", fit_args)
    base = config.get("seed_everything")
    if isinstance(base, bool) or not isinstance(base, int):
        raise ValueError(f"seed_everything: the committee needs an integer base seed, got {base!r}")
    root = Path(args.out) if args.out is not None else Path(f"{config.trainer.default_root_dir}_committee")
    data_args = config.get("data.init_args") if "data" in config else None
    has_seed = data_args is not None and "seed" in data_args
    split_seed = data_args.get("seed") if has_seed else None
    split_seed = base if split_seed is None else int(split_seed)
    shared = []  # every member reads its frames and graphs from one cache
    if data_args is not None and "cache_dir" in data_args and data_args.get("cache_dir") is None:
        shared = ["--data.init_args.cache_dir", str(root / "data")]
    if not has_seed:
        print("note: the data module has no 'seed' argument: equimol cannot pin or change its split")

    previous = root / COMMITTEE_FILE
    if previous.is_file():
        before = json.loads(previous.read_text())
        if before.get("fit_arguments") != fit_args or before.get("resplit") != bool(args.resplit):
            print(f"note: {previous} records other arguments ({shlex.join(before.get('fit_arguments') or [])}"
                  f"{' --resplit' if before.get('resplit') else ''}); finished members keep what they were "
                  "trained with")

    members = []
    for index in range(args.size):
        folder = root / f"member_{index}"
        seed = base + index
        data_seed = seed if args.resplit else split_seed
        record_file = folder / MEMBER_FILE
        if record_file.is_file():
            record = json.loads(record_file.read_text())
            print(f"member {index}: finished, skipped ({folder})")
        else:
            member_args = [*fit_args, *shared, "--seed_everything", str(seed),
                           "--trainer.default_root_dir", str(folder)]
            if has_seed:
                member_args += ["--data.init_args.seed", str(data_seed)]
            resume = last_checkpoint(folder / "checkpoints") is not None
            if resume:
                member_args += ["--ckpt_path", "last"]
            print(f"member {index}: {'resuming' if resume else 'training'} with seed {seed} in {folder}")
            try:
                fit_cli(["fit", *member_args])
            except SystemExit as exit_:  # a parse error, already printed in one line
                if exit_.code not in (0, None):
                    raise errors.CommandLineError(
                        f"committee member {index} ({folder}) failed: equimol fit stopped with exit code {exit_.code}"
                    ) from exit_
            except Exception as error:
                raise _member_error(error, index, folder) from error
            checkpoint = _best_checkpoint(folder / "checkpoints")
            if checkpoint is None:
                raise errors.CommandLineError(
                    f"committee member {index} ({folder}): training ended without a checkpoint"
                )
            record = {"index": index, "seed": seed, "data_seed": data_seed if has_seed else None,
                      "checkpoint": str(checkpoint), "run_dir": str(folder)}
            _write_json(record_file, record)
        if not Path(record["checkpoint"]).is_file():
            raise FileNotFoundError(
                f"committee member {index} ({folder}): its checkpoint {record['checkpoint']} is gone; "
                f"remove {record_file} to train it again"
            )
        members.append(record)

    committee = {
        "size": args.size,
        "base_seed": base,
        "resplit": bool(args.resplit),
        "fit_arguments": fit_args,
        "members": members,
    }
    _write_json(root / COMMITTEE_FILE, committee)
    checkpoints = [member["checkpoint"] for member in members]
    print(f"wrote {root / COMMITTEE_FILE}: {args.size} members")
    print("evaluate: equimol evaluate " + " ".join(f"--ckpt {shlex.quote(path)}" for path in checkpoints)
          + " --data FILE")
    print(f"ASE: EquimolCalculator({checkpoints!r})")
    return 0
