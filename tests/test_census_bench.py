"""bench/census.py loads each image's analysis once for all its predictions by replacing
the `analyse` that `check` calls: that must stay the function check really calls (when
check.py began importing it lazily from kcompat.analysis, the census patched a name
check no longer had and ended in an AttributeError after 25 minutes of runs)."""

from __future__ import annotations

import ast
from pathlib import Path
from types import SimpleNamespace

import pytest

from kcompat import check

CENSUS = Path(__file__).resolve().parents[1] / "bench" / "census.py"


class _Called(Exception):
    pass


def test_check_calls_the_analyse_of_kcompat_analysis(monkeypatch: pytest.MonkeyPatch) -> None:
    import kcompat.analysis

    def fake(opened: object, store: object = None) -> None:
        raise _Called

    monkeypatch.setattr(kcompat.analysis, "analyse", fake)
    opened = SimpleNamespace(image=SimpleNamespace(config=None))
    with pytest.raises(_Called):
        check._judged(opened, None, None, None)  # type: ignore[arg-type]


def test_the_census_replaces_that_analyse() -> None:
    tree = ast.parse(CENSUS.read_text())
    patched = {
        (call.args[0].id, call.args[1].value)
        for call in ast.walk(tree)
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "setattr"
        and isinstance(call.args[0], ast.Name) and isinstance(call.args[1], ast.Constant)
    }  # fmt: skip
    aliases = {
        a.asname: a.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for a in node.names
        if a.asname
    }
    assert {(aliases.get(name, name), attr) for name, attr in patched} >= {
        ("kcompat.analysis", "analyse")
    }
