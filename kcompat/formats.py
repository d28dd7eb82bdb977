"""Executable formats told apart by their first bytes, and the small ones read in full.

ELF goes to kcompat.elf. PE (Windows) and Mach-O (macOS) are read here just far enough
to say what they are, so an image carrying them is recognised for what it is; `#!`
scripts give their interpreter.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from kcompat.elffile import ELF_MAGIC

HEAD_SIZE = 256  # Linux reads this much for `#!` (BINPRM_BUF_SIZE, 128 before 5.1)


class Format(str, Enum):
    ELF = "elf"
    PE = "pe"
    MACHO = "macho"
    SCRIPT = "script"
    OTHER = "other"


_MACHO_THIN = {
    b"\xfe\xed\xfa\xce": ">",
    b"\xce\xfa\xed\xfe": "<",
    b"\xfe\xed\xfa\xcf": ">",
    b"\xcf\xfa\xed\xfe": "<",
}
_MACHO_FAT = (b"\xca\xfe\xba\xbe", b"\xca\xfe\xba\xbf")


def detect(head: bytes) -> Format:
    """The format from the first bytes of a file (at least 8 are needed for Mach-O fat)."""
    if head.startswith(ELF_MAGIC):
        return Format.ELF
    if head.startswith(b"#!"):
        return Format.SCRIPT
    if head.startswith(b"MZ"):
        return Format.PE  # confirmed by read_pe: DOS stubs without a PE header are OTHER
    magic = bytes(head[:4])  # hashable when head is a bytearray
    if magic in _MACHO_THIN:
        return Format.MACHO
    if magic in _MACHO_FAT and len(head) >= 8:
        # Java class files share 0xcafebabe; their next word (version) is >= 45,
        # a fat Mach-O's is its slice count (file(1) uses the same test).
        (count,) = struct.unpack_from(">I", head, 4)
        if 0 < count < 20:
            return Format.MACHO
    return Format.OTHER


# IMAGE_FILE_MACHINE_* (Microsoft PE format documentation)
_PE_MACHINES = {0x14C: "386", 0x8664: "amd64", 0xAA64: "arm64", 0x1C4: "arm", 0x1C0: "arm"}
_PE_SUBSYSTEMS = {1: "native", 2: "windows-gui", 3: "windows-console", 10: "efi-application"}
# Mach-O cpu_type_t (mach/machine.h)
_MACHO_CPUS = {
    7: "386",
    0x01000007: "amd64",
    12: "arm",
    0x0100000C: "arm64",
    0x0200000C: "arm64_32",
    18: "ppc",
    0x01000012: "ppc64",
}
_MACHO_TYPES = {1: "object", 2: "executable", 6: "dylib", 8: "bundle"}


@dataclass(frozen=True)
class PEInfo:
    machine: str  # OCI architecture name or "unknown-0x...."
    subsystem: str
    dll: bool


@dataclass(frozen=True)
class MachOInfo:
    cpus: tuple[str, ...]  # one for a thin file, one per slice for a fat one
    fat: bool
    filetype: str


@dataclass(frozen=True)
class ScriptInfo:
    interpreter: str  # as Linux 5.1+ (a 256-byte buffer) parses the `#!` line
    argument: str | None
    head: bytes = b""  # the file's first HEAD_SIZE bytes, for the kernel's own parse
    # ("" interpreter: execve refuses the line, see parse_shebang)


class NotThisFormat(Exception):
    """The bytes are not (or not readably) this format; the message says why."""


def read_pe(data: bytes) -> PEInfo:
    if len(data) < 0x40:
        raise NotThisFormat("truncated DOS header")
    (lfanew,) = struct.unpack_from("<I", data, 0x3C)
    if lfanew + 24 > len(data) or data[lfanew : lfanew + 4] != b"PE\0\0":
        raise NotThisFormat("MZ file without a PE header")
    machine, _, _, _, _, opt_size, characteristics = struct.unpack_from(
        "<HHIIIHH", data, lfanew + 4
    )
    opt = lfanew + 24
    subsystem = "unknown"
    if opt_size >= 70 and opt + 70 <= len(data):
        (sub,) = struct.unpack_from("<H", data, opt + 68)
        subsystem = _PE_SUBSYSTEMS.get(sub, f"unknown-{sub}")
    return PEInfo(
        machine=_PE_MACHINES.get(machine, f"unknown-0x{machine:04x}"),
        subsystem=subsystem,
        dll=bool(characteristics & 0x2000),
    )


def read_macho(data: bytes) -> MachOInfo:
    """The file's CPUs, fatness and type. `data` may be a bytearray (a layer's file as the
    tar reader hands it over): the magic is looked up as bytes."""
    magic = bytes(data[:4])
    if magic in _MACHO_THIN:
        e = _MACHO_THIN[magic]
        if len(data) < 16:
            raise NotThisFormat("truncated Mach-O header")
        cpu, _, filetype = struct.unpack_from(e + "iiI", data, 4)
        cpu &= 0xFFFFFFFF
        return MachOInfo(
            (_MACHO_CPUS.get(cpu, f"unknown-{cpu:#x}"),), False, _MACHO_TYPES.get(filetype, "other")
        )
    if magic in _MACHO_FAT:
        wide = data[3] == 0xBF
        if len(data) < 8:
            raise NotThisFormat("truncated Mach-O fat header")
        (count,) = struct.unpack_from(">I", data, 4)
        entry = 32 if wide else 20
        if not 0 < count < 20 or 8 + count * entry > len(data):
            raise NotThisFormat("truncated or implausible Mach-O fat header")
        cpus = []
        filetype = "other"
        for i in range(count):
            (cpu,) = struct.unpack_from(">I", data, 8 + i * entry)
            cpus.append(_MACHO_CPUS.get(cpu, f"unknown-{cpu:#x}"))
            off, size = struct.unpack_from(">QQ" if wide else ">II", data, 8 + i * entry + 8)
            if off + size > len(data):  # a fat file is read whole: its slices are all there
                raise NotThisFormat(f"Mach-O fat slice {i} lies outside the file "
                                    f"(offset {off}, size {size})")  # fmt: skip
            if i == 0 and off + 16 <= len(data) and bytes(data[off : off + 4]) in _MACHO_THIN:
                filetype = read_macho(data[off : off + 16]).filetype
        return MachOInfo(tuple(cpus), True, filetype)
    raise NotThisFormat("not a Mach-O file")


class ShebangError(Exception):
    """The kernel refuses the `#!` line: execve fails with ENOEXEC (exec format error)."""


def _spacetab(c: int) -> bool:
    return c in (0x20, 0x09)


def parse_shebang(
    head: bytes, bufsize: int = HEAD_SIZE, truncate: bool = False
) -> tuple[str, str | None]:
    """The `#!` line as the kernel's fs/binfmt_script.c reads the first `bufsize` bytes
    of a file (NUL padded): the interpreter ends at a space, tab or NUL (a carriage
    return is part of it); one optional argument, the rest of the line with spaces and
    tabs trimmed. A line that does not fit in the buffer: Linux 5.0+ accepts it only if
    the interpreter's name ends inside it (else ENOEXEC); older kernels (`truncate`)
    cut it silently. Raises ShebangError where execve returns ENOEXEC."""
    buf = head[:bufsize].ljust(bufsize, b"\0")
    last = bufsize - 1  # the byte the kernel overwrites with a NUL when no newline fits
    nl = buf.find(b"\n")
    if nl >= 0:
        end = nl
    elif truncate:
        end = last
    else:
        first = next((i for i in range(2, last) if not _spacetab(buf[i])), None)
        if first is None:
            raise ShebangError("the #! line is only spaces")
        if not any(_spacetab(buf[i]) or buf[i] == 0 for i in range(first, last)):
            raise ShebangError(f"the #! interpreter's name does not fit in {bufsize} bytes")
        end = last
    line = buf[2:end].split(b"\0", 1)[0] if truncate else buf[2:end]
    while line and _spacetab(line[-1]):
        line = line[:-1]
    start = 0
    while start < len(line) and _spacetab(line[start]):
        start += 1
    if start == len(line) or line[start] == 0:
        raise ShebangError("no interpreter after #!")
    sep = start
    while sep < len(line) and not (_spacetab(line[sep]) or line[sep] == 0):
        sep += 1
    interp = line[start:sep]
    arg: bytes | None = None
    if sep < len(line) and line[sep] != 0:
        rest = line[sep:].lstrip(b" \t").split(b"\0", 1)[0]
        arg = rest or None
    return interp.decode("utf-8", "surrogateescape"), (
        arg.decode("utf-8", "surrogateescape") if arg is not None else None
    )


def read_script(head: bytes) -> ScriptInfo:
    """The `#!` line of a file's first bytes (at least HEAD_SIZE of them when it has)."""
    try:
        interp, arg = parse_shebang(head)
    except ShebangError:
        interp, arg = "", None
    return ScriptInfo(interp, arg, head[:HEAD_SIZE])
