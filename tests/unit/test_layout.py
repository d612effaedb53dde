"""The code's layout, read from the source with `ast`: no import cycles, no project imports hidden in
functions, small modules, and the layers' directions (core <- slurm/control/cli; router never the
control plane). Imports under `if TYPE_CHECKING:` are no runtime edges and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("launcher", "router")
MAX_LINES = 300


class Edge(NamedTuple):
    """Module SOURCE imports project module TARGET at LINE; LOCAL: inside a function."""

    source: str
    target: str
    line: int
    local: bool

    def __str__(self) -> str:
        return f"{self.source}:{self.line} imports {self.target}"


@cache
def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = path
    return found


def resolve(name: str) -> str | None:
    """The project module that importing NAME runs: NAME itself or its nearest enclosing module."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: LEVEL 1 is the package this module is in, each more level one up
        parts = (module if is_package else module.rpartition(".")[0]).split(".")
        base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
    # `from pkg import sub` imports module pkg.sub; `from mod import name` resolves to mod.
    return [f"{base}.{alias.name}" for alias in node.names]


def walk(nodes: Iterable[ast.AST], local: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import in NODES with whether it runs inside a function; TYPE_CHECKING blocks skipped."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, local
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from walk(node.orelse, local)
        else:
            inside = local or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from walk(ast.iter_child_nodes(node), inside)


@cache
def edges() -> tuple[Edge, ...]:
    found = []
    for module, path in modules().items():
        for node, local in walk([ast.parse(path.read_text(), str(path))], False):
            for name in imported_names(node, module, path.name == "__init__.py"):
                target = resolve(name)
                if target is not None and target != module:
                    found.append(Edge(module, target, node.lineno, local))
    return tuple(found)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = stack[stack.index(v):]
            del stack[stack.index(v):]
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def offenders(title: str, items: list[str]) -> str:
    return f"{title} ({len(items)}):\n  " + "\n  ".join(items)


def breaches(importers: str, forbidden: tuple[str, ...]) -> list[str]:
    def under(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix + ".")

    return [str(e) for e in edges() if under(e.source, importers) and any(under(e.target, f) for f in forbidden)]


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for edge in edges():
        graph[edge.source].add(edge.target)
    found = [" <-> ".join(c) for c in cycles(graph)]
    assert not found, offenders("import cycles among project modules", found)


def test_no_project_import_inside_a_function() -> None:
    # A lazy import of a third-party library is fine; one of our own modules hides a dependency.
    found = [str(e) for e in edges() if e.local]
    assert not found, offenders("function-local imports of project modules", found)


def test_modules_stay_small() -> None:
    sizes = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    found = [f"{m}: {n} lines" for m, n in sizes.items() if n > MAX_LINES]
    assert not found, offenders(f"modules over {MAX_LINES} lines", found)


def test_router_does_not_import_the_control_plane_or_the_cli() -> None:
    found = breaches("router", ("launcher.control", "launcher.slurm", "launcher.cli"))
    assert not found, offenders("router modules importing launcher.control/slurm/cli", found)


def test_core_imports_nothing_above_it() -> None:
    found = breaches("launcher.core", ("launcher.control", "launcher.slurm", "launcher.cli", "router"))
    assert not found, offenders("launcher.core modules importing control/slurm/cli/router", found)
