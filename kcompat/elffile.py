"""The ELF file format itself, every count and offset checked against the file's size.

The ELF header and the architecture it names, the program headers (segments), the
section headers and their names, string tables and symbol tables (System V gABI; GNU
extensions as in glibc's elf.h), and the unsigned LEB128 numbers of ARM build
attributes and Go's build info. What kcompat reads off a file through them is in
kcompat.elf (and Go's build info in kcompat.goinfo); a malformed file ends in
`UnreadableError`, never in a hang or a crash.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from kcompat.platform import Platform

ELF_MAGIC = b"\x7fELF"

# e_machine numbers (System V gABI, glibc elf.h) -> OCI architecture
EM_NONE, EM_386, EM_MIPS, EM_PPC64, EM_S390, EM_ARM = 0, 3, 8, 21, 22, 40
EM_X86_64, EM_AARCH64, EM_RISCV, EM_LOONGARCH = 62, 183, 243, 258
# The gABI assigns numbers up to EM_LOONGARCH (glibc's EM_NUM is 259); Alpha's was
# never assigned and is the one unofficial number Linux programs carry.
EM_LAST, EM_ALPHA = EM_LOONGARCH, 0x9026
EF_ARM_ABI_FLOAT_HARD = 0x400  # glibc elf.h; set by the armhf toolchain
EF_ARM_ABI_FLOAT_SOFT = 0x200
EF_MIPS_ABI2 = 0x20  # n32
# p_type and sh_type values (System V gABI; GNU extensions from glibc elf.h)
PT_LOAD, PT_DYNAMIC, PT_INTERP, PT_NOTE = 1, 2, 3, 4
_PT_NAMES = {
    PT_LOAD: "PT_LOAD",
    PT_DYNAMIC: "PT_DYNAMIC",
    PT_INTERP: "PT_INTERP",
    PT_NOTE: "PT_NOTE",
}
SHT_NULL, SHT_SYMTAB, SHT_DYNAMIC, SHT_NOBITS, SHT_DYNSYM = 0, 2, 6, 8, 11
SHT_GNU_VERDEF, SHT_GNU_VERNEED, SHT_GNU_VERSYM = 0x6FFFFFFD, 0x6FFFFFFE, 0x6FFFFFFF
SHF_EXECINSTR = 0x4


class UnreadableError(Exception):
    """The file claims to be ELF but cannot be read: the reason is the message."""


@dataclass(frozen=True)
class ElfArch:
    """The architecture an ELF file needs, with the syscall ABI it uses."""

    platform: Platform
    bits: int
    endian: str  # "little" | "big"
    machine: int  # e_machine
    abi: str | None  # syscall table ABI (kcompat.syscalls.ABIS), None if kcompat has none
    detail: str | None = None  # "hard-float", "soft-float", "o32", "n32", "n64"

    def __str__(self) -> str:
        return f"{self.platform}" + (f" ({self.detail})" if self.detail else "")


def elf_arch(head: bytes) -> ElfArch:
    """The architecture from the first 52 bytes (the ELF header up to e_flags)."""
    if len(head) < 52 or not head.startswith(ELF_MAGIC):
        raise UnreadableError("truncated ELF header")
    cls, data = head[4], head[5]
    if cls not in (1, 2) or data not in (1, 2):
        raise UnreadableError(f"bad ELF class {cls} or byte order {data}")
    bits = 32 if cls == 1 else 64
    endian = "little" if data == 1 else "big"
    e = "<" if data == 1 else ">"
    (machine,) = struct.unpack_from(e + "H", head, 18)
    if machine == EM_NONE or (machine > EM_LAST and machine != EM_ALPHA):
        raise UnreadableError(f"bad e_machine {machine}: no machine has that number")
    flags_off = 36 if bits == 32 else 48
    if len(head) < flags_off + 4:
        raise UnreadableError("truncated ELF header")
    (flags,) = struct.unpack_from(e + "I", head, flags_off)

    def arch(
        name: str, abi: str | None, variant: str | None = None, detail: str | None = None
    ) -> ElfArch:
        return ElfArch(Platform("linux", name, variant), bits, endian, machine, abi, detail)

    if machine == EM_X86_64:
        return arch("amd64", "x86_64" if bits == 64 else None, None, None if bits == 64 else "x32")
    if machine == EM_386:
        return arch("386", "i386")
    if machine == EM_AARCH64:
        return arch("arm64" if endian == "little" else "arm64be", "arm64", "v8")
    if machine == EM_ARM:
        detail = "hard-float" if flags & EF_ARM_ABI_FLOAT_HARD else "soft-float"
        return arch("arm", "arm", None, detail)
    if machine == EM_PPC64:
        return arch("ppc64le" if endian == "little" else "ppc64", "ppc64le" if data == 1 else None)
    if machine == EM_S390:
        return arch("s390x" if bits == 64 else "s390", "s390x" if bits == 64 else None)
    if machine == EM_RISCV:
        return arch("riscv64" if bits == 64 else "riscv32", "riscv64" if bits == 64 else None)
    if machine == EM_LOONGARCH:
        return arch("loong64" if bits == 64 else "loong32", "loong64" if bits == 64 else None)
    if machine == EM_MIPS:
        le = endian == "little"
        if bits == 64:
            return arch("mips64le" if le else "mips64", "mips64le" if le else None, None, "n64")
        detail = "n32" if flags & EF_MIPS_ABI2 else "o32"
        return arch("mipsle" if le else "mips", None, None, detail)
    return arch(f"unknown-e_machine-{machine}", None)


def _check_range(what: str, offset: int, size: int, total: int) -> None:
    if offset < 0 or size < 0 or offset + size > total:
        raise UnreadableError(f"{what} lies outside the file (offset {offset}, size {size})")


class Segment(NamedTuple):
    type: int  # p_type
    flags: int
    offset: int
    vaddr: int
    filesz: int
    memsz: int
    align: int = 0  # p_align


class Section(NamedTuple):
    name: str
    type: int  # sh_type
    offset: int
    size: int
    link: int
    info: int
    entsize: int
    flags: int = 0  # sh_flags
    addralign: int = 0  # sh_addralign


# (format after e_ident, program header, section header) per ELF class; gABI field order
LAYOUT = {
    64: ("HHIQQQIHHHHHH", "IIQQQQQQ", "IIQQQQIIQQ"),
    32: ("HHIIIIIHHHHHH", "IIIIIIII", "IIIIIIIIII"),
}


class Reader:
    """The headers of an ELF file held in memory, every offset checked against its size."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        self.arch = elf_arch(data[:64])
        self.endian = self.arch.endian
        e = "<" if self.endian == "little" else ">"
        self.e = e
        bits = self.arch.bits
        ehdr, phdr, shdr = LAYOUT[bits]
        if self.size < (64 if bits == 64 else 52):
            raise UnreadableError("truncated ELF header")
        (self.e_type, _, _, self.entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
         shstrndx) = struct.unpack_from(e + ehdr, data, 16)  # fmt: skip
        self.segments: list[Segment] = []
        if phnum:
            if phentsize < struct.calcsize(phdr):
                raise UnreadableError(f"program header entry size {phentsize} is too small")
            _check_range("program headers", phoff, phnum * phentsize, self.size)
            for i in range(phnum):
                f = struct.unpack_from(e + phdr, data, phoff + i * phentsize)
                if bits == 64:  # type, flags, offset, vaddr, paddr, filesz, memsz, align
                    seg = Segment(f[0], f[1], f[2], f[3], f[5], f[6], f[7])
                else:  # type, offset, vaddr, paddr, filesz, memsz, flags, align
                    seg = Segment(f[0], f[6], f[1], f[2], f[4], f[5], f[7])
                _check_range(f"segment {_PT_NAMES.get(seg.type, seg.type)}", seg.offset,
                             seg.filesz, self.size)  # fmt: skip
                self.segments.append(seg)
        self.sections: list[Section] = []
        if shnum and shstrndx < shnum:
            if shentsize < struct.calcsize(shdr):
                raise UnreadableError(f"section header entry size {shentsize} is too small")
            _check_range("section headers", shoff, shnum * shentsize, self.size)
            raw = [struct.unpack_from(e + shdr, data, shoff + i * shentsize) for i in range(shnum)]
            # name, type, flags, addr, offset, size, link, info, addralign, entsize
            strtab = raw[shstrndx]
            names = b""
            if strtab[1] != SHT_NOBITS:
                _check_range("section name table", strtab[4], strtab[5], self.size)
                names = data[strtab[4] : strtab[4] + strtab[5]]
            for f in raw:
                end = names.find(b"\0", f[0])
                name = names[f[0] : end].decode("utf-8", "replace") if end >= 0 else ""
                sec = Section(name, f[1], f[4], f[5], f[6], f[7], f[9], f[2], f[8])
                if sec.type not in (SHT_NOBITS, SHT_NULL):
                    _check_range(f"section {name or '?'}", sec.offset, sec.size, self.size)
                self.sections.append(sec)

    def section_of_type(self, sh_type: int, name: str | None = None) -> Section | None:
        return next(
            (s for s in self.sections if s.type == sh_type and (name is None or s.name == name)),
            None,
        )

    def named(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def bytes_of(self, s: Section) -> bytes:
        return self.data[s.offset : s.offset + s.size] if s.type != SHT_NOBITS else b""

    def linked(self, s: Section) -> bytes:
        """The string table a section links to (sh_link)."""
        if not 0 < s.link < len(self.sections):
            raise UnreadableError(f"{s.name or 'a section'} links to no string table")
        return self.bytes_of(self.sections[s.link])

    def vaddr_offset(self, vaddr: int) -> int | None:
        for p in self.segments:
            if p.type == PT_LOAD and p.vaddr <= vaddr < p.vaddr + p.filesz:
                return p.offset + vaddr - p.vaddr
        return None

    def vaddr_bytes(self, vaddr: int, size: int) -> bytes | None:
        off = self.vaddr_offset(vaddr)
        return None if off is None else self.data[off : off + size]


def cstr(table: bytes, off: int, what: str) -> str:
    end = table.find(b"\0", off)
    if off >= len(table) or end < 0:
        raise UnreadableError(f"{what} names a string outside its string table")
    return table[off:end].decode("utf-8", "replace")


def symbols(r: Reader, table: Section) -> Iterator[tuple[int, int, int, int]]:
    """(index, st_name, st_shndx, st_value) of every symbol of a symbol table but the
    first (the null symbol); st_name is an offset into the table's strings."""
    entsize = 24 if r.arch.bits == 64 else 16
    if table.entsize != entsize:
        raise UnreadableError(f"{table.name} has entry size {table.entsize}, not {entsize}")
    raw = r.bytes_of(table)
    # Elf64_Sym name,info,other,shndx,value,size; Elf32_Sym name,value,size,info,other,shndx
    fmt = r.e + ("IBBHQQ" if entsize == 24 else "IIIBBH")
    shndx_i, value_i = (3, 4) if entsize == 24 else (5, 1)
    usable = len(raw) - len(raw) % entsize
    for i, fields in enumerate(struct.iter_unpack(fmt, raw[:usable])):
        if i:
            yield i, fields[0], fields[shndx_i], fields[value_i]


def uleb128(data: bytes, off: int) -> tuple[int, int, bool]:
    """An unsigned LEB128 number (Go's uvarint) at `off`: its value, the offset after
    it, and whether it ended (a byte without the continuation bit) within the data and
    64 bits. A longer run of continuation bytes is not followed: it would build an ever
    larger integer, a hang on a hostile file."""
    value = shift = 0
    while off < len(data) and shift < 64:
        b = data[off]
        off += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, off, True
        shift += 7
    return value, off, False


def has_interpreter(head: bytes) -> bool | None:
    """Whether the program headers in `head` (the file's first bytes) hold a PT_INTERP:
    a dynamically linked program. None if `head` is not an ELF file or too short. Reads
    only the ELF header and program header table, so it costs nothing on a large file."""
    if len(head) < 52 or not head.startswith(ELF_MAGIC) or head[4] not in (1, 2):
        return None
    end = "<" if head[5] == 1 else ">"
    if head[4] == 2:
        if len(head) < 64:
            return None
        phoff, phentsize, phnum = (struct.unpack_from(end + "Q", head, 32)[0],
                                   *struct.unpack_from(end + "HH", head, 54))  # fmt: skip
    else:
        phoff, phentsize, phnum = (struct.unpack_from(end + "I", head, 28)[0],
                                   *struct.unpack_from(end + "HH", head, 42))  # fmt: skip
    if phentsize < 4 or phoff + phentsize * phnum > len(head):
        return None
    return any(
        struct.unpack_from(end + "I", head, phoff + i * phentsize)[0] == 3 for i in range(phnum)
    )
