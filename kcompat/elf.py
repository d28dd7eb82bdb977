"""ELF files read into kcompat's own types.

Decoded by hand with struct, reading only what kcompat uses: the ELF header, program
headers, section headers and names (through kcompat.elffile's bounds-checked reader),
the dynamic section, the GNU version tables, the dynamic symbols, the ABI-tag note, Go's
build info (kcompat.goinfo) (System V gABI; GNU extensions as in glibc's elf.h). A
general ELF library (pyelftools, which this module used before) spent about 4 ms a file
building objects for all of it; this costs about 0.3 ms (1,589 files of a Debian /usr:
6.5 s before, 0.52 s now), which is what scanning an image's thousands of ELF files at
the speed of reading them needs.
Every count and offset is checked against the file's size before it is followed, so a
hostile file ends in `UnreadableError`, never in a hang or a crash. The golden tests
compare machine, interpreter, DT_NEEDED, version needs and the ABI tag with binutils'
readelf; tests/test_elf_differential.py holds every fact read here against pyelftools
over every ELF file of the fixture images, and tests/test_elf_tiny.py cuts and corrupts
tiny real files (tests/fixtures/tiny_elf/) field by field.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple, overload

from kcompat.elffile import ELF_MAGIC as ELF_MAGIC
from kcompat.elffile import EM_386 as EM_386
from kcompat.elffile import EM_AARCH64 as EM_AARCH64
from kcompat.elffile import (
    EM_ARM,
    EM_LOONGARCH,
    EM_MIPS,
    EM_PPC64,
    EM_RISCV,
    EM_S390,
    LAYOUT,
    PT_DYNAMIC,
    PT_INTERP,
    PT_LOAD,
    PT_NOTE,
    SHF_EXECINSTR,
    SHT_DYNAMIC,
    SHT_DYNSYM,
    SHT_GNU_VERDEF,
    SHT_GNU_VERNEED,
    SHT_GNU_VERSYM,
    SHT_NOBITS,
    SHT_SYMTAB,
    Reader,
    Section,
    cstr,
    uleb128,
)
from kcompat.elffile import EM_X86_64 as EM_X86_64
from kcompat.elffile import SHT_NULL as SHT_NULL
from kcompat.elffile import ElfArch as ElfArch
from kcompat.elffile import UnreadableError as UnreadableError
from kcompat.elffile import has_interpreter as has_interpreter
from kcompat.goinfo import go_functions as go_functions
from kcompat.goinfo import go_version
from kcompat.platform import Platform

# Names read from kcompat.elf since before the file format (kcompat.elffile) and Go's
# function table (kcompat.goinfo) had modules of their own: the `X as X` imports above
# and these two (kcompat.vmkernel, bench/fuzz.py).
_Reader = Reader
_LAYOUT = LAYOUT

PATH_MAX = 4096  # the kernel refuses a longer PT_INTERP (fs/binfmt_elf.c)
DF_1_PIE = 0x08000000
NT_GNU_ABI_TAG = 1
# d_tag values (System V gABI; GNU extensions from glibc elf.h)
DT_NULL, DT_NEEDED, DT_STRTAB, DT_STRSZ, DT_SONAME, DT_RPATH, DT_RUNPATH = 0, 1, 5, 10, 14, 15, 29
DT_FLAGS_1 = 0x6FFFFFFB
_DT_STRINGS = frozenset({DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH})
# .ARM.attributes Tag_CPU_arch values (ARM IHI 0045) -> OCI variant
_ARM_CPU_ARCH_VARIANT = {1: "v5", 2: "v5", 3: "v5", 4: "v5", 5: "v5", 6: "v6", 7: "v6", 8: "v6"}
_ARM_CPU_ARCH_VARIANT.update({9: "v6", 10: "v7", 11: "v6", 12: "v6", 13: "v7", 14: "v8"})


class ElfType(str, Enum):
    EXEC = "exec"  # ET_EXEC: fixed-address executable
    PIE = "pie"  # ET_DYN meant to be run
    SHARED = "shared"  # ET_DYN library
    RELOCATABLE = "relocatable"  # .o, kernel modules
    CORE = "core"
    OTHER = "other"


# e_type -> ElfType; ET_DYN is refined to PIE or SHARED from its dynamic section
_E_TYPES = {1: ElfType.RELOCATABLE, 2: ElfType.EXEC, 3: ElfType.SHARED, 4: ElfType.CORE}


class Linkage(str, Enum):
    DYNAMIC = "dynamic"  # has PT_INTERP: the loader runs first
    STATIC = "static"
    STATIC_PIE = "static-pie"
    NONE = "none"  # libraries and objects: not run directly


@dataclass(frozen=True)
class VersionNeed:
    library: str  # "libc.so.6"
    versions: tuple[str, ...]  # ("GLIBC_2.2.5", "GLIBC_2.34")


class Symbol(NamedTuple):  # a tuple: an image has ~100,000 of them to cache and load
    name: str
    version: str | None  # "GLIBC_2.34"; None when unversioned


class CodeView:
    """Bytes of a file held in memory, from `start`, `size` long, read in place: what
    kcompat.vsyscall uses of them (find, len, an index, a short slice, which is a copy of
    those bytes only). The executable segments of every x86-64 file are searched that
    way, and copying them doubled what a large library holds (libLLVM: 110 MB of file,
    about 60 MB of it code)."""

    __slots__ = ("_data", "_size", "_start")

    def __init__(self, data: bytes, start: int, size: int) -> None:
        self._data, self._start, self._size = data, start, max(0, min(size, len(data) - start))

    def __len__(self) -> int:
        return self._size

    def find(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        base, size = self._start, self._size
        lo = max(start + size if start < 0 else start, 0)
        if lo > size:
            return -1
        hi = size if end is None else min(max(end + size if end < 0 else end, 0), size)
        at = self._data.find(sub, base + lo, base + hi)
        return at - base if at >= 0 else -1

    @overload
    def __getitem__(self, key: int) -> int: ...
    @overload
    def __getitem__(self, key: slice) -> bytes: ...
    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, slice):
            r = range(self._size)[key]
            if r.step != 1:
                return self.materialized()[key]
            return self._data[self._start + r.start : self._start + max(r.start, r.stop)]
        return self._data[self._start + range(self._size)[key]]

    def span(self) -> tuple[bytes, int, int]:
        """The file's bytes and where in them this view starts and ends."""
        return self._data, self._start, self._start + self._size

    def materialized(self) -> bytes:
        """A copy, of the type of the file's bytes (bytes or bytearray)."""
        return self._data[self._start : self._start + self._size]


@dataclass(frozen=True)
class CodeRange:
    """Executable bytes and the address they are loaded at, for the disassembler."""

    vaddr: int
    data: bytes | CodeView = field(repr=False)  # the disassemblers copy a view out first


@dataclass(frozen=True)
class ElfInfo:
    arch: ElfArch
    type: ElfType
    linkage: Linkage
    interpreter: str | None
    needed: tuple[str, ...]
    runpath: tuple[str, ...]
    rpath: tuple[str, ...]
    soname: str | None
    abi_tag: str | None  # minimum kernel from .note.ABI-tag, "3.2.0"
    version_needs: tuple[VersionNeed, ...]
    version_defs: tuple[str, ...]  # what this object provides ("GLIBC_2.36", ...)
    undefined: tuple[Symbol, ...]  # undefined dynamic symbols
    go_version: str | None  # "go1.19.8"
    entry: int
    code: tuple[CodeRange, ...] = field(repr=False, default=())

    @property
    def libc(self) -> str | None:
        """The C library this file was built against: glibc, musl, or None (Go, none, unknown)."""
        if self.interpreter and "ld-musl" in self.interpreter:
            return "musl"
        if any(v.startswith("GLIBC_") for n in self.version_needs for v in n.versions):
            return "glibc"
        if self.interpreter and re.search(r"ld-linux|ld64\.so|ld\.so", self.interpreter):
            return "glibc"
        if self.abi_tag is not None and self.go_version is None:
            return "glibc"  # glibc's crt1 carries the ABI tag, also in static binaries
        return None


def _abi_tag(note_data: bytes, endian: str, what: str, align: int) -> str | None:
    """The GNU ABI tag from raw note bytes: type 1, name "GNU", desc = os, major, minor, patch.

    The name and the description are each padded to the alignment of their segment
    (p_align) or section (sh_addralign): 8 bytes when that is 8 (the gABI's alignment
    for notes in 64-bit objects), else 4 (Linux's, also in 64-bit objects), as glibc's
    loader walks them (elf/dl-load.c open_verify: ELF_NOTE_NEXT_OFFSET with p_align) and
    binutils' readelf does.
    A note whose name or description runs past the end of its segment (or section)
    makes the file unreadable: the linker writes whole notes, so the bytes there are
    not notes. Fewer than 12 bytes left over (padding) are not a note and are passed."""
    e = "<" if endian == "little" else ">"
    pad = 7 if align == 8 else 3
    off = 0
    while off + 12 <= len(note_data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", note_data, off)
        name_off = off + 12
        desc_off = off + ((12 + namesz + pad) & ~pad)
        end = desc_off + ((descsz + pad) & ~pad)
        if desc_off + descsz > len(note_data):  # the last one's padding may be left out
            raise UnreadableError(f"{what}: a note at byte {off} runs past its end "
                                  f"(name size {namesz}, description size {descsz})")  # fmt: skip
        name = note_data[name_off : name_off + namesz].rstrip(b"\0")
        if ntype == NT_GNU_ABI_TAG and name == b"GNU" and descsz >= 16:
            os_, major, minor, patch = struct.unpack_from(e + "IIII", note_data, desc_off)
            return f"{major}.{minor}.{patch}" if os_ == 0 else None
        off = end
    return None


def _chain(
    r: Reader, s: Section, what: str, count: int, first: int, size: int, next_at: int
) -> Iterator[int]:
    """The offsets of a chain of version entries inside section `s`: `count` at most,
    from `first` (an offset in the file), each `size` bytes with its `next` offset (from
    the entry, 0 for the last) at `next_at`. Every entry must lie inside the section and
    each `next` moves forward, so the walk ends within the section's size."""
    end = s.offset + s.size
    if count > s.size // size:
        raise UnreadableError(f"{what} claims more entries than the section holds")
    off = first
    for _ in range(count):
        if not s.offset <= off <= end - size:
            raise UnreadableError(f"{what} has an entry outside its section")
        yield off
        (step,) = struct.unpack_from(r.e + "I", r.data, off + next_at)
        if step == 0:
            return
        off += step


def _versions(r: Reader) -> tuple[tuple[VersionNeed, ...], tuple[str, ...], dict[int, str]]:
    """.gnu.version_r and .gnu.version_d (sh_info entries each, chained by their `next`
    offsets, the last `next` 0, as glibc's loader walks them), and the symbol-version
    index -> name map. The auxiliary entries of all of a section's entries together
    cannot be more than the section holds: a chain that visits more shares entries,
    and is refused before it costs more than one pass over the section."""
    needs: list[VersionNeed] = []
    defs: list[str] = []
    index: dict[int, str] = {}
    data, e = r.data, r.e
    vn = r.section_of_type(SHT_GNU_VERNEED)
    if vn is not None and vn.type != SHT_NOBITS:
        what = ".gnu.version_r"
        strings = r.linked(vn)
        budget = vn.size // 16  # Elf_Vernaux entries the section can hold
        for off in _chain(r, vn, what, vn.info, vn.offset, 16, 12):
            _, cnt, file_, aux, _ = struct.unpack_from(e + "HHIII", data, off)
            names = []
            for aoff in _chain(r, vn, what, cnt, off + aux, 16, 12):
                budget -= 1
                if budget < 0:
                    raise UnreadableError(f"{what} entries share their version names")
                _, _, other, name_off, _ = struct.unpack_from(e + "IHHII", data, aoff)
                name = cstr(strings, name_off, what)
                names.append(name)
                index[other & 0x7FFF] = name
            needs.append(VersionNeed(cstr(strings, file_, what), tuple(names)))
    vd = r.section_of_type(SHT_GNU_VERDEF)
    if vd is not None and vd.type != SHT_NOBITS:
        what = ".gnu.version_d"
        strings = r.linked(vd)
        for off in _chain(r, vd, what, vd.info, vd.offset, 20, 16):
            _, flags, ndx, cnt, _, aux, _ = struct.unpack_from(e + "HHHHIII", data, off)
            if cnt:
                aoff = next(_chain(r, vd, what, 1, off + aux, 8, 4))
                (name_off,) = struct.unpack_from(e + "I", data, aoff)
                first = cstr(strings, name_off, what)
                index[ndx] = first
                if not flags & 1:  # VER_FLG_BASE names the file itself
                    defs.append(first)
    return tuple(needs), tuple(defs), index


def _undefined(r: Reader, version_index: dict[int, str]) -> tuple[Symbol, ...]:
    """Undefined .dynsym entries with their versions (.gnu.version, one half-word each).

    One pass over the table with struct.iter_unpack, the version half-words unpacked at
    once: a scan decodes hundreds of thousands of these (symbols() and cstr() per entry
    were a third of an image's ELF decoding)."""
    dynsym = r.section_of_type(SHT_DYNSYM, ".dynsym") or r.section_of_type(SHT_SYMTAB, ".dynsym")
    if dynsym is None:
        return ()
    entsize = 24 if r.arch.bits == 64 else 16
    if dynsym.entsize != entsize:
        raise UnreadableError(f"{dynsym.name} has entry size {dynsym.entsize}, not {entsize}")
    strings = r.linked(dynsym)
    versym = r.section_of_type(SHT_GNU_VERSYM)
    vraw = r.bytes_of(versym) if versym is not None else b""
    versions = struct.unpack_from(f"{r.e}{len(vraw) // 2}H", vraw) if vraw else ()
    raw = r.bytes_of(dynsym)
    # Elf64_Sym name,info,other,shndx,value,size; Elf32_Sym name,value,size,info,other,shndx
    fmt = r.e + ("I2xH16x" if entsize == 24 else "I10xH")
    usable = len(raw) - len(raw) % entsize
    nstrings, find, nversions = len(strings), strings.find, len(versions)
    out: list[Symbol] = []
    interned = _SYMBOLS
    if len(interned) > _SYMBOLS_MAX:
        interned.clear()
    for i, (name_off, shndx) in enumerate(struct.iter_unpack(fmt, raw[:usable])):
        if not i or not name_off or shndx != 0:  # the null symbol; SHN_UNDEF == 0
            continue
        end = find(b"\0", name_off)
        if name_off >= nstrings or end < 0:
            raise UnreadableError(".dynsym names a string outside its string table")
        if end == name_off:
            continue
        ndx = versions[i] & 0x7FFF if i < nversions else 0
        key = (strings[name_off:end].decode("utf-8", "replace"),
               version_index.get(ndx) if ndx > 1 else None)  # fmt: skip
        sym = interned.get(key)
        if sym is None:
            sym = interned[key] = Symbol(*key)
        out.append(sym)
    return tuple(out)


# One Symbol object per (name, version) seen by this process: the same imports recur in
# every file of an image (an image has ~100,000 undefined symbols, a few thousand
# distinct), and pickle stores an object it has seen once as a reference: a layer's
# cached result shrinks, and loading it builds each Symbol once.
_SYMBOLS: dict[tuple[str, str | None], Symbol] = {}
_SYMBOLS_MAX = 1 << 18


def _dynamic(r: Reader) -> dict[int, list[int | str]]:
    """DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH (as strings) and DT_FLAGS_1, in file
    order, up to DT_NULL: from the .dynamic section, or from PT_DYNAMIC and the string
    table DT_STRTAB points to when the file has no section headers."""
    tags: dict[int, list[int | str]] = {}
    sec = r.section_of_type(SHT_DYNAMIC)
    strings: bytes | None = None
    if sec is not None:
        raw = r.bytes_of(sec)
        strings = r.linked(sec)
    else:
        seg = next((p for p in r.segments if p.type == PT_DYNAMIC), None)
        if seg is None:
            return tags
        raw = r.data[seg.offset : seg.offset + seg.filesz]
    fmt = r.e + ("qQ" if r.arch.bits == 64 else "iI")
    entries = []
    usable = len(raw) - len(raw) % struct.calcsize(fmt)
    for tag, val in struct.iter_unpack(fmt, raw[:usable]):
        if tag == DT_NULL:
            break
        entries.append((tag, val))
    else:
        if usable:  # ld.so reads up to DT_NULL: without one it would read past the array
            raise UnreadableError("dynamic section has no DT_NULL at its end")
    if strings is None:
        strings = b""
        if any(t in _DT_STRINGS for t, _ in entries):
            strtab = next((v for t, v in entries if t == DT_STRTAB), None)
            if strtab is None:
                raise UnreadableError("dynamic section names strings but has no DT_STRTAB")
            off = r.vaddr_offset(strtab)
            if off is None:
                raise UnreadableError(f"DT_STRTAB {strtab:#x} is in no PT_LOAD segment")
            size = next((v for t, v in entries if t == DT_STRSZ), 0)
            strings = r.data[off : off + size]
    for tag, val in entries:
        if tag in _DT_STRINGS:
            tags.setdefault(tag, []).append(cstr(strings, val, ".dynamic"))
        elif tag == DT_FLAGS_1:
            tags.setdefault(tag, []).append(val)
    return tags


# Machines whose executable PT_LOAD also holds .rodata, .eh_frame and the headers in the
# binaries seen (Debian's mips64el, ppc64el, riscv64 and s390x packages): there a word of
# data (12 is MIPS `syscall`, 115 RISC-V `ecall`) reads as a syscall instruction, so their
# code is the SHF_EXECINSTR sections inside those segments when the file has them.
_CODE_BY_SECTION = frozenset({EM_MIPS, EM_PPC64, EM_S390, EM_RISCV, EM_LOONGARCH})


def _code(r: Reader) -> tuple[CodeRange, ...]:
    segments = [p for p in r.segments if p.type == PT_LOAD and p.flags & 1]  # PF_X
    if r.arch.machine in _CODE_BY_SECTION:
        sections = []
        for s in r.sections:
            if s.flags & SHF_EXECINSTR and s.type != SHT_NOBITS and s.size:
                p = next((p for p in segments if p.offset <= s.offset
                          and s.offset + s.size <= p.offset + p.filesz), None)  # fmt: skip
                if p is not None:
                    sections.append(CodeRange(p.vaddr + s.offset - p.offset,
                                              CodeView(r.data, s.offset, s.size)))  # fmt: skip
        if sections:
            return tuple(sections)
    # the segments in place (CodeView), not copied: the disassemblers copy out the few
    # programs they decode (CodeView.materialized); kcompat.vsyscall reads every file's
    return tuple(CodeRange(p.vaddr, CodeView(r.data, p.offset, p.filesz)) for p in segments)


def read_elf(data: bytes, *, with_code: bool = False) -> ElfInfo:
    """Everything kcompat needs from one ELF file held in memory.

    Raises UnreadableError (the reason as its message) for anything malformed.
    """
    try:
        return _read(data, with_code)
    except UnreadableError:
        raise
    except (struct.error, ValueError, KeyError, IndexError, OverflowError) as e:
        raise UnreadableError(f"{type(e).__name__}: {e}") from None


def _interpreter(raw: bytes) -> str:
    """The PT_INTERP path, refused where the kernel's execve refuses it (ENOEXEC from
    fs/binfmt_elf.c: fewer than 2 bytes, more than PATH_MAX, no NUL at the end); an
    empty name (a NUL first) names no file."""
    if len(raw) > PATH_MAX:
        raise UnreadableError(f"PT_INTERP of {len(raw)} bytes is longer than PATH_MAX")
    if len(raw) < 2 or raw[0] == 0:
        raise UnreadableError("empty PT_INTERP")
    if raw[-1] != 0:
        raise UnreadableError("unterminated PT_INTERP (its last byte is not NUL)")
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _read(data: bytes, with_code: bool) -> ElfInfo:
    r = Reader(data)
    interp: str | None = None
    abi_tag: str | None = None
    for p in r.segments:
        if p.type == PT_INTERP and interp is None:  # the kernel uses the first one
            if p.filesz == 0 and p.memsz:  # a debug file (objcopy --only-keep-debug)
                interp = ""  # keeps the header, not the bytes: no name to read
            else:
                interp = _interpreter(data[p.offset : p.offset + p.filesz])
        elif p.type == PT_NOTE and abi_tag is None:
            notes = data[p.offset : p.offset + p.filesz]
            abi_tag = _abi_tag(notes, r.endian, "PT_NOTE", p.align)
    if abi_tag is None:
        s = r.named(".note.ABI-tag")
        if s is not None:
            abi_tag = _abi_tag(r.bytes_of(s), r.endian, ".note.ABI-tag", s.addralign)
    tags = _dynamic(r)
    needs, defs, index = _versions(r)
    flags_1 = int(tags.get(DT_FLAGS_1, [0])[0])
    soname = str(tags[DT_SONAME][0]) if DT_SONAME in tags else None
    has_dynamic = any(p.type == PT_DYNAMIC for p in r.segments)
    etype = _E_TYPES.get(r.e_type, ElfType.OTHER)
    if etype is ElfType.SHARED:  # ET_DYN: a library, or a PIE meant to be run
        pie = flags_1 & DF_1_PIE or (interp is not None and soname is None)
        etype = ElfType.PIE if pie else ElfType.SHARED
    if interp is not None:
        linkage = Linkage.DYNAMIC
    elif etype is ElfType.EXEC:
        linkage = Linkage.STATIC
    elif etype is ElfType.PIE or (
        etype is ElfType.SHARED and has_dynamic and not tags.get(DT_NEEDED) and soname is None
    ):
        linkage = Linkage.STATIC_PIE
    else:
        linkage = Linkage.NONE

    def paths(tag: int) -> tuple[str, ...]:
        return tuple(p for v in tags.get(tag, []) for p in str(v).split(":") if p)

    return ElfInfo(
        arch=_refine_arm(r) if r.arch.machine == EM_ARM else r.arch,
        type=etype,
        linkage=linkage,
        interpreter=interp,
        needed=tuple(str(n) for n in tags.get(DT_NEEDED, [])),
        runpath=paths(DT_RUNPATH),
        rpath=paths(DT_RPATH),
        soname=soname,
        abi_tag=abi_tag,
        version_needs=needs,
        version_defs=defs,
        undefined=_undefined(r, index),
        go_version=go_version(r),
        entry=int(r.entry),
        code=_code(r) if with_code else (),
    )


def _refine_arm(r: Reader) -> ElfArch:
    """ARM variant from .ARM.attributes Tag_CPU_arch, when the file has it."""
    variant = None
    for s in r.sections:
        if s.name == ".ARM.attributes":
            variant = _arm_cpu_arch(r.bytes_of(s))
    a = r.arch
    return ElfArch(Platform("linux", "arm", variant), a.bits, a.endian, a.machine, a.abi, a.detail)


def _arm_cpu_arch(blob: bytes) -> str | None:
    """Tag_CPU_arch (6) from an "aeabi" build attributes subsection, as an OCI variant.

    A file has one "aeabi" subsection, and Tag_CPU_arch comes early in it: only the
    first one and its first 512 bytes are read, so a hostile blob costs no more."""
    if not blob.startswith(b"A"):
        return None
    m = re.search(rb"aeabi\x00\x01", blob)
    if m is None:
        return None
    attrs = blob[m.end() + 4 : m.end() + 4 + 512]  # skip the file-scope subsection size
    i = 0
    while i < len(attrs):
        tag = attrs[i]
        i += 1
        if tag in (4, 5, 67):  # NTBS-valued tags: CPU_raw_name, CPU_name, conformance
            end = attrs.find(b"\0", i)
            if end < 0:
                return None
            i = end + 1
            continue
        value, i, _ = uleb128(attrs, i)  # one cut short: read as far as it goes
        if tag == 6:
            return _ARM_CPU_ARCH_VARIANT.get(value)
    return None
