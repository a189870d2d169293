"""How the ``equimol`` command reports errors, shared by all of its subcommands.

A known error (a bad value, a missing file, an unknown key, a parse error) becomes one line on
stderr, ``equimol <cmd>: error: <message>``, and exit code 2; anything else, or any error with
``--traceback`` / ``EQUIMOL_TRACEBACK=1``, shows the full traceback. Parsers are built with
:data:`PARSER_KWARGS` (no abbreviated options, errors raised rather than printed with a usage),
and their multi-line messages are reduced to the line that says what is wrong
(:func:`one_line`).
"""

from __future__ import annotations

import argparse
import contextlib
import re
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = [
    "PARSER_KWARGS",
    "EXIT_ERROR",
    "CommandLineError",
    "KNOWN_ERRORS",
    "command",
    "prog_of",
    "is_known",
    "one_line",
    "error_line",
    "check_option_spelling",
    "strict",
]

#: Keyword arguments of every ``jsonargparse.ArgumentParser`` of the command: an option is
#: given in full (``--trainer.max_epoch`` is not ``--trainer.max_epochs``) and a parse error
#: raises ``argparse.ArgumentError`` for the command to report in one line.
PARSER_KWARGS: dict[str, Any] = {"allow_abbrev": False, "exit_on_error": False}

#: Exit code of a known error (as argparse's).
EXIT_ERROR = 2


class CommandLineError(Exception):
    """A mistake on the command line that the parsers do not catch themselves."""


#: Errors reported in one line: parse errors and what equimol raises for bad input.
KNOWN_ERRORS: tuple[type[BaseException], ...] = (
    CommandLineError,
    argparse.ArgumentError,
    ValueError,
    FileNotFoundError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    KeyError,
    TypeError,
    ImportError,
)

_PROG_ATTRIBUTE = "_equimol_prog"


@contextlib.contextmanager
def command(prog: str) -> Iterator[None]:
    """Name the command (``"equimol study vae"``) an error raised inside comes from, unless a
    more deeply nested ``command`` named it already."""
    try:
        yield
    except Exception as error:
        if not hasattr(error, _PROG_ATTRIBUTE):
            with contextlib.suppress(AttributeError, TypeError):
                setattr(error, _PROG_ATTRIBUTE, prog)
        raise


def prog_of(error: BaseException, default: str) -> str:
    """The command ``error`` was raised in (see :func:`command`), else ``default``."""
    return getattr(error, _PROG_ATTRIBUTE, None) or default


def is_known(error: BaseException) -> bool:
    """Whether ``error`` is reported in one line (see :data:`KNOWN_ERRORS`)."""
    return isinstance(error, KNOWN_ERRORS)


# --------------------------------------------------------------------------------------
# messages

_KEY = re.compile(r'Parser key "([^"]+)"([^:"]*):\s*(.*)$')
_CLASS = re.compile(r"Problem with given class_path '([^']+)':\s*(.*)$")
_NOISE = re.compile(
    r"^(Does not validate against any of the|Subtypes:|Errors:|Given value type:|Given value:"
    r"|Expected a <class 'NoneType'>|Expected a None\b)"
)
_NOT_ACCEPTED = re.compile(r"^(?:Option|Key) ['\"]([^'\"]+)['\"] is not (?:accepted|expected)")


def _tidy(text: str) -> str:
    text = re.sub(r"<class '(?:\w+\.)*(\w+)'>", r"\1", text).replace("typing.", "")
    text = re.sub(r"Expected an? (.+?)\. Got value: ", r"expected \1, got ", text)
    return " ".join(text.split())


def one_line(message: str) -> str:
    """The line of a (jsonargparse) error message that says what is wrong, prefixed by the
    full key it is about.

    ``Parser key "data": ... Problem with given class_path 'C': Parser key "batch_size":
    Expected a <class 'int'>. Got value: eight`` (over nine lines) becomes
    ``data.init_args.batch_size: expected int, got eight``; an unknown key becomes
    ``unknown key 'model.init_args.forces_wieght' (C has no argument 'forces_wieght')``.
    """
    lines = [line.strip().lstrip("-").strip() for line in str(message).splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return ""
    prefix, path, owner, leaf = "", [], None, None
    for k, line in enumerate(lines):
        text = line
        key, klass = _KEY.search(text), _CLASS.search(text)
        if k == 0 and (key or klass):
            prefix = text[: (key or klass).start()]
        if key:
            path.append(key.group(1) + key.group(2).rstrip())
            text = key.group(3)
        elif klass:
            owner = klass.group(1)
            path.append("init_args")
            text = klass.group(2)
        elif _NOISE.match(text):
            continue
        if text and not _NOISE.match(text):
            leaf = text
            break
    if leaf is None:
        return _tidy(lines[0])
    unknown = _NOT_ACCEPTED.match(leaf)
    if unknown:
        name = unknown.group(1)
        where = ".".join([*path, name])
        detail = f" ({owner} has no argument {name!r})" if owner else ""
        return _tidy(f"{prefix}unknown key {where!r}{detail}")
    where = ".".join(part for part in path if part)
    if where.endswith(".init_args") and owner:
        where = where[: -len(".init_args")]
    return _tidy(f"{prefix}{where}: {leaf}" if where else f"{prefix}{leaf}")


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]  # str(KeyError) quotes its argument
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error)
    text = one_line(text)
    if not text:
        text = type(error).__name__
    return text


def error_line(prog: str, error: BaseException) -> str:
    """``"<prog>: error: <one-line message>"``."""
    return f"{prog}: error: {_message(error)}"


# --------------------------------------------------------------------------------------
# parsers

_DASHED = re.compile(r"^--([A-Za-z0-9_.]*[A-Za-z0-9_]-[A-Za-z0-9_.+-]*)(=.*)?$")


def check_option_spelling(args: Sequence[str]) -> None:
    """Raise :class:`CommandLineError` naming the new spelling of an option written with
    dashes (``--batch-size``): every equimol option is spelled with underscores."""
    for arg in args:
        if arg == "--":
            return
        match = _DASHED.match(arg)
        if match:
            name = match.group(1)
            raise CommandLineError(
                f"unrecognized option '--{name}': options are spelled with underscores, "
                f"use --{name.replace('-', '_')}"
            )


def strict(parser: Any) -> Any:
    """Set :data:`PARSER_KWARGS` on an already built parser (and its subcommand parsers)."""
    for name, value in PARSER_KWARGS.items():
        setattr(parser, name, value)
    if hasattr(parser, "_allow_abbrev_given"):
        parser._allow_abbrev_given = True
    subcommands = getattr(parser, "_subcommands_action", None)
    for sub in getattr(subcommands, "_name_parser_map", {}).values():
        strict(sub)
    return parser
