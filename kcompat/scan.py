"""Every file of an image (or a directory), and the image-level facts drawn from them.

Each regular file is judged on its bytes (kcompat.filescan); the tree of paths, links
and directories is kept so symlinks resolve as in the container. A `Scan` is assembled
the same way from a directory walk (`scan_items`, `scan_path`) and from the layers'
cached results (kcompat.layerscan.assemble): by a `ScanBuilder`.

After the pass, the image-level facts: the C library and its version, the ELF
interpreters present, and the loader's search (`Scan.load`): for a dynamic executable
the libraries ld.so maps and those the image's own search path cannot find (what ld.so
would fail on). kcompat.facts draws each executable's facts from these, once.
"""

from __future__ import annotations

import fnmatch
import mmap
import os
import posixpath
import re
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import IO, NamedTuple, TypeVar

from kcompat import elf, formats
from kcompat.elf import ElfInfo
from kcompat.filescan import KEEP_MAX, ScannedFile, keep_text, scan_file
from kcompat.formats import Format
from kcompat.image import DEFAULT_PATH
from kcompat.layers import FileEntry, FileKind
from kcompat.versions import version_key

# Debian multiarch directories (where Debian's ld.so.conf.d points; listed here too so
# an image without ld.so.conf is judged as ld.so's built-in path would)
_TRIPLETS = {
    ("amd64", None): "x86_64-linux-gnu",
    ("386", None): "i386-linux-gnu",
    ("arm64", None): "aarch64-linux-gnu",
    ("arm", "hard-float"): "arm-linux-gnueabihf",
    ("arm", "soft-float"): "arm-linux-gnueabi",
    ("ppc64le", None): "powerpc64le-linux-gnu",
    ("s390x", None): "s390x-linux-gnu",
    ("riscv64", None): "riscv64-linux-gnu",
    ("mips64le", "n64"): "mips64el-linux-gnuabi64",
    ("loong64", None): "loongarch64-linux-gnu",
}


class Node(NamedTuple):  # a tuple: an image has ~20,000 of them to cache and load
    kind: FileKind
    linkname: str  # symlink target, or the path a hard link points to
    mode: int
    uid: int = 0
    gid: int = 0


@dataclass
class Tree:
    """Paths of the image (absolute, no trailing slash) and how symlinks resolve in it."""

    nodes: dict[str, Node] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=lambda: {"/"})

    def add(self, path: str, node: Node) -> None:
        self.nodes[path] = node
        parent = posixpath.dirname(path)
        while parent not in self.dirs:
            self.dirs.add(parent)
            parent = posixpath.dirname(parent)

    def resolve(self, path: str) -> str | None:
        """The final path of `path` with every symlink followed inside the image,
        or None if something on the way is missing or the links loop."""
        return self.lookup(path)[0]

    def lookup(self, path: str) -> tuple[str | None, str | None]:
        """(final path, None), or (None, errno name): ENOENT, ELOOP (more than 40 links,
        the kernel's MAXSYMLINKS) or ENOTDIR (a file used as a directory)."""
        parts = deque(p for p in path.split("/") if p)
        cur: list[str] = []
        links = 0
        while parts:
            p = parts.popleft()
            if p == ".":
                continue
            if p == "..":
                if cur:
                    cur.pop()
                continue
            cand = "/" + "/".join([*cur, p])
            node = self.nodes.get(cand)
            if node is None:
                if cand in self.dirs:
                    cur.append(p)
                    continue
                return None, "ENOENT"
            if node.kind is FileKind.SYMLINK:
                links += 1
                if links > 40:  # the kernel's limit (MAXSYMLINKS)
                    return None, "ELOOP"
                if node.linkname.startswith("/"):
                    cur = []
                parts.extendleft(reversed([x for x in node.linkname.split("/") if x]))
                continue
            if node.kind is FileKind.HARDLINK:
                cur = node.linkname.strip("/").split("/")
                continue
            if parts and node.kind is not FileKind.DIR and cand not in self.dirs:
                return None, "ENOTDIR"
            cur.append(p)
        return "/" + "/".join(cur), None

    def is_dir(self, path: str) -> bool:
        node = self.nodes.get(path)
        return path in self.dirs or (node is not None and node.kind is FileKind.DIR)


@dataclass(frozen=True)
class MissingLibrary:
    library: str
    needed_by: str  # the object whose DT_NEEDED names it


@dataclass(frozen=True)
class LibcInfo:
    family: str  # "glibc" | "musl"
    version: str | None
    path: str
    evidence: str


@dataclass
class Scan:
    files: dict[str, ScannedFile]
    tree: Tree
    texts: dict[str, str]  # kept small text files, by absolute path
    env: dict[str, str] = field(default_factory=dict)
    banners: dict[str, str] = field(default_factory=dict)  # C library path -> its version
    issues: tuple[str, ...] = ()  # layer entries refused or neutralised (LayerIssue text)

    # -- image-level facts ---------------------------------------------------------

    def libc(self) -> list[LibcInfo]:
        """The C libraries present (usually one), with version and where it was read."""
        found: list[LibcInfo] = []
        for f in self.files.values():
            e = f.elf
            if e is not None and e.soname == "libc.so.6" and e.type is elf.ElfType.SHARED:
                found.append(self._glibc(f, e))
        # musl is found from the loader its programs name (often a symlink to libc.so)
        musl_paths = {
            resolved
            for interp in self.interpreters()
            if "ld-musl" in interp and (resolved := self.tree.resolve(interp)) in self.files
        }
        for path in sorted(musl_paths):
            version = self.banners.get(path)
            found.append(LibcInfo("musl", version, path, "version string in the musl loader"))
        return found

    def _glibc(self, f: ScannedFile, e: ElfInfo) -> LibcInfo:
        glibc_defs = [v[6:] for v in e.version_defs if re.fullmatch(r"GLIBC_\d+(\.\d+)+", v)]
        banner = self.banners.get(f.path)
        if banner:
            return LibcInfo("glibc", banner, f.path, "release banner in libc.so.6")
        if glibc_defs:
            version = max(glibc_defs, key=version_key)
            return LibcInfo(
                "glibc",
                version,
                f.path,
                "highest GLIBC_ version defined by libc.so.6 (a lower bound)",
            )
        return LibcInfo("glibc", None, f.path, "libc.so.6 without version definitions")

    def interpreters(self) -> dict[str, bool]:
        """Every PT_INTERP named by an executable, and whether the image has it."""
        out: dict[str, bool] = {}
        for f in self.files.values():
            if f.elf and f.elf.interpreter and f.elf.interpreter not in out:
                out[f.elf.interpreter] = self._elf_at(f.elf.interpreter) is not None
        return out

    def _elf_at(self, path: str) -> ScannedFile | None:
        final = self.tree.resolve(path)
        f = self.files.get(final) if final else None
        return f if f is not None and f.elf is not None else None

    def exists(self, path: str) -> bool:
        final = self.tree.resolve(path)
        return final is not None and (final in self.files or final in self.tree.nodes)

    # -- the loader's search --------------------------------------------------------

    @cached_property
    def _conf_dirs(self) -> tuple[str, ...]:
        """/etc/ld.so.conf's directories with its includes, read once per Scan (the
        loader's walk asks for them for every DT_NEEDED entry of every object)."""
        dirs: list[str] = []
        seen: set[str] = set()

        def read(path: str, depth: int) -> None:
            if depth > 8 or path in seen:
                return
            seen.add(path)
            for line in self.texts.get(path, "").splitlines():
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                if line.startswith("include"):
                    pattern = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
                    if not pattern.startswith("/"):
                        pattern = posixpath.join(posixpath.dirname(path), pattern)
                    for p in sorted(self.texts):
                        if fnmatch.fnmatch(p, pattern):
                            read(p, depth + 1)
                elif line.startswith("hwcap"):
                    continue
                else:
                    dirs.extend(d for d in re.split(r"[:\s,]+", line) if d)

        read("/etc/ld.so.conf", 0)
        return tuple(dirs)

    def search_path(self, obj: ScannedFile, musl: bool) -> list[str]:
        """Where ld.so looks for `obj`'s DT_NEEDED entries (LD_LIBRARY_PATH from the image's
        environment, RUNPATH/RPATH with $ORIGIN, ld.so.conf, then the built-in dirs)."""
        assert obj.elf is not None
        e = obj.elf
        origin = posixpath.dirname(obj.path)
        lib = "lib64" if e.arch.bits == 64 else "lib"

        def expand(p: str) -> str:
            p = p.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            return p.replace("${LIB}", lib).replace("$LIB", lib)

        ld_library_path = [d for d in self.env.get("LD_LIBRARY_PATH", "").split(":") if d]
        out = [] if e.runpath else [expand(p) for p in e.rpath]
        out += ld_library_path + [expand(p) for p in e.runpath]
        if musl:
            text = next((v for k, v in self.texts.items() if k.startswith("/etc/ld-musl-")), None)
            out += (
                re.split(r"[:\n]+", text.strip())
                if text
                else ["/lib", "/usr/local/lib", "/usr/lib"]
            )
            return [d for d in out if d]
        out += self._conf_dirs
        triplet = _TRIPLETS.get((e.arch.platform.architecture, e.arch.detail)) or _TRIPLETS.get(
            (e.arch.platform.architecture, None)
        )
        if triplet:
            out += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
        if e.arch.bits == 64:
            out += ["/lib64", "/usr/lib64"]
        return [*out, "/lib", "/usr/lib"]

    def find_library(self, name: str, obj: ScannedFile, musl: bool) -> ScannedFile | None:
        assert obj.elf is not None
        candidates = (
            [name]
            if "/" in name
            else [posixpath.join(d, name) for d in self.search_path(obj, musl)]
        )
        for c in candidates:
            f = self._elf_at(c)
            # ld.so skips a file of another class or machine and goes on searching
            if (
                f
                and f.elf
                and f.elf.arch.machine == obj.elf.arch.machine
                and (f.elf.arch.bits == obj.elf.arch.bits)
            ):
                return f
        return None

    def load(self, exe: ScannedFile) -> tuple[list[ScannedFile], list[MissingLibrary]]:
        """What the loader does for `exe` over its whole DT_NEEDED tree, breadth first as
        ld.so does: the shared objects it maps, and the names it cannot find."""
        found: list[ScannedFile] = []
        missing: list[MissingLibrary] = []
        if exe.elf is None:
            return found, missing
        musl = exe.elf.libc == "musl"
        seen: set[str] = set()
        queue = deque([exe])
        while queue:
            obj = queue.popleft()
            assert obj.elf is not None
            for name in obj.elf.needed:
                if name in seen:
                    continue
                seen.add(name)
                lib = self.find_library(name, obj, musl)
                if lib is None:
                    missing.append(MissingLibrary(name, obj.path))
                elif lib not in found:
                    found.append(lib)
                    queue.append(lib)
        return found, missing

    def script_interpreter_found(self, f: ScannedFile) -> bool | None:
        """Whether a script's `#!` interpreter exists (for `/usr/bin/env X`, X on PATH)."""
        if f.script is None:
            return None
        interp = f.script.interpreter
        if not self.exists(interp):
            return False
        if posixpath.basename(interp) == "env" and f.script.argument:
            words = [w for w in f.script.argument.split() if not w.startswith("-")]
            if not words:
                return True
            prog = words[0]
            if "/" in prog:
                return self.exists(prog)
            path = self.env.get("PATH", DEFAULT_PATH)
            return any(self.exists(posixpath.join(d, prog)) for d in path.split(":") if d)
        return True

    def executables(self) -> Iterator[ScannedFile]:
        for f in self.files.values():
            if f.format in (Format.ELF, Format.PE, Format.MACHO) or (
                f.format is Format.SCRIPT and f.executable
            ):
                yield f


_V = TypeVar("_V")


def _put(table: dict[str, _V], path: str, value: _V | None) -> None:
    if value is None:
        table.pop(path, None)
    else:
        table[path] = value


class ScanBuilder:
    """A Scan built entry by entry, in the order the merged image yields them: each path
    goes into the tree, a regular file's content is recorded; a later write of a path
    replaces all of the earlier one's (scanned file, kept text, banner)."""

    def __init__(self) -> None:
        self.tree = Tree()
        self.files: dict[str, ScannedFile] = {}
        self.texts: dict[str, str] = {}
        self.banners: dict[str, str] = {}

    def add(self, entry: FileEntry) -> str | None:
        """Put `entry` in the tree; its absolute path when it is a regular file (whose
        content comes next, by `content`), else None."""
        path = "/" + entry.path
        kind = entry.kind
        linkname = entry.linkname if kind is not FileKind.HARDLINK else "/" + entry.linkname
        self.tree.add(path, Node(kind, linkname, entry.mode, entry.uid, entry.gid))
        return path if kind is FileKind.FILE else None

    def content(self, path: str, scanned: ScannedFile | None, text: str | None = None,
                banner: str | None = None) -> None:  # fmt: skip
        """What the regular file at `path` held: a file kcompat reads (None: another
        format), its text when kept, a C library's version banner."""
        _put(self.files, path, scanned)
        _put(self.texts, path, text)
        _put(self.banners, path, banner)

    def scan(self, env: dict[str, str] | None = None, issues: tuple[str, ...] = ()) -> Scan:
        """The Scan; hard links share the scanned data of their target."""
        files = self.files
        for path, node in self.tree.nodes.items():
            if node.kind is FileKind.HARDLINK and node.linkname in files and path not in files:
                files[path] = replace(files[node.linkname], path=path)
        return Scan(self.files, self.tree, self.texts, dict(env or {}), self.banners, issues)


@dataclass(frozen=True)
class Item:
    """One file of the tree being scanned, however it is stored."""

    entry: FileEntry
    open: Callable[[], IO[bytes]]
    local: Path | None = None  # a file on this machine: large ones are mapped, not read


_MAP_FROM = 1 << 20  # local files from 1 MiB on are mmap'd: a 2 GiB core dump costs pages


def _mapped(path: Path) -> Callable[[], bytes]:
    """The whole file as a read-only memory map (bytes-like for the decoders): only the
    pages the ELF reader touches are read, so a huge file costs no memory."""

    def read() -> bytes:
        with path.open("rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # type: ignore[return-value]

    return read

def scan_items(items: Iterable[Item], env: dict[str, str] | None = None) -> Scan:
    build = ScanBuilder()
    for item in items:
        path = build.add(item.entry)
        if path is None:
            continue
        size = item.entry.size
        with item.open() as stream:
            head = stream.read(formats.HEAD_SIZE)
            if keep_text(path) and size <= KEEP_MAX:
                build.content(path, None, (head + stream.read()).decode("utf-8", "replace"))
                continue
            whole = _mapped(item.local) if item.local and size >= _MAP_FROM else None
            scanned, banner = scan_file(path, item.entry.mode, size, head, stream.read, whole)
        build.content(path, scanned if scanned.format is not Format.OTHER else None, None, banner)
    return build.scan(env)


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    def open_() -> IO[bytes]:
        return path.open("rb")

    return open_


def _dir_items(root: Path) -> Iterator[Item]:
    """A local directory as scan items, symlinks not followed."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath, name)
            try:
                st = full.lstat()
            except OSError:
                continue
            rel = full.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                kind, link = FileKind.SYMLINK, os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                kind, link = FileKind.DIR, ""
            elif stat.S_ISREG(st.st_mode):
                kind, link = FileKind.FILE, ""
            else:
                continue
            entry = FileEntry(rel, kind, stat.S_IMODE(st.st_mode), st.st_size, link, st.st_uid,
                              st.st_gid, 0, 0, 0)  # fmt: skip
            yield Item(entry, _opener(full), full)


def scan_path(path: Path, env: dict[str, str] | None = None) -> Scan:
    """Scan a directory tree (as an image root) or one file."""
    if path.is_dir():
        return scan_items(_dir_items(path), env)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block, a device has no end
        from kcompat.errors import UsageError

        kind = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise UsageError(f"{path} is {kind}, not a regular file: nothing to scan",
                         hint="give a file or a directory")  # fmt: skip
    entry = FileEntry(path.name, FileKind.FILE, stat.S_IMODE(st.st_mode), st.st_size, "", 0, 0,
                      0, 0, 0)  # fmt: skip
    return scan_items([Item(entry, _opener(path), path)], env)
