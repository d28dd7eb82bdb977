"""The house plan (issue 19): kcompat's modules import downhill, with no circle, and none
is over 600 lines. The import graph is read from the source's AST, so it holds every
import the code can make, at module level or inside a function, whether or not a test
exercises it; only imports under `if TYPE_CHECKING:` (annotations, never executed) are
left out."""

from __future__ import annotations

import ast
from collections.abc import Collection
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "kcompat"
MAX_LINES = 600


def modules() -> dict[str, Path]:
    """kcompat's modules by dotted name (a package by its own name, for __init__.py)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, name: str, is_package: bool, known: Collection[str]) -> set[str]:
    """The modules of `known` that the module `name` imports: `import kcompat.x`, `from
    kcompat.x import y` (kcompat.x.y when that is a module, else kcompat.x), `from . import
    y` and other relative imports; at any depth, except under `if TYPE_CHECKING:`."""
    found: set[str] = set()
    todo: list[ast.AST] = [ast.parse(source)]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                found.add(sub if sub in known else module)
        todo.extend(ast.iter_child_nodes(node))
    return {m for m in found if m in known and m != name}


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", mods)
        for name, path in mods.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the path a -> b -> ... -> a, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


KNOWN = {"k", "k.a", "k.b", "k.p", "k.p.x", "k.p.y"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import k.a", {"k.a"}),
        ("from k.a import thing", {"k.a"}),
        ("from k import a, b", {"k.a", "k.b"}),
        ("from k import version", {"k"}),
        ("def f():\n    from k.a import thing\n", {"k.a"}),  # a function-level import
        ("class C:\n    def m(self):\n        import k.b\n", {"k.b"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from k.a import T\n", set()),
        ("import typing\nif typing.TYPE_CHECKING:\n  import k.a\nelse:\n  import k.b\n", {"k.b"}),
        ("try:\n    import k.a\nexcept ImportError:\n    pass\n", {"k.a"}),
        ("import os, json", set()),
    ],
)
def test_imports_of(source: str, expected: set[str]) -> None:
    assert imports_of(source, "k.z", False, KNOWN) == expected


def test_relative_imports() -> None:
    assert imports_of("from . import y", "k.p.x", False, KNOWN) == {"k.p.y"}
    assert imports_of("from .y import t", "k.p.x", False, KNOWN) == {"k.p.y"}
    assert imports_of("from ..a import t", "k.p.x", False, KNOWN) == {"k.a"}
    assert imports_of("from . import x", "k.p", True, KNOWN) == {"k.p.x"}
    assert imports_of("from .p import y", "k", True, KNOWN) == {"k.p.y"}


def test_the_graph_is_kcompats() -> None:
    graph = import_graph()
    assert "kcompat.cli" in graph["kcompat.__main__"]
    assert "kcompat.errors" in graph["kcompat.image"]  # module level
    assert "kcompat.registry" in graph["kcompat.sources"]  # only inside a function
    assert "kcompat.rules.findings" in graph["kcompat.rules"]


def test_find_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(modules()))
def test_no_module_over_600_lines(name: str) -> None:
    path = modules()[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {lines} lines"
