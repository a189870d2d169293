"""The layer map of docs/architecture.md holds in the code: no upward import, no import cycle.

The map is read from the page itself (its ``layers`` block), so the page and the code cannot
drift apart. Every import counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "equimol"
PAGE = ROOT / "docs" / "architecture.md"


def documented_layers() -> dict[str, int]:
    """``{"equimol.nn": 0, ...}`` from the page's block of lines ``layer K: name, name``."""
    block = re.search(r"```text layers\n(.*?)```", PAGE.read_text(), re.S)
    assert block, f"{PAGE}: no ```text layers block"
    layers = {}
    for line in block.group(1).splitlines():
        match = re.fullmatch(r"layer (\d+): (.+)", line.strip())
        assert match, f"{PAGE}: cannot read the layer line {line!r}"
        for name in match.group(2).split(","):
            layers[name.strip()] = int(match.group(1))
    return layers


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_script_entry(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``, the block that runs only when the file is executed as a
    script (``python -m ...``): the command layer's code, whatever file it stands in."""
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
    )


def imported_modules(path: Path) -> set[str]:
    """The equimol modules ``path`` imports anywhere in its body (relative imports resolved),
    except in its script entry block (:func:`is_script_entry`)."""
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body if not is_script_entry(node)]
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # "from equimol.data import geometry" imports the module equimol.data.geometry
            found.update(f"{target}.{alias.name}" for alias in node.names)
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name for name in found if name in modules and name != own}


def layer_of(module: str, layers: dict[str, int]) -> tuple[str, int]:
    """The documented unit holding ``module`` (the longest matching prefix) and its layer."""
    candidates = [unit for unit in layers if module == unit or module.startswith(unit + ".")]
    if not candidates:
        pytest.fail(f"{module} is in no layer of {PAGE.name}: add it to the layer map")
    unit = max(candidates, key=len)
    return unit, layers[unit]


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in sorted(PACKAGE.rglob("*.py"))}


def test_the_page_documents_every_package_of_equimol():
    layers = documented_layers()
    for path in PACKAGE.iterdir():
        if path.name.startswith("__") or path.name.startswith("."):
            continue
        if path.is_dir() and not (path / "__init__.py").exists():
            continue
        name = "equimol." + path.stem
        layer_of(name, layers)


def test_no_module_imports_from_a_higher_layer():
    layers = documented_layers()
    upward = []
    for module, imports in import_graph().items():
        if module == "equimol":
            continue
        unit, level = layer_of(module, layers)
        for target in imports:
            if target == "equimol":
                continue
            target_unit, target_level = layer_of(target, layers)
            if target_level > level:
                upward.append(f"{module} (layer {level}) imports {target} ({target_unit}, layer {target_level})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes, or None (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def without_package_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """A package's ``__init__`` importing its own submodules is how it re-exports them, not
    a dependency of the package on itself: drop those edges, keep every other one."""
    return {
        module: {t for t in imports if not t.startswith(module + ".")}
        for module, imports in graph.items()
    }


def test_no_import_cycle_between_modules():
    cycle = find_cycle(without_package_reexports(import_graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_between_documented_units():
    layers = documented_layers()
    units: dict[str, set[str]] = {}
    for module, imports in import_graph().items():
        if module == "equimol":
            continue
        unit = layer_of(module, layers)[0]
        units.setdefault(unit, set()).update(
            layer_of(t, layers)[0] for t in imports if t != "equimol" and layer_of(t, layers)[0] != unit
        )
    cycle = find_cycle(units)
    assert cycle is None, "import cycle between packages: " + " -> ".join(cycle)


def test_the_checks_find_a_cycle_and_an_upward_import():
    """The helpers themselves see what they are meant to see."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    entry = ast.parse('if __name__ == "__main__":\n    from equimol.cli import main\n').body[0]
    assert is_script_entry(entry)
    assert not is_script_entry(ast.parse("if debug:\n    pass\n").body[0])
    layers = {"equimol.nn": 0, "equimol.models": 2}
    assert layer_of("equimol.models.vae.coordinate", layers) == ("equimol.models", 2)
    assert layer_of("equimol.nn", layers) == ("equimol.nn", 0)
