"""ELF files read into kcompat's own types. The only module that imports pyelftools.

The ELF header is decoded here by hand (it is 64 bytes and decides everything else);
pyelftools reads the segments, the dynamic section, the symbol and version tables.
Every count and offset that pyelftools would trust is checked against the file's size
first, so a hostile file ends in `UnreadableError`, never in a hang or a crash.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from enum import Enum

from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection, DynamicSegment
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerDefSection, GNUVerNeedSection, GNUVerSymSection
from elftools.elf.sections import SymbolTableSection

from kcompat.platform import Platform

ELF_MAGIC = b"\x7fELF"

# e_machine numbers (System V gABI, glibc elf.h) -> OCI architecture
EM_386, EM_MIPS, EM_PPC64, EM_S390, EM_ARM = 3, 8, 21, 22, 40
EM_X86_64, EM_AARCH64, EM_RISCV, EM_LOONGARCH = 62, 183, 243, 258
EF_ARM_ABI_FLOAT_HARD = 0x400  # glibc elf.h; set by the armhf toolchain
EF_ARM_ABI_FLOAT_SOFT = 0x200
EF_MIPS_ABI2 = 0x20  # n32
DF_1_PIE = 0x08000000
NT_GNU_ABI_TAG = 1
GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
# .ARM.attributes Tag_CPU_arch values (ARM IHI 0045) -> OCI variant
_ARM_CPU_ARCH_VARIANT = {1: "v5", 2: "v5", 3: "v5", 4: "v5", 5: "v5", 6: "v6", 7: "v6", 8: "v6"}
_ARM_CPU_ARCH_VARIANT.update({9: "v6", 10: "v7", 11: "v6", 12: "v6", 13: "v7", 14: "v8"})


class UnreadableError(Exception):
    """The file claims to be ELF but cannot be read: the reason is the message."""


class ElfType(str, Enum):
    EXEC = "exec"  # ET_EXEC: fixed-address executable
    PIE = "pie"  # ET_DYN meant to be run
    SHARED = "shared"  # ET_DYN library
    RELOCATABLE = "relocatable"  # .o, kernel modules
    CORE = "core"
    OTHER = "other"


class Linkage(str, Enum):
    DYNAMIC = "dynamic"  # has PT_INTERP: the loader runs first
    STATIC = "static"
    STATIC_PIE = "static-pie"
    NONE = "none"  # libraries and objects: not run directly


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


@dataclass(frozen=True)
class VersionNeed:
    library: str  # "libc.so.6"
    versions: tuple[str, ...]  # ("GLIBC_2.2.5", "GLIBC_2.34")


@dataclass(frozen=True)
class Symbol:
    name: str
    version: str | None  # "GLIBC_2.34"; None when unversioned


@dataclass(frozen=True)
class CodeRange:
    """Executable bytes and the address they are loaded at, for the disassembler."""

    vaddr: int
    data: bytes = field(repr=False)


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


def _abi_tag(note_data: bytes, endian: str) -> str | None:
    """The GNU ABI tag from raw note bytes: type 1, name "GNU", desc = os, major, minor, patch."""
    e = "<" if endian == "little" else ">"
    off = 0
    while off + 12 <= len(note_data):
        namesz, descsz, ntype = struct.unpack_from(e + "III", note_data, off)
        name_off = off + 12
        desc_off = name_off + ((namesz + 3) & ~3)
        end = desc_off + ((descsz + 3) & ~3)
        if end > len(note_data) or end <= off:
            return None
        name = note_data[name_off : name_off + namesz].rstrip(b"\0")
        if ntype == NT_GNU_ABI_TAG and name == b"GNU" and descsz >= 16:
            os_, major, minor, patch = struct.unpack_from(e + "IIII", note_data, desc_off)
            return f"{major}.{minor}.{patch}" if os_ == 0 else None
        off = end
    return None


def _uvarint(data: bytes, off: int) -> tuple[int, int]:
    value = shift = 0
    while off < len(data) and shift < 64:
        b = data[off]
        off += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, off
        shift += 7
    raise UnreadableError("bad varint in Go build info")


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)
        try:
            self.elf = ELFFile(io.BytesIO(data))
        except (ELFError, struct.error, ValueError, KeyError, IndexError) as e:
            raise UnreadableError(f"bad ELF headers: {e}") from None
        self.arch = elf_arch(data[:64])
        self.endian = self.arch.endian
        h = self.elf.header
        for what, off, num, ent in (
            ("program headers", h["e_phoff"], h["e_phnum"], h["e_phentsize"]),
            ("section headers", h["e_shoff"], h["e_shnum"], h["e_shentsize"]),
        ):
            if num:
                _check_range(what, off, num * ent, self.size)
        self.segments = [self.elf.get_segment(i) for i in range(h["e_phnum"])]
        self.sections = []
        if h["e_shnum"] and h["e_shstrndx"] < h["e_shnum"]:
            self.sections = list(self.elf.iter_sections())
        for s in self.sections:
            if s["sh_type"] not in ("SHT_NOBITS", "SHT_NULL"):
                _check_range(f"section {s.name or '?'}", s["sh_offset"], s["sh_size"], self.size)
        for p in self.segments:
            _check_range(f"segment {p['p_type']}", p["p_offset"], p["p_filesz"], self.size)

    def section(self, kind: type) -> object | None:
        return next((s for s in self.sections if isinstance(s, kind)), None)

    def vaddr_bytes(self, vaddr: int, size: int) -> bytes | None:
        for p in self.segments:
            if p["p_type"] == "PT_LOAD" and p["p_vaddr"] <= vaddr < p["p_vaddr"] + p["p_filesz"]:
                off = p["p_offset"] + vaddr - p["p_vaddr"]
                return self.data[off : off + size]
        return None


def _go_version(r: _Reader) -> str | None:
    """Go's build info (src/debug/buildinfo/buildinfo.go): the toolchain version string."""
    blob: bytes | None = None
    for s in r.sections:
        if s.name == ".go.buildinfo":
            blob = r.data[s["sh_offset"] : s["sh_offset"] + s["sh_size"]]
            break
    if blob is None:  # stripped section headers: the first writable PT_LOAD
        for p in r.segments:
            if p["p_type"] == "PT_LOAD" and p["p_flags"] & 2:
                blob = r.data[p["p_offset"] : p["p_offset"] + min(p["p_filesz"], 1 << 20)]
                break
    if not blob:
        return None
    at = -1
    for off in range(0, len(blob) - 32, 16):
        if blob.startswith(GO_BUILDINFO_MAGIC, off):
            at = off
            break
    if at < 0:
        return None
    ptr_size, flags = blob[at + 14], blob[at + 15]
    if flags & 2:  # Go 1.18+: inline varint-prefixed strings after the 32-byte header
        n, off = _uvarint(blob, at + 32)
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


def _versions(r: _Reader) -> tuple[tuple[VersionNeed, ...], tuple[str, ...], dict[int, str]]:
    """.gnu.version_r and .gnu.version_d, and the symbol-version index -> name map."""
    needs: list[VersionNeed] = []
    defs: list[str] = []
    index: dict[int, str] = {}
    limit = r.size // 8  # no table can have more entries than the file has 8-byte words
    vn = r.section(GNUVerNeedSection)
    if isinstance(vn, GNUVerNeedSection):
        if vn.num_versions() > limit:
            raise UnreadableError(".gnu.version_r claims more entries than the file holds")
        for verneed, auxes in vn.iter_versions():
            if verneed["vn_cnt"] > limit:
                raise UnreadableError(".gnu.version_r entry claims too many versions")
            names = []
            for aux in auxes:
                names.append(aux.name)
                index[aux["vna_other"] & 0x7FFF] = aux.name
            needs.append(VersionNeed(str(verneed.name), tuple(names)))
    vd = r.section(GNUVerDefSection)
    if isinstance(vd, GNUVerDefSection):
        if vd.num_versions() > limit:
            raise UnreadableError(".gnu.version_d claims more entries than the file holds")
        for verdef, auxes in vd.iter_versions():
            if verdef["vd_cnt"] > limit:
                raise UnreadableError(".gnu.version_d entry claims too many names")
            first = next(iter(auxes), None)
            if first is None:
                continue
            index[verdef["vd_ndx"]] = first.name
            if not verdef["vd_flags"] & 1:  # VER_FLG_BASE names the file itself
                defs.append(first.name)
    return tuple(needs), tuple(defs), index


def _undefined(r: _Reader, version_index: dict[int, str]) -> tuple[Symbol, ...]:
    """Undefined .dynsym entries with their versions. Decoded with struct rather than
    pyelftools' per-symbol parser, which is 50x slower on a libc-sized table."""
    dynsym = next(
        (s for s in r.sections if isinstance(s, SymbolTableSection) and s.name == ".dynsym"), None
    )
    if dynsym is None:
        return ()
    entsize = 24 if r.arch.bits == 64 else 16
    if dynsym["sh_entsize"] != entsize:
        raise UnreadableError(f".dynsym has entry size {dynsym['sh_entsize']}, not {entsize}")
    link = dynsym["sh_link"]
    if not 0 < link < len(r.sections):
        raise UnreadableError(".dynsym links to no string table")
    strtab = r.sections[link]
    strings = r.data[strtab["sh_offset"] : strtab["sh_offset"] + strtab["sh_size"]]
    table = r.data[dynsym["sh_offset"] : dynsym["sh_offset"] + dynsym["sh_size"]]
    e = "<" if r.endian == "little" else ">"
    # (st_name, st_shndx) positions: Elf64_Sym name,info,other,shndx,value,size;
    # Elf32_Sym name,value,size,info,other,shndx
    fmt = e + ("IBBHQQ" if entsize == 24 else "IIIBBH")
    name_i, shndx_i = (0, 3) if entsize == 24 else (0, 5)
    versym = r.section(GNUVerSymSection)
    versions = b""
    if isinstance(versym, GNUVerSymSection):
        versions = r.data[versym["sh_offset"] : versym["sh_offset"] + versym["sh_size"]]
    out: list[Symbol] = []
    usable = len(table) - len(table) % entsize
    for i, fields in enumerate(struct.iter_unpack(fmt, table[:usable])):
        if i == 0 or fields[shndx_i] != 0:  # SHN_UNDEF == 0
            continue
        off = fields[name_i]
        end = strings.find(b"\0", off)
        if off >= len(strings) or end < 0:
            raise UnreadableError(".dynsym names a string outside .dynstr")
        name = strings[off:end].decode("utf-8", "replace")
        if not name:
            continue
        version = None
        if 2 * i + 2 <= len(versions):
            (ndx,) = struct.unpack_from(e + "H", versions, 2 * i)
            version = version_index.get(ndx & 0x7FFF) if ndx & 0x7FFF > 1 else None
        out.append(Symbol(name, version))
    return tuple(out)


def _dynamic(r: _Reader) -> dict[str, list[object]]:
    tags: dict[str, list[object]] = {}
    dyn = r.section(DynamicSection)
    if dyn is None:
        dyn = next((p for p in r.segments if isinstance(p, DynamicSegment)), None)
    if dyn is None:
        return tags
    assert isinstance(dyn, (DynamicSection, DynamicSegment))
    for n, tag in enumerate(dyn.iter_tags()):
        if n > r.size // 8:
            raise UnreadableError("dynamic section does not end")
        t = tag.entry.d_tag
        if t in ("DT_NEEDED", "DT_RUNPATH", "DT_RPATH", "DT_SONAME"):
            value = {
                "DT_NEEDED": "needed",
                "DT_RUNPATH": "runpath",
                "DT_RPATH": "rpath",
                "DT_SONAME": "soname",
            }[t]
            tags.setdefault(t, []).append(getattr(tag, value))
        elif t in ("DT_FLAGS_1",):
            tags.setdefault(t, []).append(tag.entry.d_val)
    return tags


def _code(r: _Reader) -> tuple[CodeRange, ...]:
    ranges = []
    for p in r.segments:
        if p["p_type"] == "PT_LOAD" and p["p_flags"] & 1:  # PF_X
            off, size = p["p_offset"], p["p_filesz"]
            ranges.append(CodeRange(p["p_vaddr"], r.data[off : off + size]))
    return tuple(ranges)


def has_interpreter(head: bytes) -> bool | None:
    """Whether the program headers in `head` (the file's first bytes) hold a PT_INTERP:
    a dynamically linked program. None if `head` is not an ELF file or too short. Reads
    only the ELF header and program header table, so it costs nothing on a large file."""
    if len(head) < 52 or not head.startswith(b"\x7fELF") or head[4] not in (1, 2):
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


def read_elf(data: bytes, *, with_code: bool = False) -> ElfInfo:
    """Everything kcompat needs from one ELF file held in memory.

    Raises UnreadableError (the reason as its message) for anything malformed.
    """
    try:
        return _read(data, with_code)
    except UnreadableError:
        raise
    except (ELFError, struct.error, ValueError, KeyError, IndexError, TypeError) as e:
        raise UnreadableError(f"{type(e).__name__}: {e}") from None
    except (UnicodeDecodeError, RecursionError, OverflowError, AttributeError) as e:
        raise UnreadableError(f"{type(e).__name__}: {e}") from None
    except Exception as e:  # pyelftools' construct errors have no common base we can import
        if type(e).__module__.startswith(("construct", "elftools")):
            raise UnreadableError(f"{type(e).__name__}: {e}") from None
        raise


def _read(data: bytes, with_code: bool) -> ElfInfo:
    r = _Reader(data)
    interp: str | None = None
    abi_tag: str | None = None
    for p in r.segments:
        if p["p_type"] == "PT_INTERP":
            raw = data[p["p_offset"] : p["p_offset"] + p["p_filesz"]]
            interp = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        elif p["p_type"] == "PT_NOTE" and abi_tag is None:
            abi_tag = _abi_tag(data[p["p_offset"] : p["p_offset"] + p["p_filesz"]], r.endian)
    if abi_tag is None:
        for s in r.sections:
            if s.name == ".note.ABI-tag":
                abi_tag = _abi_tag(data[s["sh_offset"] : s["sh_offset"] + s["sh_size"]], r.endian)
    tags = _dynamic(r)
    needs, defs, index = _versions(r)
    flags_1 = int(str(tags.get("DT_FLAGS_1", [0])[0]))
    soname = str(tags["DT_SONAME"][0]) if "DT_SONAME" in tags else None
    has_dynamic = any(p["p_type"] == "PT_DYNAMIC" for p in r.segments)
    e_type = r.elf.header["e_type"]
    if e_type == "ET_EXEC":
        etype = ElfType.EXEC
    elif e_type == "ET_DYN":
        pie = flags_1 & DF_1_PIE or (interp is not None and soname is None)
        etype = ElfType.PIE if pie else ElfType.SHARED
    elif e_type == "ET_REL":
        etype = ElfType.RELOCATABLE
    elif e_type == "ET_CORE":
        etype = ElfType.CORE
    else:
        etype = ElfType.OTHER
    if interp is not None:
        linkage = Linkage.DYNAMIC
    elif etype is ElfType.EXEC:
        linkage = Linkage.STATIC
    elif etype is ElfType.PIE or (
        etype is ElfType.SHARED and has_dynamic and not tags.get("DT_NEEDED") and soname is None
    ):
        linkage = Linkage.STATIC_PIE
    else:
        linkage = Linkage.NONE

    def paths(tag: str) -> tuple[str, ...]:
        return tuple(p for v in tags.get(tag, []) for p in str(v).split(":") if p)

    return ElfInfo(
        arch=_refine_arm(r) if r.arch.machine == EM_ARM else r.arch,
        type=etype,
        linkage=linkage,
        interpreter=interp,
        needed=tuple(str(n) for n in tags.get("DT_NEEDED", [])),
        runpath=paths("DT_RUNPATH"),
        rpath=paths("DT_RPATH"),
        soname=soname,
        abi_tag=abi_tag,
        version_needs=needs,
        version_defs=defs,
        undefined=_undefined(r, index),
        go_version=_go_version(r),
        entry=int(r.elf.header["e_entry"]),
        code=_code(r) if with_code else (),
    )


def _refine_arm(r: _Reader) -> ElfArch:
    """ARM variant from .ARM.attributes Tag_CPU_arch, when the file has it."""
    variant = None
    for s in r.sections:
        if s.name == ".ARM.attributes":
            variant = _arm_cpu_arch(r.data[s["sh_offset"] : s["sh_offset"] + s["sh_size"]])
    a = r.arch
    return ElfArch(Platform("linux", "arm", variant), a.bits, a.endian, a.machine, a.abi, a.detail)


def _arm_cpu_arch(blob: bytes) -> str | None:
    """Tag_CPU_arch (6) from an "aeabi" build attributes subsection, as an OCI variant."""
    if not blob.startswith(b"A"):
        return None
    for m in re.finditer(rb"aeabi\x00\x01", blob):
        attrs = blob[m.end() + 4 :]  # skip the file-scope subsection size
        i = 0
        while i < len(attrs) and i < 512:
            tag = attrs[i]
            i += 1
            if tag in (4, 5, 67):  # NTBS-valued tags: CPU_raw_name, CPU_name, conformance
                end = attrs.find(b"\0", i)
                if end < 0:
                    return None
                i = end + 1
                continue
            value, i = _uleb(attrs, i)
            if tag == 6:
                return _ARM_CPU_ARCH_VARIANT.get(value)
    return None


def _uleb(data: bytes, off: int) -> tuple[int, int]:
    value = shift = 0
    while off < len(data):
        b = data[off]
        off += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            break
        shift += 7
    return value, off


def go_functions(data: bytes, wanted: frozenset[str]) -> dict[int, str]:
    """Entry address -> name of the `wanted` Go functions, from .symtab or, in a stripped
    binary, from Go's own function table `.gopclntab` (layouts of Go 1.16 and 1.18+,
    src/debug/gosym/pclntab.go). Empty when neither can be read."""
    try:
        r = _Reader(data)
        found: dict[int, str] = {}
        for s in r.sections:
            if isinstance(s, SymbolTableSection) and s.name == ".symtab" and s["sh_entsize"]:
                for sym in s.iter_symbols():
                    if sym.name in wanted:
                        found[sym["st_value"]] = sym.name
        if found:
            return found
        for s in r.sections:
            if s.name == ".gopclntab":
                return _pclntab(r.data[s["sh_offset"] : s["sh_offset"] + s["sh_size"]], wanted)
    except (UnreadableError, ELFError, struct.error, ValueError, IndexError):
        pass
    return {}


def _pclntab(tab: bytes, wanted: frozenset[str]) -> dict[int, str]:
    if len(tab) < 16:
        return {}
    magic = int.from_bytes(tab[:4], "little")
    ptr = tab[7]
    if ptr not in (4, 8) or magic not in (0xFFFFFFFA, 0xFFFFFFF0, 0xFFFFFFF1):
        return {}

    def word(i: int) -> int:
        return int.from_bytes(tab[8 + i * ptr : 8 + (i + 1) * ptr], "little")

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
        funcoff = int.from_bytes(tab[base + field_size : base + 2 * field_size], "little")
        f = pcln + funcoff
        entry = int.from_bytes(tab[f : f + field_size], "little")
        nameoff = int.from_bytes(tab[f + field_size : f + field_size + 4], "little")
        start = funcname + nameoff
        end = tab.find(b"\0", start, start + 256)
        if end < 0:
            continue
        name = tab[start:end].decode("utf-8", "replace")
        if name in wanted:
            found[text_start + entry] = name
    return found
