"""Build kcompat scans in memory, and their facts (kcompat.facts), for offline unit tests
of the rules.

The facts are the ones kcompat.elf and kcompat.disasm would read off real files; the
integration tests hold the same rules against real binaries from Debian packages.
"""

from __future__ import annotations

from collections.abc import Iterable

from kcompat.disasm import SyscallScan
from kcompat.elf import ElfArch, ElfInfo, ElfType, Linkage, Symbol, VersionNeed
from kcompat.facts import ImageFacts
from kcompat.filescan import ScannedFile
from kcompat.formats import Format
from kcompat.image import ImageConfig
from kcompat.layers import FileKind
from kcompat.platform import Platform
from kcompat.scan import Node, Scan, Tree
from kcompat.syscalls import table

AMD64 = ElfArch(Platform("linux", "amd64"), 64, "little", 62, "x86_64")
ARM64 = ElfArch(Platform("linux", "arm64"), 64, "little", 183, "arm64")
LOADER = "/lib64/ld-linux-x86-64.so.2"


def elf(
    path: str,
    *,
    imports: Iterable[str] = (),
    needed: Iterable[str] = ("libc.so.6",),
    soname: str | None = None,
    interpreter: str | None = LOADER,
    glibc: str = "2.36",
    go: str | None = None,
    syscalls: Iterable[str] = (),
    markers: Iterable[str] = (),
    arch: ElfArch = AMD64,
    defines: Iterable[str] = (),
) -> ScannedFile:
    """An ELF file: an executable with `interpreter` (None: static), or a library with
    `soname`. `imports` are libc functions at GLIBC_`glibc`; `syscalls` (static files)
    are names turned into this arch's numbers, as recovered from machine code."""
    library = soname is not None
    static = interpreter is None and not library
    versions = () if static else (VersionNeed("libc.so.6", (f"GLIBC_{glibc}",)),)
    info = ElfInfo(
        arch=arch,
        type=ElfType.SHARED if library else (ElfType.EXEC if static else ElfType.PIE),
        linkage=(
            Linkage.NONE if library else (Linkage.STATIC if static else Linkage.DYNAMIC)
        ),
        interpreter=None if library else interpreter,
        needed=() if static else tuple(needed),
        runpath=(),
        rpath=(),
        soname=soname,
        abi_tag="3.2.0" if static and go is None else None,
        version_needs=versions,
        version_defs=tuple(defines),
        undefined=tuple(Symbol(s, None if static else f"GLIBC_{glibc}") for s in imports),
        go_version=go,
        entry=0x1000,
    )
    scan = None
    if static or go:
        t = table(arch.abi or "x86_64")
        numbers = []
        for name in syscalls:
            row = t.lookup(name)
            assert row is not None, name
            numbers.append(row.nr)
        scan = SyscallScan(arch.abi or "x86_64", tuple(sorted(set(numbers))), len(numbers), 0,
                           "machine code (in memory)")  # fmt: skip
    return ScannedFile(path, Format.ELF, 0o755, 4096, info, syscalls=scan,
                       markers=tuple(markers))  # fmt: skip


def libc(version: str = "2.36", arch: ElfArch = AMD64) -> list[ScannedFile]:
    """glibc's loader and libc.so.6 (with its version definitions)."""
    defs = (f"GLIBC_{version}", "GLIBC_2.2.5")
    return [
        elf("/usr/lib/x86_64-linux-gnu/libc.so.6", soname="libc.so.6", needed=(), glibc=version,
            defines=defs, arch=arch),
        elf("/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", soname="ld-linux-x86-64.so.2",
            needed=(), glibc=version, arch=arch),
    ]  # fmt: skip


def scan_of(
    *files: ScannedFile, links: dict[str, str] | None = None, banners: dict[str, str] | None = None
) -> Scan:
    """A Scan holding `files`, the loader link glibc programs name, and `links`."""
    tree = Tree()
    by_path = {}
    for f in files:
        tree.add(f.path, Node(FileKind.FILE, "", f.mode))
        by_path[f.path] = f
    all_links = {LOADER: "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", **(links or {})}
    for path, target in all_links.items():
        tree.add(path, Node(FileKind.SYMLINK, target, 0o777))
    return Scan(by_path, tree, {}, {"PATH": "/usr/local/bin:/usr/bin:/bin"}, banners or {})


def facts_of(
    *files: ScannedFile, links: dict[str, str] | None = None, banners: dict[str, str] | None = None
) -> ImageFacts:
    """The facts the rules read of `scan_of(...)`, drawn as an image's analysis draws them."""
    return ImageFacts.of(scan_of(*files, links=links, banners=banners))


def config(*cmd: str, arch: str = "amd64") -> ImageConfig:
    return ImageConfig(Platform("linux", arch), None, tuple(cmd), (), None, None, ())
