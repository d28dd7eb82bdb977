"""Scan a few host programs with the files their loader maps, as if the host were an image."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from kcompat.layers import FileEntry, FileKind
from kcompat.scan import Item, Scan, scan_items


def _item(path: str) -> Item:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        kind, link = FileKind.SYMLINK, os.readlink(path)
    elif stat.S_ISDIR(st.st_mode):
        kind, link = FileKind.DIR, ""
    else:
        kind, link = FileKind.FILE, ""
    entry = FileEntry(path.lstrip("/"), kind, stat.S_IMODE(st.st_mode), st.st_size, link,
                      0, 0, 0, 0, 0)  # fmt: skip
    return Item(entry, lambda: open(path, "rb"))


def ldd(program: str) -> list[str]:
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=False).stdout
    paths = []
    for line in out.splitlines():
        for word in line.split():
            if word.startswith("/"):
                paths.append(word)
    return paths


def scan_programs(programs: list[str]) -> Scan:
    """The programs, every file on their ldd paths (symlinks kept), and ld.so.conf."""
    wanted: dict[str, None] = {}

    def add(path: str) -> None:
        # every symlink on the way (/lib64 -> usr/lib64) and the final file, each under
        # a path with no symlink above it, as a layer would hold them
        for _ in range(40):
            parts = Path(path).parts
            for i in range(2, len(parts)):
                prefix = str(Path(*parts[:i]))
                if os.path.islink(prefix):
                    wanted[prefix] = None
                    path = os.path.join(os.path.realpath(prefix), *parts[i:])
                    break
            else:
                wanted[path] = None
                if not os.path.islink(path):
                    return
                path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(path)))

    for prog in programs:
        for p in [prog, *ldd(prog)]:
            add(p)
    conf = ["/etc/ld.so.conf", *sorted(str(p) for p in Path("/etc/ld.so.conf.d").glob("*"))]
    items = [_item(p) for p in [*conf, *wanted] if os.path.lexists(p)]
    return scan_items(items)
