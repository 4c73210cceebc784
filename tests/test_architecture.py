"""docs/architecture.md stays true: no import cycle, no import from a lower layer into a higher
one, and every module placed in a layer (imports inside functions count).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
PACKAGES = ((ROOT / "src", "teachlab"), (ROOT, "pages"))


def layers(doc: str) -> dict[str, int]:
    """The doc's layer table: each named package or module and its layer number."""
    found: dict[str, int] = {}
    for line in doc.splitlines():
        match = re.match(r"\|\s*(\d+)\s[^|]*\|([^|]*)\|", line)
        if match:
            for name in re.findall(r"`([\w.]+)`", match.group(2)):
                found[name] = int(match.group(1))
    return found


def modules() -> dict[str, Path]:
    found = {}
    for base, package in PACKAGES:
        for path in (base / package).rglob("*.py"):
            if "migrations" in path.parts:  # Alembic loads these by path
                continue
            name = ".".join(path.relative_to(base).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of the project's own modules, wherever in the file they are."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    base = ".".join([*parts, base] if base else parts)
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                # A package's __init__ gathering its own modules is not a cycle worth counting.
                inside = path.name == "__init__.py" and name.startswith(mod + ".")
                if name and name != mod and not inside:
                    graph[mod].add(name)
    return graph


def layer_of(mod: str, table: dict[str, int]) -> int | None:
    """The layer of the longest table entry that is the module or a package above it."""
    parts = mod.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return table[".".join(parts[:n])]
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


@pytest.fixture(scope="module")
def table() -> dict[str, int]:
    found = layers(DOC.read_text(encoding="utf-8"))
    assert len(found) > 10, "docs/architecture.md lost its layer table"
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return imports(modules())


def test_every_module_has_a_layer(table: dict[str, int], graph: dict[str, set[str]]) -> None:
    unplaced = sorted(m for m in graph if layer_of(m, table) is None)
    assert not unplaced, f"add these to the layer table in docs/architecture.md: {unplaced}"


def test_no_module_imports_a_layer_above_it(
    table: dict[str, int], graph: dict[str, set[str]]
) -> None:
    upward = [
        f"{mod} (layer {layer_of(mod, table)}) imports {dep} (layer {layer_of(dep, table)})"
        for mod, deps in sorted(graph.items())
        for dep in sorted(deps)
        if (layer_of(dep, table) or 0) > (layer_of(mod, table) or 0)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_the_checks_catch_what_they_are_for() -> None:
    """The same functions on a small made-up graph: a cycle and an upward import are found."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    table = layers("| 1 top | `d` | |\n| 0 base | `a`, `b`, `c`, `e` | |")
    assert table == {"d": 1, "a": 0, "b": 0, "c": 0, "e": 0}
    assert layer_of("a.sub", table) == 0 and layer_of("x", table) is None
    upward = [(m, d) for m, ds in graph.items() for d in ds if table[d] > table[m]]
    assert upward == []
    graph["e"] = {"d"}
    assert [(m, d) for m, ds in graph.items() for d in ds if table[d] > table[m]] == [("e", "d")]
