"""What a Go program says about itself: its build info and its function table.

The toolchain version from `.go.buildinfo` (src/debug/buildinfo/buildinfo.go), and the
entry addresses of named functions from `.symtab` or, in a stripped binary, from Go's
own function table `.gopclntab` (src/debug/gosym/pclntab.go), read through the
bounds-checked ELF reader of kcompat.elffile.
"""

from __future__ import annotations

import struct
from typing import Literal

from kcompat.elffile import (
    PT_LOAD,
    SHT_SYMTAB,
    Reader,
    UnreadableError,
    cstr,
    symbols,
    uleb128,
)

GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"


def go_version(r: Reader) -> str | None:
    """Go's build info (src/debug/buildinfo/buildinfo.go): the toolchain version string."""
    blob: bytes | None = None
    s = r.named(".go.buildinfo")
    if s is not None:
        blob = r.bytes_of(s)
    elif not r.sections:  # stripped section headers: the first writable PT_LOAD
        for p in r.segments:
            if p.type == PT_LOAD and p.flags & 2:
                blob = r.data[p.offset : p.offset + min(p.filesz, 1 << 20)]
                break
    if not blob:
        return None
    at = blob.find(GO_BUILDINFO_MAGIC)
    while at >= 0 and at % 16:  # the header is 16-byte aligned
        at = blob.find(GO_BUILDINFO_MAGIC, at + 1)
    if at < 0 or at > len(blob) - 32:
        return None
    ptr_size, flags = blob[at + 14], blob[at + 15]
    if flags & 2:  # Go 1.18+: inline varint-prefixed strings after the 32-byte header
        n, off, ended = uleb128(blob, at + 32)
        if not ended:
            raise UnreadableError("bad varint in Go build info")
        version = blob[off : off + n]
        return version.decode("utf-8", "replace") if len(version) == n else None
    # before Go 1.18: a pointer to a Go string header (data pointer, length)
    if ptr_size not in (4, 8):
        return None
    e = "<" if not flags & 1 else ">"
    fmt = e + ("Q" if ptr_size == 8 else "I")
    (ptr,) = struct.unpack_from(fmt, blob, at + 16)
    header = r.vaddr_bytes(ptr, 2 * ptr_size)
    if header is None or len(header) < 2 * ptr_size:
        return None
    data_ptr, length = struct.unpack_from(e + fmt[1] * 2, header)
    if length > 128:
        return None
    text = r.vaddr_bytes(data_ptr, length)
    return text.decode("utf-8", "replace") if text and len(text) == length else None


def go_functions(data: bytes, wanted: frozenset[str]) -> dict[int, str]:
    """Entry address -> name of the `wanted` Go functions, from .symtab or, in a stripped
    binary, from Go's own function table `.gopclntab` (layouts of Go 1.16 and 1.18+,
    src/debug/gosym/pclntab.go). Empty when neither can be read."""
    try:
        r = Reader(data)
        found: dict[int, str] = {}
        symtab = r.section_of_type(SHT_SYMTAB, ".symtab")
        if symtab is not None and symtab.entsize:
            strings = r.linked(symtab)
            for _, name_off, _, value in symbols(r, symtab):
                if name_off and (name := cstr(strings, name_off, ".symtab")) in wanted:
                    found[value] = name
        if found:
            return found
        # an externally linked Go program (cgo, -buildmode=pie: Debian's Go packages)
        # keeps the table in .data.rel.ro.gopclntab (as Go's own debug/elf readers know)
        pclntab = r.named(".gopclntab") or r.named(".data.rel.ro.gopclntab")
        if pclntab is not None:
            return _pclntab(r.bytes_of(pclntab), wanted, "big" if r.endian == "big" else "little")
    except (UnreadableError, struct.error, ValueError, IndexError):
        pass
    return {}


def _pclntab(
    tab: bytes, wanted: frozenset[str], order: Literal["little", "big"] = "little"
) -> dict[int, str]:
    if len(tab) < 16:
        return {}
    magic = int.from_bytes(tab[:4], order)
    ptr = tab[7]
    if ptr not in (4, 8) or magic not in (0xFFFFFFFA, 0xFFFFFFF0, 0xFFFFFFF1):
        return {}

    def word(i: int) -> int:
        return int.from_bytes(tab[8 + i * ptr : 8 + (i + 1) * ptr], order)

    nfunc = word(0)
    if magic == 0xFFFFFFFA:  # Go 1.16/1.17: absolute entry addresses, pointer-sized
        text_start, funcname, pcln = 0, word(2), word(6)
        ent, field_size = 2 * ptr, ptr
    else:  # Go 1.18+: 32-bit offsets from textStart
        text_start, funcname, pcln = word(2), word(3), word(7)
        ent, field_size = 8, 4
    if nfunc > len(tab) // ent:
        return {}
    found: dict[int, str] = {}
    for i in range(nfunc):
        base = pcln + i * ent
        funcoff = int.from_bytes(tab[base + field_size : base + 2 * field_size], order)
        f = pcln + funcoff
        entry = int.from_bytes(tab[f : f + field_size], order)
        nameoff = int.from_bytes(tab[f + field_size : f + field_size + 4], order)
        start = funcname + nameoff
        end = tab.find(b"\0", start, start + 256)
        if end < 0:
            continue
        name = tab[start:end].decode("utf-8", "replace")
        if name in wanted:
            found[text_start + entry] = name
    return found
