"""The documentation site builds with warnings as errors, and the README matches CI."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_documentation_builds_without_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").exists()


def _fenced_commands(markdown: str) -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", markdown, flags=re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def _readme_test_command() -> str:
    """The README's command that runs the tests: its one shell line that ends by running pytest."""
    commands = [c for c in _fenced_commands((ROOT / "README.md").read_text()) if re.search(r"(^|&& )pytest( |$)", c)]
    assert len(commands) == 1, f"the README should show one test command, it shows {commands}"
    return commands[0]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """.ci/run names this test beside its command: the last command of .ci/run is the README's."""
    ci_lines = [
        line.strip()
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert ci_lines[-1] == _readme_test_command(), f"the last command of .ci/run is not the README's:\n{ci_lines[-1]}"


def test_readme_main_command_installs_torch_first() -> None:
    commands = [
        c for c in _fenced_commands((ROOT / "README.md").read_text()) if "equimol " in c and "pip install -e" in c
    ]
    assert commands, "the README shows no command that installs and runs equimol"
    for command in commands:
        assert command.index("torch==") < command.index("pip install -e"), command


def test_every_test_named_on_the_faults_page_exists():
    """docs/faults.md names, for each bad input or fault, the test that proves what equimol
    does: each of those tests must exist (a renamed test would leave the page pointing at nothing)."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "faults.md").read_text()
    current, named, missing = None, 0, []
    for path, test, continued in re.findall(r"`((?:tests/)?test_\w+\.py)(?:::(\w+))?`|`::(\w+)`", text):
        if path:
            current = root / (path if path.startswith("tests/") else f"tests/{path}")
            assert current.is_file(), f"docs/faults.md names {path}, which does not exist"
        name = test or continued
        if name:
            named += 1
            if not re.search(rf"^def {name}\(", current.read_text(), re.M):
                missing.append(f"{current.name}::{name}")
    assert named > 20 and not missing, f"tests named on docs/faults.md that do not exist: {missing}"
