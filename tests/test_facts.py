"""Facts first, then judgement, downhill (issue 19): each executable's facts are drawn
once, with the image's analysis, and cached with it; the rules, the binaries report and
`run` only read them. The rules package is read by its AST: it reaches back neither
for kcompat.needs.needs_of nor for the Scan's loader walk or its C library search."""

from __future__ import annotations

import ast
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kcompat import needs
from kcompat.analysis import Analysis, analyse
from kcompat.facts import ImageFacts
from kcompat.filescan import ScannedFile
from kcompat.pull import open_image
from kcompat.rules import Verdict, check
from kcompat.scan import MissingLibrary, Scan
from kcompat.target import described
from tests.conftest import Binaries, Fixtures
from tests.memscan import LOADER, config, elf, facts_of, libc, scan_of

RULES = Path(__file__).resolve().parent.parent / "kcompat" / "rules"
# what drawing the facts does, and the rules must not do again
REACH_BACK = {"needs_of", "load", "library_closure", "missing_libraries", "libc", "interpreters",
              "script_interpreter_found", "find_library", "search_path"}  # fmt: skip


def reach_back(source: str) -> set[str]:
    """The names of REACH_BACK that `source` imports, names, or calls as a method."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == "kcompat.needs":
            found.update(a.name for a in node.names if a.name in REACH_BACK)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in REACH_BACK):  # fmt: skip
            found.add(node.func.attr)
        elif isinstance(node, ast.Name) and node.id == "needs_of":
            found.add(node.id)
    return found


def test_reach_back_is_found() -> None:
    assert reach_back("from kcompat.needs import SyscallNeed, needs_of") == {"needs_of"}
    assert reach_back("def f(scan):\n    return scan.library_closure(x)\n") == {
        "library_closure"
    }
    assert reach_back("v = {c.family for c in scan.libc()}") == {"libc"}
    assert reach_back("libs = facts.libraries_of(binary)") == set()
    assert reach_back("family = binary.elf.libc") == set()  # a fact, not the search


@pytest.mark.parametrize("path", sorted(RULES.glob("*.py")), ids=lambda p: p.name)
def test_rules_only_read_the_facts(path: Path) -> None:
    assert reach_back(path.read_text()) == set(), f"{path.name} draws facts itself"


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, list[str]]]:
    """Every loader walk (Scan.load) and needs reading (needs_of), by file."""
    calls: dict[str, list[str]] = {"load": [], "needs_of": []}
    real_load, real_needs = Scan.load, needs.needs_of

    def load(self: Scan, exe: ScannedFile) -> Any:
        calls["load"].append(exe.path)
        return real_load(self, exe)

    def needs_of(scan: Scan, f: ScannedFile, *args: Any) -> Any:
        calls["needs_of"].append(f.path)
        return real_needs(scan, f, *args)

    monkeypatch.setattr(Scan, "load", load)
    monkeypatch.setattr("kcompat.facts.needs_of", needs_of)
    yield calls


def test_each_executable_drawn_once_then_only_read(counted: dict[str, list[str]]) -> None:
    lib = elf("/usr/lib/x86_64-linux-gnu/libfoo.so.1", soname="libfoo.so.1",
              imports=("getrandom",))  # fmt: skip
    app = elf("/usr/bin/app", imports=("puts",), needed=("libfoo.so.1", "libc.so.6"))
    gone = elf("/usr/bin/gone", needed=("libbar.so.2", "libc.so.6"))
    static = elf("/usr/bin/static", interpreter=None, syscalls=("read", "getrandom"))
    facts = facts_of(app, gone, static, lib, *libc())
    assert sorted(counted["load"]) == ["/usr/bin/app", "/usr/bin/gone"]  # a loader each
    assert sorted(counted["needs_of"]) == sorted(facts.executables)  # once each
    mine = facts.executables["/usr/bin/app"]
    assert mine.libraries == ("/usr/lib/x86_64-linux-gnu/libfoo.so.1",
                              "/usr/lib/x86_64-linux-gnu/libc.so.6")  # fmt: skip
    assert (mine.interpreter, mine.interpreter_found) == (LOADER, True)
    assert (mine.libc, mine.libc_version) == ("glibc", "2.36")
    assert mine.needs is not None
    (getrandom,) = [s for s in mine.needs.syscalls if s.name == "getrandom"]
    assert "imports getrandom@GLIBC_2.36 (in /usr/lib/x86_64-linux-gnu/libfoo.so.1)" in (
        getrandom.via
    )
    assert facts.executables["/usr/bin/gone"].missing == (
        MissingLibrary("libbar.so.2", "/usr/bin/gone"),
    )
    assert facts.executables["/usr/bin/static"].libraries == ()

    counted["load"].clear()
    counted["needs_of"].clear()
    for program, kernel in (("/usr/bin/app", "3.10"), ("/usr/bin/gone", "6.1"),
                            ("/usr/bin/static", "3.10")):  # fmt: skip
        result = check(facts, config(program), described(kernel, "amd64"), None)
        assert result.verdict in (Verdict.UNCERTAIN, Verdict.INCOMPATIBLE)
    assert counted == {"load": [], "needs_of": []}  # the rules read, they draw nothing


def test_a_file_outside_the_set_is_drawn_when_asked(counted: dict[str, list[str]]) -> None:
    """An ELF file without an x bit is described by the report, not judged with the
    analysis; asked for, its facts are drawn then, once, and not pickled."""
    plain = elf("/usr/bin/plain", imports=("getrandom",))
    quiet = ScannedFile(plain.path.replace("plain", "quiet"), plain.format, 0o644, plain.size,
                        plain.elf)  # fmt: skip
    facts = ImageFacts.of(scan_of(plain, quiet, *libc()))
    assert "/usr/bin/quiet" not in facts.executables
    drawn = facts.facts_of("/usr/bin/quiet")
    twin = facts.executables["/usr/bin/plain"].needs
    assert drawn is not None and drawn.needs is not None and twin is not None
    assert [(s.name, s.via) for s in drawn.needs.syscalls] == [
        (s.name, s.via) for s in twin.syscalls
    ]
    assert facts.facts_of("/usr/bin/quiet") is drawn  # drawn once
    assert counted["load"].count("/usr/bin/quiet") == 1
    again = pickle.loads(pickle.dumps(facts))
    assert again.executables == facts.executables and again._later == {}


@pytest.mark.integration
def test_the_analysis_cache_holds_the_facts(
    images: Fixtures, _private_cache: Path, counted: dict[str, list[str]]
) -> None:
    """The images cache holds each executable's facts; a second analysis reads them and
    the rules draw nothing."""
    with open_image(images.oci("glibc-amd64")) as opened:
        first = analyse(opened)
    (entry,) = (_private_cache / "images").rglob("*/sha256/*")
    cached = pickle.loads(entry.read_bytes())
    assert isinstance(cached, Analysis) and cached.summary == first.summary
    assert cached.facts.executables == first.facts.executables
    dynamic = [x for x in cached.facts.executables.values() if x.libraries]
    assert dynamic and all(x.needs is not None and x.interpreter_found for x in dynamic)

    counted["load"].clear()
    counted["needs_of"].clear()
    with open_image(images.oci("glibc-amd64")) as opened:
        again = analyse(opened)
        result = check(again.facts, opened.image.config, described("3.10"), None)
    assert result.entrypoint.binary is not None and result.verdict in Verdict
    assert counted == {"load": [], "needs_of": []}


@pytest.mark.integration
def test_facts_are_what_the_rules_drew_before(binaries: Binaries) -> None:
    """For every executable of a Debian image: the facts drawn with the analysis (one
    memo for the image) are what a fresh loader walk and needs reading give alone."""
    from kcompat.analysis import scan_image

    with open_image(binaries.bullseye) as opened:
        scan = scan_image(opened)
    facts = ImageFacts.of(scan)
    glibc = next(c.version for c in scan.libc() if c.family == "glibc")
    assert facts.executables
    for path, mine in facts.executables.items():
        f = scan.files[path]
        if f.elf is None:
            continue
        closure, missing = scan.load(f) if f.elf.interpreter else ([], [])
        assert mine.libraries == tuple(lib.path for lib in closure), path
        assert list(mine.missing) == (missing if mine.interpreter_found else []), path
        alone = needs.needs_of(scan, f, glibc if f.elf.libc == "glibc" else None)
        assert mine.needs == alone, path
