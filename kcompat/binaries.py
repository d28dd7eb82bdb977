"""The binaries report: each executable's facts and needs, and the image-level summary.

Plain data built from an image's facts (kcompat.facts), for `inspect --binaries`, `scan`
and the summary in `check`'s report.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kcompat.facts import ExecFacts, ImageFacts
from kcompat.filescan import ScannedFile
from kcompat.formats import Format
from kcompat.needs import BinaryNeeds
from kcompat.scan import Scan
from kcompat.versions import version_key

_GLIBC_VERSION = re.compile(r"GLIBC_(\d+(?:\.\d+)+)$")


def glibc_required(f: ScannedFile) -> str | None:
    """The newest GLIBC_x.y version `f` asks of libc.so.6 (its .gnu.version_r)."""
    if f.elf is None:
        return None
    found = [
        m.group(1)
        for need in f.elf.version_needs
        for v in need.versions
        if (m := _GLIBC_VERSION.match(v))
    ]
    return max(found, key=version_key) if found else None


def _needs_json(n: BinaryNeeds) -> dict[str, Any]:
    return {
        "abi": n.abi,
        "method": n.method,
        "complete": n.complete,
        "abi_floor": n.floor,
        "unresolved_sites": n.unresolved_sites,
        "imports_syscall_function": n.raw_syscall_import,
        "syscalls": [
            {
                "name": s.name,
                "nr": s.nr,
                "since": s.since,
                "via": list(s.via),
                "fallback": s.fallback,
            }
            for s in n.syscalls
        ],
    }


@dataclass(frozen=True)
class _Item:
    """One executable as the report describes it: its file and what is reported of its
    facts."""

    file: ScannedFile
    needs: BinaryNeeds | None
    missing: tuple[str, ...]  # "libfoo.so.1 (needed by /usr/lib/x)"
    interpreter_found: bool | None


def _item(f: ScannedFile, facts: ExecFacts | None, as_root: bool) -> _Item:
    """`as_root` False: nothing is missing and no loader judged."""
    if facts is None:  # a file the analysis describes but does not judge
        return _Item(f, None, (), None)
    missing = tuple(f"{m.library} (needed by {m.needed_by})" for m in facts.missing)
    return _Item(f, facts.needs, missing if as_root else (),
                 facts.interpreter_found if as_root else None)  # fmt: skip


def _items(facts: ImageFacts, as_root: bool) -> list[_Item]:
    """Every executable of the image, by path, with the facts of those the analysis
    judges (an ELF file without an x bit is described, not judged)."""
    return [
        _item(f, facts.executables.get(f.path), as_root)
        for f in sorted(facts.scan.executables(), key=lambda f: f.path)
    ]


def binary_json(b: _Item) -> dict[str, Any]:
    f = b.file
    d: dict[str, Any] = {"path": f.path, "format": f.format.value, "mode": f"{f.mode:04o}"}
    if f.unreadable:
        d["unreadable"] = f.unreadable
    if f.elf:
        e = f.elf
        d.update(
            arch=str(e.arch.platform),
            arch_detail=e.arch.detail,
            type=e.type.value,
            linkage=e.linkage.value,
            interpreter=e.interpreter,
            interpreter_found=b.interpreter_found,
            needed=list(e.needed),
            runpath=list(e.runpath),
            rpath=list(e.rpath),
            missing_libraries=list(b.missing),
            libc=e.libc,
            glibc_required=glibc_required(f),
            abi_tag=e.abi_tag,
            go_version=e.go_version,
            version_needs={n.library: list(n.versions) for n in e.version_needs},
        )
        if b.needs:
            d["needs"] = _needs_json(b.needs)
    if f.pe:
        d.update(os="windows", arch=f.pe.machine, subsystem=f.pe.subsystem, dll=f.pe.dll)
    if f.macho:
        d.update(os="darwin", arch=list(f.macho.cpus), fat=f.macho.fat, filetype=f.macho.filetype)
    if f.script:
        d.update(
            interpreter=f.script.interpreter,
            argument=f.script.argument,
            interpreter_found=b.interpreter_found,
        )
    return d


def summary_json(facts: ImageFacts, as_root: bool = True) -> dict[str, Any]:
    """The image-level summary (in `check`'s report, and cached with the analysis)."""
    return _summary(facts, _items(facts, as_root), as_root)


def _summary(facts: ImageFacts, items: list[_Item], as_root: bool) -> dict[str, Any]:
    formats = Counter(b.file.format.value for b in items)
    arches = Counter(str(b.file.elf.arch.platform) for b in items if b.file.elf)
    tags = [b.file.elf.abi_tag for b in items if b.file.elf and b.file.elf.abi_tag]
    glibc_req = [g for b in items if (g := glibc_required(b.file))]
    newest = [n for b in items if b.needs and (n := b.needs.newest())]
    top = max(newest, key=lambda s: version_key(s.since or "0")) if newest else None
    return {
        "libc": [
            {"family": c.family, "version": c.version, "path": c.path, "evidence": c.evidence}
            for c in facts.libc
        ],
        "interpreters": dict(facts.interpreters) if as_root else {},
        "formats": dict(sorted(formats.items())),
        "architectures": dict(sorted(arches.items())),
        "max_abi_tag": max(tags, key=version_key) if tags else None,
        "max_glibc_required": max(glibc_req, key=version_key) if glibc_req else None,
        "newest_syscall": {"name": top.name, "since": top.since} if top else None,
        "go_versions": sorted(
            {b.file.elf.go_version for b in items if b.file.elf and b.file.elf.go_version}
        ),
        "missing_libraries": {b.file.path: list(b.missing) for b in items if b.missing},
        "missing_interpreters": sorted(b.file.path for b in items if b.interpreter_found is False),
        "unreadable": {b.file.path: b.file.unreadable for b in items if b.file.unreadable},
        "windows_or_macos": sorted(
            b.file.path for b in items if b.file.format in (Format.PE, Format.MACHO)
        ),
    }


def binaries_report(scan: Scan | ImageFacts, as_root: bool = True) -> dict[str, Any]:
    """`inspect --binaries` and `scan`: the summary and every executable. `as_root` False
    (files that are not a root filesystem, e.g. `kcompat scan /usr/bin`): nothing is
    judged missing, as their loaders and interpreters live elsewhere."""
    facts = scan if isinstance(scan, ImageFacts) else ImageFacts.of(scan)
    items = _items(facts, as_root)
    return {
        "summary": _summary(facts, items, as_root),
        "binaries": [binary_json(b) for b in items],
    }
