"""Static syscall recovery: find the syscall instructions in machine code and the number
loaded into the syscall register just before each.

Why capstone: it is the one maintained disassembler with Python bindings and manylinux
wheels for every arch kcompat reads (x86, ARM, AArch64, s390x...), so no compiler or
binutils is needed at run time, and its "lite" mode (address, size, mnemonic, operands)
is fast enough to decode only short windows. Only those windows are decoded: the
instruction bytes are found first (`0f 05`, `svc #0`...), then the few instructions
before each are disassembled and searched backwards, within the straight-line code, for
the immediate that sets the number. A site whose number comes from memory, another
register or a different path is counted as unresolved, never guessed.

Go passes the number as the first argument of its syscall functions (`syscall.Syscall`,
`x/sys/unix.Syscall`...). Where the binary keeps its symbol table, direct calls to those
functions are sites too, with the argument register (Go's register ABI) or the first
stack slot (ABI0, before Go 1.17) as the place the number is loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import capstone

from kcompat.elf import CodeRange

WINDOW = 48  # bytes decoded before an x86 site
MAX_BACK = 12  # instructions searched backwards


@dataclass(frozen=True)
class _Isa:
    cs_arch: int
    cs_mode: int
    patterns: tuple[bytes, ...]  # syscall instruction encodings
    align: int  # instruction alignment
    fixed: bool  # fixed-width instructions: the window before a site decodes from any aligned start
    regs: frozenset[str]  # names of the syscall-number register
    call_regs: frozenset[str]  # the first argument register for Go calls
    stack_slot: str | None  # ABI0 first stack argument, as capstone prints it


_X86_64 = _Isa(
    capstone.CS_ARCH_X86,
    capstone.CS_MODE_64,
    (b"\x0f\x05",),
    1,
    False,
    frozenset({"rax", "eax", "ax", "al"}),
    frozenset({"rax", "eax"}),
    "qword ptr [rsp]",
)
_I386 = _Isa(
    capstone.CS_ARCH_X86,
    capstone.CS_MODE_32,
    (b"\xcd\x80",),
    1,
    False,
    frozenset({"eax", "ax", "al"}),
    frozenset({"eax"}),
    "dword ptr [esp]",
)
_ARM64 = _Isa(
    capstone.CS_ARCH_ARM64,
    capstone.CS_MODE_ARM,
    ((0xD4000001).to_bytes(4, "little"),),
    4,
    True,
    frozenset({"x8", "w8"}),
    frozenset({"x0", "w0"}),
    None,
)
_ARM = _Isa(
    capstone.CS_ARCH_ARM,
    capstone.CS_MODE_ARM,
    ((0xEF000000).to_bytes(4, "little"),),
    4,
    True,
    frozenset({"r7"}),
    frozenset(),
    None,
)
# Debian's armhf is built as Thumb-2: `svc #0` is `df00`, two bytes, in mixed 2/4-byte code
_THUMB = _Isa(
    capstone.CS_ARCH_ARM,
    capstone.CS_MODE_THUMB,
    (b"\x00\xdf",),
    2,
    False,
    frozenset({"r7"}),
    frozenset(),
    None,
)
ISAS: Mapping[str, tuple[_Isa, ...]] = {
    "x86_64": (_X86_64,),
    "i386": (_I386,),
    "arm64": (_ARM64,),
    "arm": (_ARM, _THUMB),
}

_CONTROL = re.compile(
    r"^(j|call|ret|loop|bl|br|bx|cb|tb|ldm|pop|svc|syscall|int|it"
    r"|b(eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?(\.|$))"
)
_IMPLICIT_EAX = re.compile(r"^(cpuid|rdtsc|rdtscp|lods|xchg|cmpxchg|mul|imul|div|idiv|cwd|cdq|cqo)")
_IMM = re.compile(r"^#?(-?(?:0x[0-9a-f]+|\d+))$")
_SITE = re.compile(r"^(syscall|int|svc|call|bl)$")


@dataclass(frozen=True)
class SyscallScan:
    """What the machine code of one file says about its syscalls."""

    abi: str
    numbers: tuple[int, ...]  # resolved syscall numbers, sorted, unique
    sites: int  # syscall instructions (and Go syscall calls) found
    unresolved: int  # sites whose number could not be recovered
    method: str
    unresolved_at: tuple[int, ...] = field(default=(), repr=False)  # first few addresses


def supported(abi: str | None) -> bool:
    return abi in ISAS


def _value(mnemonic: str, ops: str, dests: frozenset[str]) -> tuple[bool, int | None]:
    """(writes the register?, the immediate written if known)."""
    parts = [p.strip() for p in ops.split(",")]
    dest = parts[0] if parts else ""
    if dest in dests:
        if mnemonic in ("mov", "movz", "movw", "movs", "mov.w", "movw.w") and len(parts) == 2:
            m = _IMM.match(parts[1])
            if m:
                return True, int(m.group(1), 0)
        if mnemonic == "xor" and len(parts) == 2 and parts[1] == dest:
            return True, 0
        if mnemonic == "orr" and len(parts) == 3 and parts[1] in ("wzr", "xzr"):
            m = _IMM.match(parts[2])
            if m:
                return True, int(m.group(1), 0)
        return True, None
    if mnemonic.startswith("mov") and dest and dest.split(".")[0] in dests:
        return True, None
    return False, None


def _recover(insns: list[Insn], dests: frozenset[str], x86: bool) -> int | None:
    """The number loaded into `dests` in the straight-line code before the last insn."""
    for _addr, _size, mnem, ops in reversed(insns[:-1][-MAX_BACK:]):
        if _CONTROL.match(mnem):
            return None
        if x86 and "eax" in dests and _IMPLICIT_EAX.match(mnem):
            return None
        writes, value = _value(mnem, ops, dests)
        if writes:
            return value if value is not None and 0 <= value < 1 << 16 else None
    return None


Insn = tuple[int, int, str, str]  # capstone lite: address, size, mnemonic, operands


def _window(md: capstone.Cs, code: CodeRange, pos: int, isa: _Isa) -> list[Insn] | None:
    """Decoded instructions ending exactly with the one at offset `pos`."""
    if isa.fixed:
        start = max(0, pos - MAX_BACK * isa.align)
        insns = list(md.disasm_lite(code.data[start : pos + isa.align], code.vaddr + start))
        return insns if insns and insns[-1][0] == code.vaddr + pos else None
    for back in range(WINDOW, 0, -isa.align):
        start = pos - back
        if start < 0:
            continue
        insns = list(md.disasm_lite(code.data[start : pos + 16], code.vaddr + start))
        for i, insn in enumerate(insns):
            if insn[0] == code.vaddr + pos:
                return insns[: i + 1]
            if insn[0] > code.vaddr + pos:
                break
    return None


def _find_calls(code: CodeRange, isa: _Isa, targets: Mapping[int, str]) -> Iterable[int]:
    """Offsets of direct calls to the Go syscall functions."""
    data = code.data
    if isa.cs_arch == capstone.CS_ARCH_X86:
        for m in re.finditer(b"\xe8", data):
            off = m.start()
            if off + 5 > len(data):
                break
            rel = int.from_bytes(data[off + 1 : off + 5], "little", signed=True)
            if (code.vaddr + off + 5 + rel) in targets:
                yield off
    elif isa is _ARM64:
        for off in range(0, len(data) - 3, 4):
            word = int.from_bytes(data[off : off + 4], "little")
            if word >> 26 == 0b100101:  # BL imm26
                imm = word & 0x3FFFFFF
                if imm & 0x2000000:
                    imm -= 1 << 26
                if (code.vaddr + off + imm * 4) in targets:
                    yield off


def scan_code(
    abi: str, code: Iterable[CodeRange], go_syscall_funcs: Mapping[int, str] | None = None
) -> SyscallScan | None:
    """Recover syscall numbers from executable segments; None if the ABI is not supported."""
    isas = ISAS.get(abi)
    if isas is None:
        return None
    numbers: set[int] = set()
    sites = unresolved = 0
    unresolved_at: list[int] = []
    code = list(code)
    for isa in isas:
        md = capstone.Cs(isa.cs_arch, isa.cs_mode)
        x86 = isa.cs_arch == capstone.CS_ARCH_X86

        def site(
            code_range: CodeRange,
            pos: int,
            dests: frozenset[str],
            isa: _Isa = isa,
            md: capstone.Cs = md,
            x86: bool = x86,
        ) -> None:
            nonlocal sites, unresolved
            insns = _window(md, code_range, pos, isa)
            if insns is None or not _SITE.match(insns[-1][2]):
                return  # not an instruction boundary: data in a code segment
            sites += 1
            number = _recover(insns, dests, x86)
            if number is None:
                unresolved += 1
                if len(unresolved_at) < 8:
                    unresolved_at.append(code_range.vaddr + pos)
            else:
                numbers.add(number)

        for c in code:
            for pattern in isa.patterns:
                start = 0
                while (pos := c.data.find(pattern, start)) >= 0:
                    start = pos + 1
                    if pos % isa.align == 0:
                        site(c, pos, isa.regs)
            if go_syscall_funcs:
                dests = isa.call_regs | ({isa.stack_slot} if isa.stack_slot else frozenset())
                for pos in _find_calls(c, isa, go_syscall_funcs):
                    site(c, pos, frozenset(dests))
    method = f"capstone {capstone.__version__}: {abi} syscall instructions"
    if go_syscall_funcs:
        method += " and calls to Go's syscall functions"
    return SyscallScan(abi, tuple(sorted(numbers)), sites, unresolved, method, tuple(unresolved_at))
