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

x86-64, i386, arm64 and arm (ARM and Thumb) are described here; s390x, ppc64le, riscv64
and mips64le in kcompat.disasm_isas (encodings, registers, what each instruction does to
them, and the kernel sources), searched by `_scan_isa` below. loong64 is not read:
capstone 5 has no LoongArch (UNSUPPORTED).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kcompat.elf import CodeRange, CodeView

if TYPE_CHECKING:  # imported where code is decoded: loading capstone costs about 50 ms of
    import capstone  # CPU, which a check answered from the caches never needs

    from kcompat import disasm_isas  # so is this (its tables and patterns, four arches)

WINDOW = 48  # bytes decoded before an x86 site
MAX_BACK = 12  # instructions searched backwards


@dataclass(frozen=True)
class _Isa:
    cs_arch: str  # capstone's names for its constants (CS_ARCH_X86, CS_MODE_64...)
    cs_mode: tuple[str, ...]  # OR-ed together
    patterns: tuple[bytes, ...]  # syscall instruction encodings
    align: int  # instruction alignment
    fixed: bool  # fixed-width instructions: the window before a site decodes from any aligned start
    regs: frozenset[str]  # names of the syscall-number register
    call_regs: frozenset[str]  # the first argument register for Go calls
    stack_slot: str | None  # ABI0 first stack argument, as capstone prints it


_X86_64 = _Isa(
    "CS_ARCH_X86",
    ("CS_MODE_64",),
    (b"\x0f\x05",),
    1,
    False,
    frozenset({"rax", "eax", "ax", "al"}),
    frozenset({"rax", "eax"}),
    "qword ptr [rsp]",
)
_I386 = _Isa(
    "CS_ARCH_X86",
    ("CS_MODE_32",),
    (b"\xcd\x80",),
    1,
    False,
    frozenset({"eax", "ax", "al"}),
    frozenset({"eax"}),
    "dword ptr [esp]",
)
_ARM64 = _Isa(
    "CS_ARCH_ARM64",
    ("CS_MODE_ARM",),
    ((0xD4000001).to_bytes(4, "little"),),
    4,
    True,
    frozenset({"x8", "w8"}),
    frozenset({"x0", "w0"}),
    None,
)
_ARM = _Isa(
    "CS_ARCH_ARM",
    ("CS_MODE_ARM",),
    ((0xEF000000).to_bytes(4, "little"),),
    4,
    True,
    frozenset({"r7"}),
    frozenset(),
    None,
)
# Debian's armhf is built as Thumb-2: `svc #0` is `df00`, two bytes, in mixed 2/4-byte code
_THUMB = _Isa(
    "CS_ARCH_ARM",
    ("CS_MODE_THUMB",),
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


# ABIs with a syscall table whose machine code is not read, and why ({version}: capstone's)
UNSUPPORTED: Mapping[str, str] = {
    "loong64": "capstone {version} has no LoongArch disassembler",
}


def capstone_version() -> str:
    import capstone

    return str(capstone.__version__)


def supported(abi: str | None) -> bool:
    from kcompat import disasm_isas

    return abi in ISAS or abi in disasm_isas.ISAS


def unsupported_reason(abi: str) -> str:
    """Why the machine code of `abi` is not read, for the "syscalls unknown" method text."""
    why = UNSUPPORTED.get(abi)
    why = why.format(version=capstone_version()) if why else None
    return f"static syscall recovery is not implemented for {abi}" + (f" ({why})" if why else "")


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


@dataclass(frozen=True)
class _Code:
    """A CodeRange with its bytes in hand (a CodeView copied out)."""

    vaddr: int
    data: bytes


@functools.cache
def decoder(arch: int, mode: int) -> capstone.Cs:
    """One capstone handle per (arch, mode) and process: opening one costs about 1 ms,
    which per file was a tenth of a layer's scan. Used with disasm_lite only (no options
    set), so sharing it is safe."""
    import capstone

    return capstone.Cs(arch, mode)


@functools.cache
def named_decoder(arch: str, modes: tuple[str, ...]) -> capstone.Cs:
    """`decoder` for an ISA described by capstone's constant names."""
    import capstone

    mode = 0
    for name in modes:
        mode |= getattr(capstone, name)
    return decoder(getattr(capstone, arch), mode)


def _window(md: capstone.Cs, code: _Code, pos: int, isa: _Isa) -> list[Insn] | None:
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


def _find_calls(code: _Code, isa: _Isa, targets: Mapping[int, str]) -> Iterable[int]:
    """Offsets of direct calls to the Go syscall functions."""
    data = code.data
    if isa.cs_arch == "CS_ARCH_X86":
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
    from kcompat import disasm_isas

    if abi not in disasm_isas.ISAS and abi not in ISAS:
        return None
    ranges = [_Code(c.vaddr, c.data.materialized() if isinstance(c.data, CodeView) else c.data)
              for c in code]  # read byte by byte below: copied out of the file once  # fmt: skip
    if abi in disasm_isas.ISAS:
        found, n_sites, n_unresolved, at = _scan_isa(abi, ranges, go_syscall_funcs)
        return SyscallScan(abi, tuple(sorted(found)), n_sites, n_unresolved,
                           _method(abi, go_syscall_funcs), tuple(at))  # fmt: skip
    isas = ISAS.get(abi)
    if isas is None:
        return None
    numbers: set[int] = set()
    sites = unresolved = 0
    unresolved_at: list[int] = []
    for isa in isas:
        md = named_decoder(isa.cs_arch, isa.cs_mode)
        x86 = isa.cs_arch == "CS_ARCH_X86"

        def site(
            code_range: _Code,
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

        for c in ranges:
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
    return SyscallScan(abi, tuple(sorted(numbers)), sites, unresolved,
                       _method(abi, go_syscall_funcs), tuple(unresolved_at))  # fmt: skip


def _method(abi: str, go_syscall_funcs: Mapping[int, str] | None) -> str:
    method = f"capstone {capstone_version()}: {abi} syscall instructions"
    if go_syscall_funcs:
        method += " and calls to Go's syscall functions"
    return method


# -- s390x, ppc64le, riscv64, mips64le (their encodings and semantics: kcompat.disasm_isas) --

_NOP4 = b"\0\0\0\0"  # MIPS `nop` (sll $0, $0, 0)


@dataclass(frozen=True)
class _Found:
    value: int | None  # what the location holds, if known
    at: int = -1  # the instruction on the path that writes it (-1: none does)
    # no instruction on the path writes register `reg` back to insns[start], which follows
    # a jump, call or return: a call to one of insns[start:end + 1] passes its value in
    entry: tuple[int, int, str] | None = None  # (start, end, reg)


def _resolve(isa: disasm_isas.Isa, insns: list[Insn], end: int, loc: disasm_isas.Loc,
             depth: int = 0) -> _Found:  # fmt: skip
    """What `loc` holds on the fall-through path just before insns[end]."""
    from kcompat import disasm_isas

    Kind = disasm_isas.Kind
    if loc == isa.zero:
        return _Found(0)
    for j in range(end - 1, max(-1, end - 1 - disasm_isas.MAX_BACK), -1):
        e = isa.effect(insns[j][2], insns[j][3], loc)
        if e.kind in (Kind.NONE, Kind.PASS):
            continue
        if e.kind is Kind.STOP:  # the path starts after it (after its delay slot on MIPS)
            start = j + 1 + isa.delay_slot
            return _Found(None, entry=(start, end, loc) if isinstance(loc, str) else None)
        if isa.delay_slot and (
            j == 0 or isa.effect(insns[j - 1][2], insns[j - 1][3], loc).kind is Kind.STOP
        ):
            return _Found(None, j)  # in a jump's delay slot, or after an unknown one
        if e.kind is Kind.SET:
            return _Found(e.value, j)
        if e.kind is Kind.CLOBBER or depth >= 4:
            return _Found(None, j)
        src = _resolve(isa, insns, j, e.src, depth + 1)
        if src.value is None:  # a copy passes the path's start on
            return _Found(None, j, src.entry if e.kind is Kind.COPY else None)
        if e.kind is Kind.ADD:
            return _Found(disasm_isas.sext((src.value + e.value) & disasm_isas.MASK, 64), j)
        return _Found(src.value | e.value if e.kind is Kind.OR else src.value, j)
    return _Found(None)


def _go_number(isa: disasm_isas.Isa, insns: list[Insn]) -> int | None:
    """The first argument of a call to a Go syscall function (kcompat.disasm_isas says how)."""
    from kcompat import disasm_isas

    Kind = disasm_isas.Kind
    slot = _resolve(isa, insns, len(insns), isa.go_slot)
    if isa.go_reg is None:
        return slot.value
    if slot.at >= 0:  # stored as an ABI0 argument, not a new frame
        _, _, mnem, ops = insns[slot.at]
        if isa.effect(mnem, ops, isa.go_slot[0]).kind is Kind.NONE:
            return slot.value
    reg = _resolve(isa, insns, len(insns), isa.go_reg)
    for _, _, mnem, ops in insns[reg.at + 1 :] if reg.value is not None else ():
        parts = disasm_isas.split(ops)  # stored to the stack: an ABI0 argument's temporary
        for m in (m for p in parts[1:2] if parts[0] == isa.go_reg and (m := disasm_isas.mem(p))):
            if isa.effect(mnem, ops, (isa.go_slot[0], m[0])).kind is not Kind.NONE:
                return None
    return reg.value


def _decode(md: capstone.Cs, isa: disasm_isas.Isa, code: _Code, pos: int, size: int
            ) -> list[Insn] | None:  # fmt: skip
    """The instructions before the one of `size` bytes at offset `pos` (for variable-width
    ISAs the decoding must also land on it), or None."""
    from kcompat import disasm_isas

    data, vaddr = code.data, code.vaddr
    if isa.length is None:
        start = max(0, pos - disasm_isas.MAX_BACK * 4)
        while start < pos:
            insns = list(md.disasm_lite(data[start:pos], vaddr + start))
            got = start + sum(i[1] for i in insns)
            if got == pos:
                return insns
            start = got + 4  # an undecodable word: the window starts after it
        return []
    # The windows from every start before the site vote: at a real boundary nearly all of
    # them fall into step with the instruction stream and land on it; inside a longer
    # instruction only the few that stay out of step do (Debian's s390x busybox and fzf:
    # >= 80% against <= 30%, checked against a linear sweep of .text).
    lands: dict[int, bool] = {}
    starts = [pos - back for back in range(isa.window, 0, -isa.align) if pos - back >= 0]
    landing = []
    for start in starts:
        path, off = [], start
        while off < pos and off not in lands:
            path.append(off)
            step = isa.length(data, off)
            off = off + step if step else pos + 1
        landed = off == pos or lands.get(off, False)
        lands.update(dict.fromkeys(path, landed))
        if landed:
            landing.append(start)
    if 2 * len(landing) <= len(starts) and starts:
        return None
    for start in landing or [pos]:
        insns = list(md.disasm_lite(data[start : pos + size], vaddr + start))
        if insns and insns[-1][0] == vaddr + pos and insns[-1][1] == size:
            return insns[:-1]
    return None


def _scan_isa(
    abi: str, code: list[_Code], go_funcs: Mapping[int, str] | None
) -> tuple[set[int], int, int, list[int]]:
    """(numbers, sites, unresolved sites, the first unresolved addresses) for `abi`.

    A number register that no instruction on the path writes, back to the start of a
    function (a path after a jump or return), comes from the callers: glibc's syscall()
    and, since 2.41, __syscall_cancel take the number as an argument. Each direct call to
    that start is then read the same way (three calls deep at most); the site counts as
    resolved when every such call gives a number, and its numbers count in any case."""
    from kcompat import disasm_isas

    isa = disasm_isas.ISAS[abi]
    md = named_decoder(isa.cs_arch, isa.cs_mode)
    ranges = list(code)
    calls: dict[int, list[tuple[_Code, int]]] = {}  # target -> direct calls, when needed

    def callers(addr: int) -> list[tuple[_Code, int]]:
        if not calls:
            calls[-1] = []
            for c in ranges:
                for pos in disasm_isas.find(c.data, isa.calls, isa.align):
                    if (target := isa.call_target(c.data, pos, c.vaddr)) is not None:
                        calls.setdefault(target, []).append((c, pos))
        return calls.get(addr, [])

    def passed(insns: list[Insn], f: _Found, depth: int) -> tuple[set[int], bool]:
        """The numbers direct calls pass into the path's start; whether all of them do."""
        if f.entry is None or depth == 0:
            return set(), False
        start, end, reg = f.entry
        sites = [cs for i in insns[start : end + 1] for cs in callers(i[0])]
        values, complete = set(), bool(sites)
        for c, pos in sites:
            w = None if isa.delay_slot and c.data[pos + 4 : pos + 8] != _NOP4 else (
                _decode(md, isa, c, pos, isa.call_size))  # fmt: skip
            g = _Found(None) if w is None else _resolve(isa, w, len(w), reg)
            more, ok = ({g.value}, True) if g.value is not None else passed(w or [], g, depth - 1)
            values |= more
            complete &= ok
        return values, complete

    found: list[tuple[int, set[int], bool]] = []  # (site address, its numbers, all of them?)
    for c in ranges:
        for pos in disasm_isas.find(c.data, isa.sites, isa.align):
            if isa.is_site is not None and not isa.is_site(c.data, pos):
                continue
            insns = _decode(md, isa, c, pos, isa.site_size)
            if insns is None:
                continue  # not an instruction boundary: data in a code segment
            if isa.number_at >= 0 and c.data[pos + isa.number_at]:  # `svc N`: N is the number
                found.append((c.vaddr + pos, {c.data[pos + isa.number_at]}, True))
                continue
            f = _resolve(isa, insns, len(insns), isa.number)
            values, ok = ({f.value}, True) if f.value is not None else passed(insns, f, 3)
            found.append((c.vaddr + pos, values, ok))
        for pos in disasm_isas.find(c.data, isa.calls, isa.align) if go_funcs else ():
            if isa.call_target(c.data, pos, c.vaddr) not in (go_funcs or {}):
                continue
            if isa.delay_slot and c.data[pos + 4 : pos + 8] != _NOP4:
                found.append((c.vaddr + pos, set(), False))  # the delay slot runs first
            elif (insns := _decode(md, isa, c, pos, isa.call_size)) is not None:
                n = _go_number(isa, insns)
                found.append((c.vaddr + pos, set() if n is None else {n}, n is not None))
    valid = range(1 << 16)
    numbers = {n for _, values, _ in found for n in values if n in valid}
    unresolved = [a for a, values, ok in found if not ok or not all(n in valid for n in values)]
    return numbers, len(found), len(unresolved), unresolved[:8]
