"""One file, judged on its bytes: what it is (ELF, PE, Mach-O, a `#!` script) and needs.

A file's first bytes decide its format (never its name). ELF files are read whole and
parsed (kcompat.elf); static executables and Go programs have their syscall
instructions recovered (kcompat.disasm, kcompat.goinfo); x86-64 code that calls or
reads the vsyscall page is found (kcompat.vsyscall); programs are searched for the
families' marker strings (kcompat.families); C libraries give their version banner.
PE and Mach-O files are named, `#!` scripts give their interpreter. A file that cannot
be read becomes `unreadable: reason` and the scan goes on. The few small text files the
image-level facts need (users, the loader's search path, the OS name) are kept whole
instead (`keep_text`).

Both ways of scanning use this module: a tree or directory (kcompat.scan) and a layer
stream (kcompat.layerscan).
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from kcompat import disasm, elf, families, formats, goinfo, vsyscall
from kcompat.disasm import SyscallScan
from kcompat.elf import ElfInfo, Linkage
from kcompat.formats import Format, MachOInfo, PEInfo, ScriptInfo
from kcompat.vsyscall import VsyscallUse

# Small text files kept from the pass: the loader's search path and the OS name.
_KEEP = (
    "etc/passwd",  # the image's users and groups, for USER / -u (as runc reads them)
    "etc/group",
    "etc/ld.so.conf",
    "etc/ld.so.conf.d/*",
    "etc/ld-musl-*.path",
    "etc/os-release",
    "usr/lib/os-release",
)
KEEP_MAX = 64 * 1024
_GLIBC_BANNER = re.compile(rb"GNU C Library [^\n\0]{0,120}? version (\d+\.\d+(?:\.\d+)?)")
_MUSL_VERSION = re.compile(rb"\0(1\.\d+\.\d+)\0")
GO_SYSCALL_FUNCS = frozenset(
    {
        "syscall.Syscall", "syscall.Syscall6", "syscall.RawSyscall", "syscall.RawSyscall6",
        "syscall.rawSyscallNoError", "syscall.rawVforkSyscall",
        "golang.org/x/sys/unix.Syscall", "golang.org/x/sys/unix.Syscall6",
        "golang.org/x/sys/unix.RawSyscall", "golang.org/x/sys/unix.RawSyscall6",
        "golang.org/x/sys/unix.SyscallNoError", "golang.org/x/sys/unix.RawSyscallNoError",
    }
)  # fmt: skip


@dataclass(frozen=True)
class ScannedFile:
    path: str  # absolute inside the image: "/usr/bin/ls"
    format: Format
    mode: int
    size: int
    elf: ElfInfo | None = None
    pe: PEInfo | None = None
    macho: MachOInfo | None = None
    script: ScriptInfo | None = None
    syscalls: SyscallScan | None = None  # static executables only
    unreadable: str | None = None
    vsyscall: VsyscallUse | None = None  # x86-64 code that calls or reads the vsyscall page
    markers: tuple[str, ...] = ()  # kcompat.families marker strings found in an ELF file

    @property
    def executable(self) -> bool:
        return bool(self.mode & 0o111)



_KEEP_RE = re.compile("|".join(fnmatch.translate(p) for p in _KEEP))


def keep_text(path: str) -> bool:
    """Whether the scan keeps this file's text (when it is at most KEEP_MAX bytes)."""
    return _KEEP_RE.match(path.lstrip("/")) is not None


def scan_file(
    path: str,
    mode: int,
    size: int,
    head: bytes,
    read_rest: Callable[[], bytes],
    read_all: Callable[[], bytes] | None = None,
) -> tuple[ScannedFile, str | None]:
    """One file, given its first bytes; `read_rest` gives the remaining bytes if needed
    (or `read_all` the whole file, head included, when the caller can do it in one copy).

    Returns the scanned file and, for a C library, its version banner if one was found."""
    fmt = formats.detect(head)
    base = ScannedFile(path, fmt, mode, size)
    banner = None
    whole = read_all or (lambda: head + read_rest())
    try:
        if fmt is Format.ELF:
            data = whole()
            info = elf.read_elf(data, with_code=True)
            syscalls = None
            if info.linkage in (Linkage.STATIC, Linkage.STATIC_PIE) or info.go_version:
                funcs = goinfo.go_functions(data, GO_SYSCALL_FUNCS) if info.go_version else None
                syscalls = disasm.scan_code(info.arch.abi or "", info.code, funcs)
            if info.soname == "libc.so.6":
                m = _GLIBC_BANNER.search(data)
                banner = m.group(1).decode() if m else None
            elif _is_musl_libc(path):
                m = _MUSL_VERSION.search(data)
                banner = m.group(1).decode() if m else None
            legacy = (
                vsyscall.find(info.code) if info.arch.platform.architecture == "amd64" else None
            )
            found = _markers(data) if info.type in _PROGRAMS else ()
            scanned = replace(
                base,
                elf=replace(info, code=()),
                syscalls=syscalls,
                vsyscall=legacy,
                markers=found,
            )
            return scanned, banner
        if fmt is Format.SCRIPT:  # kept whatever its mode: exec is judged by the rules
            return replace(base, script=formats.read_script(head)), None
        if fmt is Format.PE:
            data = whole()
            return replace(base, pe=formats.read_pe(data)), None
        if fmt is Format.MACHO:
            data = whole()
            return replace(base, macho=formats.read_macho(data)), None
    except elf.UnreadableError as e:
        return replace(base, unreadable=str(e)), None
    except formats.NotThisFormat as e:
        if fmt is Format.PE:
            return replace(base, format=Format.OTHER), None  # a DOS stub or "MZ" text
        return replace(base, unreadable=str(e)), None
    return base, None


_PROGRAMS = (elf.ElfType.EXEC, elf.ElfType.PIE)  # libraries are known by their soname
_MARKER_SPAN = 256 << 20


def _markers(data: Any) -> tuple[str, ...]:
    """The families' marker strings present in a program's file, searched up to its
    section header table (the end of what the linker wrote: a core dump or a sparse
    tail past it is not read), at most 256 MiB."""
    head = bytes(data[:64])
    end = min(len(data), _MARKER_SPAN)
    if len(head) >= 64:
        e = "<" if head[5] == 1 else ">"
        shoff = struct.unpack_from(e + ("Q" if head[4] == 2 else "I"), head,
                                   0x28 if head[4] == 2 else 0x20)[0]  # fmt: skip
        if 0 < shoff < end:
            end = shoff
    return tuple(m.decode() for m in families.markers() if data.find(m, 0, end) != -1)


def _is_musl_libc(path: str) -> bool:
    """musl's one file (loader and libc): ld-musl-ARCH.so.1 on Alpine, libc.so under
    /lib/ARCH-linux-musl on Debian, libc.musl-ARCH.so.1 as Alpine's link name."""
    name = posixpath.basename(path)
    return name.startswith(("ld-musl-", "libc.musl-")) or (
        name == "libc.so" and posixpath.dirname(path).endswith("-linux-musl")
    )
