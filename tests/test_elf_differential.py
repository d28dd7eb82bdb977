"""kcompat's own ELF decoder held against pyelftools, file by file.

kcompat.elf reads ELF files by hand for speed (its docstring says why it left
pyelftools); here pyelftools, a general ELF library, reads the same files and the two
must agree on everything kcompat reads: class, byte order and machine, e_type and entry,
the PT_INTERP path, DT_NEEDED, DT_SONAME, DT_RPATH and DT_RUNPATH, the GNU version needs
and definitions, the ABI-tag note, the undefined dynamic symbols with the versions
.gnu.version binds them to, and Go: a file has Go's build-id note (or .go.buildinfo) if
and only if kcompat found a Go version, and that version is the one .go.buildinfo
holds. The version-index-to-name map is built here from pyelftools' parse of the
version sections (glibc's elf.h: vna_other, vd_ndx), not from kcompat's.

The files: every ELF file in the layers of the fixture images
(tests/fixtures/build_images.py: busybox for four arches, glibc and its gconv modules
for amd64 and arm64, dash), the real binaries of tests/fixtures/build_binaries.py, and
the tiny files of tests/fixtures/tiny_elf/. Where the two disagree, binutils' readelf is
the referee (`readelf -lhdnV --dyn-syms -W FILE`): the failure names the file and the
fact so it can be run.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kcompat import elf
from kcompat.layers import VerifyingReader, iter_tar
from tests.conftest import Binaries, Fixtures

pytestmark = pytest.mark.integration

elftools = pytest.importorskip(
    "elftools", reason="pyelftools is not installed (a dev dependency: pip install -e '.[dev]')"
)
from elftools.common.exceptions import ELFError  # noqa: E402
from elftools.elf.dynamic import DynamicSection, DynamicSegment  # noqa: E402
from elftools.elf.elffile import ELFFile  # noqa: E402
from elftools.elf.enums import ENUM_E_MACHINE  # noqa: E402
from elftools.elf.gnuversions import (  # noqa: E402
    GNUVerDefSection,
    GNUVerNeedSection,
    GNUVerSymSection,
)
from elftools.elf.sections import NoteSection, SymbolTableSection  # noqa: E402
from elftools.elf.segments import InterpSegment, NoteSegment  # noqa: E402

TINY = Path(__file__).resolve().parent / "fixtures" / "tiny_elf"
_E_TYPES = {
    elf.ElfType.EXEC: "ET_EXEC",
    elf.ElfType.PIE: "ET_DYN",
    elf.ElfType.SHARED: "ET_DYN",
    elf.ElfType.RELOCATABLE: "ET_REL",
    elf.ElfType.CORE: "ET_CORE",
}
_GO_VERSION = re.compile(rb"go1\.[0-9]+(?:\.[0-9]+)?(?:(?:rc|beta)[0-9]+)?")


def _ours(data: bytes) -> dict[str, Any]:
    i = elf.read_elf(data)
    return {
        "arch": (i.arch.machine, i.arch.bits, i.arch.endian),
        "e_type": _E_TYPES.get(i.type),
        "entry": i.entry,
        "interpreter": i.interpreter,
        "needed": i.needed,
        "soname": i.soname,
        "rpath": i.rpath,
        "runpath": i.runpath,
        "version_needs": tuple((n.library, n.versions) for n in i.version_needs),
        "version_defs": i.version_defs,
        "abi_tag": i.abi_tag,
        "undefined": tuple((s.name, s.version) for s in i.undefined),
        "go": i.go_version,
    }


def _abi_tag(notes: Iterator[Any]) -> tuple[bool, str | None]:
    """(found, tag) from the first GNU ABI-tag note; the tag None for an OS not Linux."""
    for n in notes:
        if n["n_type"] == "NT_GNU_ABI_TAG" and n["n_name"] == "GNU":
            d = n["n_desc"]
            if d["abi_os"] != "ELF_NOTE_OS_LINUX":
                return True, None
            return True, f"{d['abi_major']}.{d['abi_minor']}.{d['abi_tiny']}"
    return False, None


def _theirs(data: bytes) -> dict[str, Any]:
    ef = ELFFile(io.BytesIO(data))
    h = ef.header
    machine = h["e_machine"]
    out: dict[str, Any] = {
        "arch": (
            ENUM_E_MACHINE[machine] if isinstance(machine, str) else machine,
            ef.elfclass,
            "little" if ef.little_endian else "big",
        ),
        "e_type": h["e_type"],
        "entry": h["e_entry"],
    }
    segments = list(ef.iter_segments())
    sections = list(ef.iter_sections())
    out["interpreter"] = next(
        (s.get_interp_name() for s in segments if isinstance(s, InterpSegment)), None
    )
    # the .dynamic section, or PT_DYNAMIC when the file has no section headers
    dyn = next((s for s in sections if isinstance(s, DynamicSection)), None) or next(
        (s for s in segments if isinstance(s, DynamicSegment)), None
    )
    strings: dict[str, list[str]] = {
        "DT_NEEDED": [],
        "DT_SONAME": [],
        "DT_RPATH": [],
        "DT_RUNPATH": [],
    }
    for d in dyn.iter_tags() if dyn is not None else ():
        if d.entry.d_tag in strings:  # DynamicTag sets .needed, .soname, .rpath, .runpath
            strings[d.entry.d_tag].append(str(getattr(d, d.entry.d_tag[3:].lower())))

    def paths(tag: str) -> tuple[str, ...]:
        return tuple(p for v in strings[tag] for p in v.split(":") if p)

    out.update(
        needed=tuple(strings["DT_NEEDED"]),
        soname=strings["DT_SONAME"][0] if strings["DT_SONAME"] else None,
        rpath=paths("DT_RPATH"),
        runpath=paths("DT_RUNPATH"),
    )
    needs: list[tuple[str, tuple[str, ...]]] = []
    defs: list[str] = []
    index: dict[int, str] = {}
    for s in sections:
        if isinstance(s, GNUVerNeedSection):
            for vn, auxes in s.iter_versions():
                names = []
                for a in auxes:
                    names.append(a.name)
                    index[a["vna_other"] & 0x7FFF] = a.name
                needs.append((vn.name or "", tuple(names)))
        elif isinstance(s, GNUVerDefSection):
            for vd, vd_auxes in s.iter_versions():
                first = next(iter(vd_auxes), None)
                if first is not None:
                    index[vd["vd_ndx"]] = first.name
                    if not vd["vd_flags"] & 1:  # VER_FLG_BASE: the file's own name
                        defs.append(first.name)
    out.update(version_needs=tuple(needs), version_defs=tuple(defs))
    found, tag = False, None
    for seg in segments:
        if isinstance(seg, NoteSegment):
            found, tag = _abi_tag(seg.iter_notes())
            if found:
                break
    if not found:
        note = ef.get_section_by_name(".note.ABI-tag")
        if isinstance(note, NoteSection):
            found, tag = _abi_tag(note.iter_notes())
    out["abi_tag"] = tag
    undefined: list[tuple[str, str | None]] = []
    dynsym = ef.get_section_by_name(".dynsym")
    versym = next((s for s in sections if isinstance(s, GNUVerSymSection)), None)
    if isinstance(dynsym, SymbolTableSection):
        for i, sym in enumerate(dynsym.iter_symbols()):
            if i == 0 or sym["st_shndx"] != "SHN_UNDEF" or not sym.name:
                continue
            version = None
            if versym is not None and i < versym.num_symbols():
                ndx = versym.get_symbol(i)["ndx"]
                if isinstance(ndx, int) and ndx & 0x7FFF > 1:  # 0 local, 1 global: none
                    version = index.get(ndx & 0x7FFF)
            undefined.append((sym.name, version))
    out["undefined"] = tuple(undefined)
    out["go"] = _go(ef, segments, sections, data)
    return out


def _go(ef: ELFFile, segments: list[Any], sections: list[Any], data: bytes) -> object:
    """What kcompat's go_version should be, from Go's own marks: None for a file with
    neither Go's build-id note (name "Go", type 4: cmd/link's ELF note) nor a
    .go.buildinfo section; else the version .go.buildinfo holds inline (Go 1.18+), or,
    before 1.18, where it lies behind a pointer, a check that kcompat's is in the file."""
    notes = [n for s in segments if isinstance(s, NoteSegment) for n in s.iter_notes()]
    notes += [n for s in sections if isinstance(s, NoteSection) for n in s.iter_notes()]
    # pyelftools names note types by the GNU owner's table whatever the owner: Go's 4
    # (NT_GO_BUILD_ID, src/cmd/link/internal/ld/elf.go) comes back as NT_GNU_GOLD_VERSION
    has_note = any(n["n_name"] == "Go" and n["n_type"] in (4, "NT_GNU_GOLD_VERSION") for n in notes)
    buildinfo = ef.get_section_by_name(".go.buildinfo")
    if not has_note and buildinfo is None:
        return None
    if buildinfo is not None:
        m = _GO_VERSION.search(buildinfo.data())
        if m is not None:
            return m.group().decode()
    return _InFile(data)


class _InFile:
    """Equal to a Go version string that occurs in the file's bytes."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.encode() in self.data

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<a Go version found in the file>"


# Facts pyelftools gets wrong, each checked against readelf instead
_PYELFTOOLS_WRONG = {
    # elftools/elf/notes.py pads every note to 4 bytes; in a PT_NOTE of p_align 8, glibc
    # (elf/dl-load.c open_verify) and readelf pad to 8: pyelftools reads the second
    # note 8 bytes early and finds no ABI tag
    ("x86_64-notes8", "abi_tag"),
}
_READELF_ABI = re.compile(r"OS: Linux, ABI: ([0-9.]+)")


def _readelf_abi_tag(data: bytes, tmp: Path) -> str | None:
    if shutil.which("readelf") is None:
        pytest.skip("needs binutils' readelf, the referee")
    path = tmp / "elf"
    path.write_bytes(data)
    out = subprocess.run(["readelf", "-nW", str(path)], capture_output=True, text=True, check=True)
    m = _READELF_ABI.search(out.stdout)
    return m.group(1) if m else None


def _describe(mine: object, theirs: object) -> str:
    """Two values that differ, shortened: for sequences, what only one side has."""
    if isinstance(mine, tuple) and isinstance(theirs, tuple):
        only_ours = [x for x in mine if x not in theirs]
        only_theirs = [x for x in theirs if x not in mine]
        if only_ours or only_theirs:
            return f"only kcompat {only_ours[:8]}, only pyelftools {only_theirs[:8]}"
        return f"the same {len(mine)} items in another order"
    return f"kcompat {mine!s:.300}, pyelftools {theirs!s:.300}"


def _compare(files: dict[str, tuple[str, bytes]], tmp: Path) -> list[str]:
    """Every disagreement, as 'FILE: FACT kcompat X, pyelftools Y'."""
    problems = []
    for name, data in sorted(files.values()):
        try:
            ours: dict[str, Any] | str = _ours(data)
        except elf.UnreadableError as e:
            ours = f"unreadable: {e}"
        try:
            theirs: dict[str, Any] | str = _theirs(data)
        except (ELFError, ValueError, KeyError, IndexError) as e:
            theirs = f"unreadable: {type(e).__name__}: {e}"
        if isinstance(ours, str) or isinstance(theirs, str):
            if isinstance(ours, str) != isinstance(theirs, str):
                problems.append(f"{name}: kcompat {str(ours)[:200]}, pyelftools {theirs!s:.200}")
            continue
        for fact, mine in ours.items():
            if (name, fact) in _PYELFTOOLS_WRONG:
                assert fact == "abi_tag"
                if mine != (referee := _readelf_abi_tag(data, tmp)):
                    problems.append(f"{name}: {fact} kcompat {mine}, readelf {referee}")
            elif mine != theirs[fact]:
                problems.append(f"{name}: {fact} {_describe(mine, theirs[fact])}")
    return problems


def _assert_agree(files: dict[str, tuple[str, bytes]], at_least: int, tmp: Path) -> None:
    assert len(files) >= at_least, f"only {len(files)} ELF files found"
    problems = _compare(files, tmp)
    assert not problems, (
        f"{len(problems)} disagreements (referee: readelf -lhdnV --dyn-syms -W FILE):\n"
        + "\n".join(problems[:40])
    )


def _add(files: dict[str, tuple[str, bytes]], name: str, data: bytes) -> None:
    if data[:4] == elf.ELF_MAGIC:
        files.setdefault(hashlib.sha256(data).hexdigest(), (name, data))


def _layers(layout: Path) -> set[tuple[str, int]]:
    """(digest, size) of every layer of every image in an OCI layout, through nested
    indexes."""

    def blob(digest: str) -> Path:
        return layout / "blobs" / digest.replace(":", "/", 1)

    found: set[tuple[str, int]] = set()
    todo = list(json.loads((layout / "index.json").read_text())["manifests"])
    seen: set[str] = set()
    while todo:
        desc = todo.pop()
        if desc["digest"] in seen:
            continue
        seen.add(desc["digest"])
        doc = json.loads(blob(desc["digest"]).read_text())
        todo += doc.get("manifests", [])
        found |= {(layer["digest"], layer["size"]) for layer in doc.get("layers", [])}
    return found


def test_fixture_images_agree(images: Fixtures, tmp_path: Path) -> None:
    """Every ELF file in every layer of the fixture images, each distinct file once."""
    files: dict[str, tuple[str, bytes]] = {}
    for digest, size in sorted(_layers(images.layout)):
        raw = (images.layout / "blobs" / digest.replace(":", "/", 1)).open("rb")
        reader = VerifyingReader(raw, digest, size, f"layer {digest}")
        for member in iter_tar(reader, f"layer {digest}", digest=digest):
            if member.info.isfile() and member.info.size >= 52:
                with member.open() as f:
                    _add(files, f"{digest[7:19]}:{member.info.name}", f.read())
    _assert_agree(files, at_least=100, tmp=tmp_path)


def test_fixture_binaries_agree(binaries: Binaries, tmp_path: Path) -> None:
    """The real binaries of build_binaries.py: Go programs (fzf) on five arches, busybox
    on eight, a systemd, glibc's arm64 libc and loader, a Node addon."""
    files: dict[str, tuple[str, bytes]] = {}
    for path in sorted((binaries.root / "bin").iterdir()):
        if path.is_file():
            _add(files, path.name, path.read_bytes())
    _assert_agree(files, at_least=10, tmp=tmp_path)


def test_tiny_files_agree(tmp_path: Path) -> None:
    files: dict[str, tuple[str, bytes]] = {}
    for path in sorted(TINY.iterdir()):
        _add(files, path.name, path.read_bytes())
    _assert_agree(files, at_least=14, tmp=tmp_path)
