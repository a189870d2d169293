"""Property-based tests of the structure readers on damaged extended-XYZ files.

A valid file written by ASE (three labelled molecule frames and one labelled periodic cell) is
damaged by one to three mutations: truncated at a byte, a line deleted or duplicated, a
character replaced (by a printable one, a quote, ``=``, a NUL byte or a byte that is not
UTF-8), a token inserted (``NaN``, ``inf``, ``1e999``, ``-``, ``garbage``, a stray
``Lattice=``...) or one number of the file replaced (``NaN``, ``1e30``, ``0``, a letter...). ``equimol.data.io.read_frames`` and ``equimol.data.AtomsDataset`` then either
raise a named error (``ValueError``, ``KeyError`` or ``OSError``, the file's name in the
message) or return frames that are what the file says: finite positions, and graphs equal to
the frames ``read_frames`` gives (positions, species, energies). Nothing may hang (a per-example
deadline, and a watchdog that ends the test run if a call never returns) and no other
exception type (``IndexError``, ``AttributeError``, ``UnicodeDecodeError``... from inside ASE)
may escape.

Settings: ``derandomize=True`` (the same examples on every run, no example database),
``deadline=2000`` ms per example, ``max_examples=150`` for ``read_frames``, 100 for
``AtomsDataset`` on files with 1-3 mutations and 100 for ``AtomsDataset`` on files with one
number replaced: 350 damaged files per run, plus the explicit examples below. About nine in
ten of the mutated files are refused and one in ten still reads; of the files with one number
replaced, about seven in ten are refused (NaN or inf positions and labels, a broken count or
cell, an isolated atom) and three in ten read.
"""

from __future__ import annotations

import faulthandler
import math
import re
from contextlib import contextmanager
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from equimol.data import AtomsDataset  # noqa: E402
from equimol.data.io import read_frames  # noqa: E402

CUTOFF = 4.0
# A call that has not returned after this many seconds is a hang: the watchdog dumps every
# thread's stack and ends the process (a hang inside C code cannot be interrupted otherwise).
WATCHDOG_S = 60.0

FUZZ = settings(
    max_examples=150,
    deadline=2000,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
NAMED_ERRORS = (ValueError, KeyError, OSError)


def _frames() -> list[Atoms]:
    rng = np.random.default_rng(7)
    frames = []
    for k in range(3):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.02, seed=k)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-10.0 - 0.5 * k, forces=rng.normal(scale=0.3, size=(len(atoms), 3))
        )
        frames.append(atoms)
    cell = bulk("Cu", "fcc", a=3.6, cubic=True)
    cell.rattle(0.03, seed=3)
    cell.calc = SinglePointCalculator(
        cell,
        energy=-14.0,
        forces=rng.normal(scale=0.1, size=(len(cell), 3)),
        stress=rng.normal(scale=0.01, size=6),
    )
    frames.append(cell)
    return frames


@pytest.fixture(scope="module")
def valid_text(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("valid") / "frames.xyz"
    ase.io.write(path, _frames(), format="extxyz")
    return path.read_bytes()


@pytest.fixture(scope="module")
def damaged_path(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("damaged") / "damaged_frames.xyz"


TOKENS = [
    b"NaN",
    b"nan",
    b"inf",
    b"-inf",
    b"1e999",
    b"-",
    b"garbage",
    b"=",
    b'"',
    b"Lattice=",
    b'Properties=species:S:1:pos:R:3 ',
    b"pbc=",
    b"\x00",
    b"\xff\xfe",
    b"\n",
    b"  ",
    b"T",
    b"0",
    b"99999",
    b"-3",
]
CHARACTERS = list(b"0123456789.-+eE aXZT=\":\n") + [0, 0xFF, 0xC3]
# Replacements of one number of the file (a coordinate, a force, the energy, a cell entry,
# a number of atoms): the file still parses, and what it says must be checked.
NUMBERS = [
    b"NaN", b"inf", b"-inf", b"1e999", b"1e30", b"-1e30", b"0", b"0.0", b"-0.0", b"3.14", b"x", b"", b"1e-3",
]
NUMBER = re.compile(rb"(?<![\w.+-])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.])")


unit_interval = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@st.composite
def mutations(draw):
    """A list of 1-3 (kind, position, payload) mutations; positions are fractions of the text."""
    kinds = st.sampled_from(["replace_number", "truncate", "delete_line", "duplicate_line", "flip", "insert"])
    fraction = unit_interval
    count = draw(st.integers(min_value=1, max_value=3))
    result = []
    for _ in range(count):
        kind = draw(kinds)
        pool = {"flip": CHARACTERS, "replace_number": NUMBERS}.get(kind, TOKENS)
        payload = draw(st.sampled_from(pool))
        result.append((kind, draw(fraction), payload))
    return result


def _mutate(text: bytes, steps) -> bytes:
    for kind, where, payload in steps:
        position = min(int(where * len(text)), max(len(text) - 1, 0))
        if kind == "truncate":
            text = text[:position]
        elif kind in ("delete_line", "duplicate_line"):
            lines = text.split(b"\n")
            line = min(int(where * len(lines)), len(lines) - 1)
            if kind == "delete_line":
                del lines[line]
            else:
                lines.insert(line, lines[line])
            text = b"\n".join(lines)
        elif kind == "flip" and text:
            text = text[:position] + bytes([payload]) + text[position + 1 :]
        elif kind == "insert":
            text = text[:position] + payload + text[position:]
        elif kind == "replace_number":
            numbers = list(NUMBER.finditer(text))
            if numbers:
                number = numbers[min(int(where * len(numbers)), len(numbers) - 1)]
                text = text[: number.start()] + payload + text[number.end() :]
    return text


@contextmanager
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def _assert_named(error: BaseException, path: Path) -> None:
    event(f"raised {type(error).__name__}")
    assert isinstance(error, NAMED_ERRORS), f"unnamed error type {type(error).__name__}: {error}"
    assert str(path) in str(error), f"the message does not name the file: {error}"


def _read_or_error(path: Path):
    try:
        with _watchdog():
            return read_frames(path)
    except Exception as error:  # noqa: BLE001 - the property is about which errors escape
        _assert_named(error, path)
        return None


def _check_frames(frames: list[Atoms]) -> None:
    assert len(frames) > 0
    for atoms in frames:
        assert isinstance(atoms, Atoms)
        assert np.isfinite(atoms.positions).all()
        assert np.isfinite(atoms.cell.array).all()


def _check_dataset(text: bytes, path: Path) -> None:
    """``AtomsDataset`` of ``text`` written to ``path``: a named error, or the frames'
    positions, species and energies."""
    path.write_bytes(text)
    try:
        with _watchdog():
            dataset = AtomsDataset(path, CUTOFF, require=("energy",), stress_key=None)
    except Exception as error:  # noqa: BLE001 - the property is about which errors escape
        _assert_named(error, path)
        return
    event("read")
    frames = read_frames(path)  # the dataset read them: they read
    _check_frames(frames)
    assert len(dataset) == len(frames)
    for graph, atoms in zip(dataset, frames, strict=True):
        np.testing.assert_allclose(graph.pos.double().numpy(), atoms.positions, atol=1e-5)
        assert graph.z.tolist() == atoms.numbers.tolist()
        energy = atoms.calc.results["energy"] if atoms.calc is not None else atoms.info["energy"]
        assert math.isclose(graph.energy.item(), float(energy), rel_tol=1e-6, abs_tol=1e-4)
        assert np.isfinite(graph.forces.numpy()).all()


@FUZZ
@given(steps=mutations())
@example(steps=[("truncate", 0.5, b"")])
@example(steps=[("insert", 0.3, b"NaN")])
@example(steps=[("flip", 0.01, 0xFF)])
@example(steps=[("delete_line", 0.0, b"")])
@example(steps=[("flip", 0.0, ord("-"))])
@example(steps=[("insert", 0.0, b"99999"), ("insert", 0.0, b"99999")])  # ASE counts 1e11 lines
@example(steps=[("insert", 0.13, b"\n")])
def test_read_frames_of_a_damaged_file_names_the_file_or_reads_it(steps, valid_text, damaged_path):
    damaged_path.write_bytes(_mutate(valid_text, steps))
    frames = _read_or_error(damaged_path)
    if frames is not None:
        event("read")
        _check_frames(frames)


@settings(FUZZ, max_examples=100)
@given(steps=mutations())
@example(steps=[("insert", 0.02, b"garbage")])
@example(steps=[("truncate", 0.9, b"")])
@example(steps=[("replace_number", 0.3, b"NaN")])
@example(steps=[("replace_number", 0.0, b"1e30")])
def test_dataset_of_a_damaged_file_names_the_file_or_holds_its_frames(steps, valid_text, damaged_path):
    _check_dataset(_mutate(valid_text, steps), damaged_path)


@settings(FUZZ, max_examples=100)
@given(where=unit_interval, number=st.sampled_from(NUMBERS))
@example(where=0.0, number=b"99999")
def test_dataset_of_a_file_with_one_number_replaced(where, number, valid_text, damaged_path):
    """One number (a coordinate, a force, the energy, a cell entry, a count) replaced by NaN,
    inf, 1e30, 0, garbage...: the file mostly still parses, and the data set must check it."""
    _check_dataset(_mutate(valid_text, [("replace_number", where, number)]), damaged_path)


def test_unmutated_file_reads_in_full(valid_text, damaged_path):
    damaged_path.write_bytes(valid_text)
    frames = read_frames(damaged_path)
    assert [len(a) for a in frames] == [9, 9, 9, 4]
    dataset = AtomsDataset(damaged_path, CUTOFF, stress_key=None)
    assert len(dataset) == 4
    assert dataset[3].energy.item() == pytest.approx(-14.0)
