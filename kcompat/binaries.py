"""The binaries report: each executable's facts and needs, and the image-level summary.

Built from a Scan (kcompat.scan) as plain data, for `inspect --binaries` and for the
rules that judge an image.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from kcompat.filescan import ScannedFile
from kcompat.formats import Format
from kcompat.needs import BinaryNeeds, Memo, needs_of
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


@dataclass(frozen=True)
class BinaryFacts:
    file: ScannedFile
    needs: BinaryNeeds | None
    missing: tuple[str, ...]  # "libfoo.so.1 (needed by /usr/lib/x)"
    interpreter_found: bool | None


def facts(scan: Scan, as_root: bool = True) -> list[BinaryFacts]:
    """Each executable's facts; `as_root` False (files that are not a root filesystem,
    e.g. `kcompat scan /usr/bin`): nothing is judged missing, as their loaders and
    interpreters live elsewhere."""
    glibc = next((c.version for c in scan.libc() if c.family == "glibc"), None)
    out = []
    memo: Memo = {}
    for f in sorted(scan.executables(), key=lambda f: f.path):
        needs = None
        missing: tuple[str, ...] = ()
        interp_found: bool | None = None
        if f.elf and f.executable:
            libraries, not_found = scan.load(f)  # one loader walk for both uses
            needs = needs_of(scan, f, glibc, libraries, memo)
            if f.elf.interpreter:
                interp_found = scan.tree.resolve(f.elf.interpreter) in scan.files
                if interp_found:
                    missing = tuple(f"{m.library} (needed by {m.needed_by})" for m in not_found)
        elif f.script is not None:
            interp_found = scan.script_interpreter_found(f)
        if not as_root:
            missing, interp_found = (), None
        out.append(BinaryFacts(f, needs, missing, interp_found))
    return out


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


def binary_json(b: BinaryFacts) -> dict[str, Any]:
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


def summary_json(scan: Scan, items: list[BinaryFacts], as_root: bool = True) -> dict[str, Any]:
    formats = Counter(b.file.format.value for b in items)
    arches = Counter(str(b.file.elf.arch.platform) for b in items if b.file.elf)
    tags = [b.file.elf.abi_tag for b in items if b.file.elf and b.file.elf.abi_tag]
    glibc_req = [g for b in items if (g := glibc_required(b.file))]
    newest = [n for b in items if b.needs and (n := b.needs.newest())]
    top = max(newest, key=lambda s: version_key(s.since or "0")) if newest else None
    return {
        "libc": [
            {"family": c.family, "version": c.version, "path": c.path, "evidence": c.evidence}
            for c in scan.libc()
        ],
        "interpreters": scan.interpreters() if as_root else {},
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


def binaries_report(scan: Scan, as_root: bool = True) -> dict[str, Any]:
    items = facts(scan, as_root)
    return {
        "summary": summary_json(scan, items, as_root),
        "binaries": [binary_json(b) for b in items],
    }
