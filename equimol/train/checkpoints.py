"""Reading checkpoints safely: intact, as data only, and naming only trusted classes.

Every path that reads a checkpoint goes through this module (:func:`load_potential
<equimol.train.module.load_potential>` for ``equimol evaluate``, ``equimol compile`` and the
ASE calculator; ``equimol fit|validate|test|predict --ckpt_path`` before the trainer runs):

- **Integrity.** ``torch.save`` writes a zip archive that records a CRC-32 checksum of every
  member. :func:`verify_checkpoint` checks that the file is not empty, that the archive is
  complete (a truncated file has lost its central directory, which zip keeps at the end) and
  that every member matches its checksum, so flipped bytes inside a weight tensor are caught
  before anything is read. A damaged file is one :class:`CheckpointError` naming it, saying
  what is wrong, and listing the other checkpoints of its folder.
- **Data only.** The file is read with ``torch.load(weights_only=True)``: tensors, numbers,
  strings and containers; an archive naming any other object is refused, never retried with
  ``weights_only=False``.
- **Trusted classes.** A checkpoint written by ``equimol fit`` records how to rebuild its
  modules as ``class_path`` entries in ``hyper_parameters`` (and
  ``datamodule_hyper_parameters``); importing a module runs its code, so every class path,
  and every dotted name that would be imported in their place, is checked *before* anything
  is imported: it must lie inside ``equimol`` or ``torch``, or inside a module the user
  names, as ``trusted_modules=[...]`` or in the environment variable
  ``EQUIMOL_TRUSTED_MODULES`` (comma-separated, honoured by every command).

The checksum of the zip format is used rather than a separate content hash: every checkpoint
torch writes carries it, including those written before this check existed, by a plain
Lightning ``Trainer`` or on another machine, and there is no second file to lose or to keep in
step. A checksum detects damage (a write that did not finish, a copy cut short, flipped
bits), not a deliberate change; what a deliberately changed file can do is bounded by the two
other checks.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
import re
import sys
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "CheckpointError",
    "UntrustedClassError",
    "TRUSTED_MODULES_ENV",
    "ALWAYS_TRUSTED",
    "verify_checkpoint",
    "read_checkpoint_bytes",
    "load_checkpoint",
    "torch_load_plain",
    "check_class_paths",
    "trusted_modules",
    "checkpoints_in",
    "last_checkpoint",
]

#: Environment variable naming further modules whose classes a checkpoint may name
#: (``EQUIMOL_TRUSTED_MODULES=mypackage,other.models``).
TRUSTED_MODULES_ENV = "EQUIMOL_TRUSTED_MODULES"

#: Modules trusted without being named: equimol itself and torch (its optimizers and
#: schedulers are named in every checkpoint of ``equimol fit``).
ALWAYS_TRUSTED = ("equimol", "torch")

_CHECKPOINT_SUFFIX = ".ckpt"
_ZIP_MAGIC = b"PK\x03\x04"
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_MODULE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_CLASS_KEYS = ("class_path", "_class_path")


class CheckpointError(ValueError):
    """A checkpoint that is damaged, not a checkpoint, or not plain data."""


class UntrustedClassError(CheckpointError):
    """A checkpoint naming a class (or another importable object) outside the trusted modules."""

    def __init__(self, message: str, class_path: str) -> None:
        super().__init__(message)
        self.class_path = class_path


# ------------------------------------------------------------------------------ folders
def checkpoints_in(folder: str | os.PathLike) -> list[Path]:
    """The ``*.ckpt`` files of ``folder`` (none if it does not exist), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.suffix == _CHECKPOINT_SUFFIX and path.is_file())


def last_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint ``--ckpt_path last`` means in ``folder``: the newest ``last.ckpt`` or
    ``last-vN.ckpt`` (Lightning's rule), or None."""
    candidates = [path for path in checkpoints_in(folder) if re.match(r"^last(-v\d+)?$", path.stem)]
    return max(candidates, key=lambda path: path.stat().st_mtime) if candidates else None


def _others(path: Path) -> str:
    """``other checkpoints in FOLDER: a.ckpt, b.ckpt (damaged too)``, or that there are none."""
    folder = path.parent
    names = []
    for other in checkpoints_in(folder):
        if other.resolve() == path.resolve():
            continue
        names.append(other.name + (" (damaged too)" if _damage(other) else ""))
    if not names:
        return f"no other checkpoints in {folder}"
    return f"other checkpoints in {folder}: {', '.join(names)}"


# ---------------------------------------------------------------------------- integrity
def _damage(source: str | os.PathLike | bytes) -> str | None:
    """What is wrong with the archive at ``source`` (a path or its bytes), or None."""
    if isinstance(source, bytes):
        size, head = len(source), source[:4]

        def opened() -> Any:
            return io.BytesIO(source)
    else:
        size = os.path.getsize(source)
        with open(source, "rb") as handle:
            head = handle.read(4)

        def opened() -> Any:
            return source
    if size == 0:
        return "empty: 0 bytes"
    if head != _ZIP_MAGIC:
        return f"not a zip archive, which is what torch.save writes: {size} bytes starting {head.hex(' ')}"
    if not zipfile.is_zipfile(opened()):
        return f"truncated: {size} bytes, the end of the zip archive is missing"
    try:
        with zipfile.ZipFile(opened()) as archive:
            members = archive.infolist()
            if not any(member.filename.endswith("/data.pkl") or member.filename == "data.pkl" for member in members):
                return "not written by torch.save: the archive has no data.pkl"
            # torch can be told not to compute checksums (torch.serialization.set_crc32_options):
            # then every CRC is 0 and there is nothing to compare
            if all(member.CRC == 0 for member in members if member.file_size > 0):
                return None
            bad = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
        return f"the zip archive is broken: {error}"
    if bad is not None:
        return f"altered: the bytes of {bad} do not match their CRC-32 checksum"
    return None


def _damaged(path: Path, problem: str, kind: str) -> CheckpointError:
    others = f"; {_others(path)}" if kind == "checkpoint" else f"; delete it to regenerate the {kind}"
    return CheckpointError(f"{path} is damaged ({problem}){others}")


def _existing(path: str | os.PathLike, kind: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {kind}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {kind} file")
    return path


def verify_checkpoint(path: str | os.PathLike, *, kind: str = "checkpoint") -> Path:
    """Check that the file at ``path`` is a complete, unaltered archive of ``torch.save``.

    Raises:
        FileNotFoundError: there is no such file.
        CheckpointError: it is empty, truncated, altered (a member does not match its CRC-32)
            or not an archive of ``torch.save``; the message names the file, says which, and
            lists the other checkpoints of its folder.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = _existing(path, kind)
    problem = _damage(path)
    if problem is not None:
        raise _damaged(path, problem, kind)
    return path


def read_checkpoint_bytes(path: str | os.PathLike, *, kind: str = "checkpoint") -> bytes:
    """The bytes of the checkpoint at ``path``, verified as :func:`verify_checkpoint` does
    (read once, so what is verified is what is loaded)."""
    path = _existing(path, kind)
    raw = path.read_bytes()
    problem = _damage(raw)
    if problem is not None:
        raise _damaged(path, problem, kind)
    return raw


# ------------------------------------------------------------------------------ loading
def _first_line(error: BaseException) -> str:
    text = str(error)
    match = re.search(r"(Unsupported (?:global|operand)[^\n]*|Trying to [^\n]*)", text)
    if match:
        return match.group(1).strip().rstrip(".")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def torch_load_plain(
    source: bytes | str | os.PathLike | BinaryIO, name: str | os.PathLike, map_location: Any = "cpu",
    *, kind: str = "checkpoint",
) -> Any:
    """``torch.load(source, weights_only=True)``; failures become one :class:`CheckpointError`
    naming ``name``, never advice to load with ``weights_only=False``."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        return torch.load(handle, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{name} is not a plain {kind}: it names objects other than tensors, numbers, strings and "
            f"containers ({_first_line(error)}); equimol reads a {kind} as data only and does not run "
            "the code it names"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError) as error:
        path = Path(name)
        raise _damaged(path, f"torch could not read it: {_first_line(error)}", kind) from None


def trusted_modules(extra: Iterable[str] | None = None) -> tuple[str, ...]:
    """The modules a checkpoint may name classes from: :data:`ALWAYS_TRUSTED`, those of
    ``EQUIMOL_TRUSTED_MODULES`` (comma-separated) and ``extra``."""
    names = list(ALWAYS_TRUSTED)
    env = os.environ.get(TRUSTED_MODULES_ENV, "")
    for where, values in ((TRUSTED_MODULES_ENV, env.split(",")), ("trusted_modules", list(extra or []))):
        for value in values:
            value = str(value).strip()
            if not value:
                continue
            if not _MODULE.fullmatch(value):
                raise ValueError(f"{where}: {value!r} is not a module name (such as mypackage or mypackage.models)")
            names.append(value)
    return tuple(dict.fromkeys(names))


_resolve_trusted = trusted_modules


def _is_trusted(name: str, trusted: Sequence[str]) -> bool:
    return any(name == module or name.startswith(module + ".") for module in trusted)


def _walk(value: Any, where: str) -> Iterator[tuple[str, str, bool]]:
    """``(key path, string, is a class path)`` for every string inside ``value``."""
    if isinstance(value, dict):
        for key, item in value.items():
            inner = f"{where}.{key}"
            if key in _CLASS_KEYS and isinstance(item, str):
                yield inner, item, True
            elif key == "_instantiator":
                continue  # Lightning allows only its own instantiators
            else:
                yield from _walk(item, inner)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]")
    elif isinstance(value, str):
        yield where, value, False
    else:  # an argparse/jsonargparse Namespace or another mapping-like container
        items = getattr(value, "__dict__", None)
        if isinstance(items, dict) and type(value).__name__ in ("Namespace", "AttributeDict"):
            yield from _walk(items, where)


def _importable(root: str) -> bool:
    """Whether ``import root`` would find a module (looking it up runs no module code)."""
    if root in sys.modules:
        return True
    try:
        return importlib.util.find_spec(root) is not None
    except (ImportError, ValueError):
        return False


def check_class_paths(
    checkpoint: dict[str, Any], name: str | os.PathLike, trusted_modules: Sequence[str] | None = None,
    *, ignore: Iterable[str] = (),
) -> None:
    """Raise :class:`UntrustedClassError` if the hyperparameters of ``checkpoint`` name a class
    (``class_path``), or a dotted name of an importable module, outside ``trusted_modules``
    (default :func:`trusted_modules`). Nothing is imported.

    Args:
        checkpoint: the loaded checkpoint (a dict).
        name: the file it came from, for the message.
        trusted_modules: modules trusted besides equimol, torch and ``EQUIMOL_TRUSTED_MODULES``.
        ignore: keys of ``hyper_parameters`` that are not rebuilt (given by the caller).
    """
    trusted = _resolve_trusted(trusted_modules)
    ignored = set(ignore)
    for section in ("hyper_parameters", "datamodule_hyper_parameters"):
        values = checkpoint.get(section)
        if not isinstance(values, dict):
            continue
        if section == "hyper_parameters":
            values = {key: value for key, value in values.items() if key not in ignored}
        for where, text, is_class in _walk(values, section):
            if is_class:
                if _is_trusted(text, trusted):
                    continue
            elif section != "hyper_parameters" or not _DOTTED.fullmatch(text) or _is_trusted(text, trusted):
                continue  # the data module is not rebuilt from a checkpoint; plain strings are data
            elif not _importable(text.split(".", 1)[0]):
                continue  # a dotted word such as a file name, not something Python could import
            root = text.split(".", 1)[0]
            what = "the class" if is_class else "the importable name"
            raise UntrustedClassError(
                f"{name} names {what} {text!r} ({where}) outside equimol and the modules you trust, so it "
                f"was not imported (importing a module runs its code). If you trust that module, name it: "
                f"{TRUSTED_MODULES_ENV}={root} (comma-separated, for every equimol command) or "
                f"trusted_modules=[{root!r}] in Python",
                text,
            )


def load_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    *,
    trusted_modules: Sequence[str] | None = None,
    check_classes: bool = True,
) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, read safely.

    The file is verified (:func:`verify_checkpoint`), loaded with ``weights_only=True`` and, with
    ``check_classes``, its class paths are checked against the trusted modules
    (:func:`check_class_paths`: equimol, torch, ``EQUIMOL_TRUSTED_MODULES`` and
    ``trusted_modules``) before anything could import them.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is damaged or not plain data (one line naming it).
        UntrustedClassError: it names a class outside the trusted modules.
    """
    raw = read_checkpoint_bytes(path)
    checkpoint = torch_load_plain(raw, path, map_location)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path} is not a checkpoint: it holds a {type(checkpoint).__name__}, not a dict")
    if check_classes:
        check_class_paths(checkpoint, path, trusted_modules)
    return checkpoint
