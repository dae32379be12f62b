"""The layout's rules, read from the code (docs/ARCHITECTURE.md):

- every import points down the floors ar2mdm.common -> ar2mdm.diffusion -> ar2mdm.sampling ->
  ar2mdm.tasks -> conversion -> probe -> analyses -> analyses.app (a module may import its own floor
  and the floors below it; a module's floor is the longest one its dotted name starts with);
- no two modules import each other, directly or around a loop; imports inside functions count;
- no private name (`_x`) is imported from another module.

Imports are read with `ast`, not by importing, so a lazy import inside a function is seen too.
A parent package's `__init__` that Python runs on the way to a submodule is not counted as an
import of that `__init__` (it is how packages re-export their submodules).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ar2mdm", "conversion", "probe", "analyses")  # the top-level import packages, all of them
FLOORS = (
    "ar2mdm",
    "ar2mdm.common",
    "ar2mdm.diffusion",
    "ar2mdm.sampling",
    "ar2mdm.tasks",
    "conversion",
    "probe",
    "analyses",
    "analyses.app",
)


def floor(module: str, floors: tuple[str, ...] = FLOORS) -> int:
    """The rank of `module`'s floor: the longest floor its dotted name is or starts with."""
    matches = [i for i, f in enumerate(floors) if module == f or module.startswith(f + ".")]
    return max(matches, key=lambda i: len(floors[i]))


@dataclass(frozen=True)
class Import:
    """One import statement: `source` (module) imports `target` (module) at file:line."""

    source: str
    target: str
    names: tuple[str, ...]
    where: str


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def read_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Every module of `packages` under `root`: dotted name -> file."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            modules[module_name(root, path)] = path
    return modules


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    """Every import (module level or inside functions) between modules of `packages`.

    `from a.b import c` is an import of `a.b.c` when that is a module, else of `a.b`.
    """
    modules = read_modules(root, packages)
    found = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        found.append(Import(module, alias.name, (), where))
            elif isinstance(node, ast.ImportFrom):
                target = _absolute(module, is_package, node)
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in modules:
                        found.append(Import(module, sub, (), where))
                    elif target in modules:
                        found.append(Import(module, target, (alias.name,), where))
    return found


def upward_imports(imports: list[Import], floors: tuple[str, ...]) -> list[str]:
    return [
        f"{i.where}: {i.source} imports {i.target} (a higher floor)"
        for i in imports
        if floor(i.target, floors) > floor(i.source, floors)
    ]


def cycles(imports: list[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or self-imports."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        graph.setdefault(i.source, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_cycles(imports: list[Import], depth: int) -> list[list[str]]:
    """Cycles between packages cut at `depth` dotted parts (1: top level, 2: subpackages)."""

    def cut(module: str) -> str:
        return ".".join(module.split(".")[:depth])

    between = [
        Import(cut(i.source), cut(i.target), i.names, i.where) for i in imports if cut(i.source) != cut(i.target)
    ]
    return cycles(between)


def private_imports(imports: list[Import]) -> list[str]:
    return [
        f"{i.where}: {i.source} imports {name} from {i.target}"
        for i in imports
        for name in i.names
        if name.startswith("_") and not name.startswith("__")
    ]


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = read_imports(ROOT, PACKAGES)
    assert len(found) > 300, "the reader found too few imports to be reading the packages"
    return found


def test_every_package_is_a_floor():
    """A new top-level package must be given a floor here (and in docs/ARCHITECTURE.md).

    tests/ and benchmarks/ use the toolkit from outside and are no floor.
    """
    outside = {"tests", "benchmarks"}
    code = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file() and p.name not in outside}
    assert code == set(PACKAGES)
    assert all(f.split(".")[0] in PACKAGES for f in FLOORS)


def test_imports_point_down(imports):
    assert upward_imports(imports, FLOORS) == []


def test_no_module_cycles(imports):
    assert cycles(imports) == []


def test_no_package_cycles(imports):
    assert package_cycles(imports, depth=1) == []
    assert package_cycles(imports, depth=2) == []


def test_no_private_names_across_modules(imports):
    assert private_imports(imports) == []


def test_checks_catch_what_they_look_for(tmp_path):
    """The checks on a small tree with one of each fault (so the tests above can fail)."""
    files = {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from low import b\n    return b\n",
        "low/b.py": "from .a import f\nfrom high.c import _hidden\n",
        "high/__init__.py": "",
        "high/c.py": "import low.a\n_hidden = 1\n",
        "high/d.py": "from high import c\n",
        "high/app/__init__.py": "",
        "high/app/x.py": "from high import d\n",
        "high/e.py": "import high.app.x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    found = read_imports(tmp_path, ("low", "high"))
    pairs = {(i.source, i.target) for i in found}
    assert pairs == {
        ("low.a", "low.b"),
        ("low.b", "low.a"),
        ("low.b", "high.c"),
        ("high.c", "low.a"),
        ("high.d", "high.c"),
        ("high.app.x", "high.d"),
        ("high.e", "high.app.x"),
    }
    assert upward_imports(found, ("low", "high", "high.app")) == [
        "low/b.py:2: low.b imports high.c (a higher floor)",
        "high/e.py:1: high.e imports high.app.x (a higher floor)",
    ]
    assert cycles(found) == [["high.c", "low.a", "low.b"]]
    assert package_cycles(found, depth=1) == [["high", "low"]]
    assert private_imports(found) == ["low/b.py:2: low.b imports _hidden from high.c"]
