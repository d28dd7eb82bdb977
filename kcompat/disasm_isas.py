"""What static syscall recovery needs to know of s390x, ppc64le, riscv64 and mips64le
(kcompat.disasm searches their code with it; x86 and ARM are described there).

The syscall instruction and the number's register, per the kernel and `man 2 syscall`:
- s390x: `svc N` (0a NN): N > 0 is the number, `svc 0` takes it from r1
  (arch/s390/kernel/syscall.c: `nr = regs->int_code & 0xffff; if (!nr) nr =
  regs->gprs[1] & 0xffff`). Big-endian; instructions are 2, 4 or 6 bytes.
- ppc64le: `sc` (0x44000002) and, since Linux 5.9, `scv 0` (0x44000001), the number in
  r0 (Documentation/arch/powerpc/syscall64-abi.rst; arch/powerpc/kernel/interrupt_64.S).
  capstone 5 does not decode `scv`: a site is its exact aligned word and only the code
  before it is decoded. glibc 2.33+ has an `scv 0` twin for each `sc`, reached only by a
  branch (an unconditional branch precedes it): the twin stays unresolved.
- riscv64: `ecall` (0x00000073), the number in a7 (arch/riscv/kernel/traps.c,
  do_trap_ecall_u: `syscall = regs->a7`). RVC: instructions are 2 or 4 bytes.
- mips64le (n64): `syscall` (SPECIAL, function 0x0c, any code field), the number in v0,
  5000 + n (arch/mips/kernel/scall64-n64.S). Branches have a delay slot.
- loong64: `syscall 0` with a7 (arch/loongarch/kernel/syscall.c); not read, capstone 5
  has no LoongArch (the pre-release 6.0.0a11 adds it, and renames other arches).

"Straight-line code before the site" is its fall-through path: conditional branches out
of it are crossed (the path's values do not change), calls, jumps, returns, traps, other
syscalls and MIPS delay slots of jumps end it. The value is followed through register
copies, `lis`/`lui` + `ori`/`addi` pairs and add-immediates on that path; anything else
(memory, arithmetic, an instruction not understood writing it) leaves the site unresolved.
A path back to a function's start goes on at the function's direct calls (kcompat.disasm).

Go (cmd/compile/abi-internal.md): ppc64 passes the first integer argument in R3 (Go
1.18+), riscv64 in X10/a0 (1.19+); mips64 has no register ABI, and s390x's (R2,
internal/abi/abi_s390x.go) is newer than the Go releases checked here: both are read as
ABI0, the first stack slot above the link area (32(r1) ppc64, 8(sp) riscv64, 8($sp)
mips64, 8(%r15) s390x). Assembly callees (syscall.rawSyscallNoError, rawVforkSyscall)
keep ABI0 in register-ABI binaries, so on ppc64le and riscv64 a call whose first slot is
stored on the path is read as ABI0, any other as the register ABI, unless that register
is also stored to the stack on the path (a temporary for ABI0 arguments: unresolved).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Union

MAX_BACK = 24  # instructions searched backwards (glibc 2.41 passes syscall numbers on)
MASK = (1 << 64) - 1

Insn = tuple[int, int, str, str]  # capstone lite: address, size, mnemonic, operands
Loc = Union[str, tuple[str, int]]  # a register, or a stack slot (base register, offset)


class Kind(Enum):
    NONE = "none"  # does not touch the location
    PASS = "pass"  # a conditional branch: the fall-through path goes on unchanged
    STOP = "stop"  # ends the fall-through path
    CLOBBER = "clobber"  # writes the location with a value not known here
    SET = "set"  # writes an immediate
    COPY = "copy"  # writes another register's value
    ADD = "add"  # writes another register's value plus an immediate
    OR = "or"  # writes another register's value or'ed with an immediate


@dataclass(frozen=True)
class Effect:
    kind: Kind
    value: int = 0
    src: str = ""


_NONE, _PASS, _STOP, _CLOBBER = (Effect(k) for k in (Kind.NONE, Kind.PASS, Kind.STOP, Kind.CLOBBER))
_IMM = re.compile(r"^(-?(?:0x[0-9a-f]+|\d+))$")
_MEM = re.compile(r"^(-?(?:0x[0-9a-f]+|\d+))?\((.*)\)$")
_COMMA = re.compile(r",(?![^()]*\))")


def _imm(text: str) -> int | None:
    m = _IMM.match(text.strip())
    return int(m.group(1), 0) if m else None


def split(ops: str) -> list[str]:
    """Operands, split at the commas outside parentheses ("8(%r2,%r15)" is one)."""
    return [p.strip() for p in _COMMA.split(ops) if p.strip()]


def mem(text: str) -> tuple[int, list[str]] | None:
    """(offset, the parts inside the parentheses) of "D(B)", "D(X,B)", "D(L,B)", "(B)"."""
    m = _MEM.match(text)
    if not m:
        return None
    return int(m.group(1) or "0", 0), [p.strip() for p in m.group(2).split(",")]


def sext(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _store(ops: list[str], size: int, loc: Loc, base: str, src: str | None) -> Effect:
    """A store of `size` bytes (0: unknown) from register `src` to the memory operand
    among `ops`, seen from a stack slot `loc` of 8 bytes at (base, offset)."""
    if not isinstance(loc, tuple):
        return _NONE
    slot_base, slot_off = loc
    where = next((m for o in ops if (m := mem(o)) is not None), None)
    if where is None:  # an indexed form ("stdx r3, r1, r9"): any address off the base
        return _CLOBBER if slot_base in ops else _NONE
    off, regs = where
    named = [r for r in regs if _imm(r) is None]
    if slot_base not in named:
        return _NONE
    if named != [slot_base] or size <= 0:  # indexed or of unknown length: may overlap
        return _CLOBBER
    if off + size <= slot_off or off >= slot_off + 8:
        return _NONE
    if off == slot_off and size == 8 and src is not None:
        return Effect(Kind.COPY, src=src)
    return _CLOBBER


# -- s390x ---------------------------------------------------------------------------

_S390_COND = "(?:o|h|nle|l|nhe|lh|ne|e|nlh|he|nl|le|nh|no)"
_S390_PASS = re.compile(rf"^(?:j|jg|b){_S390_COND}r?$|^(?:c|cl)g?(?:r|i|h|f)?[jb]{_S390_COND}$")
_S390_LOOP = re.compile(r"^(?:brct[gh]?|bct(?:r|g|gr)?|brx(?:h|hg|le|lg)|bx(?:h|hg|le|leg))$")
_S390_STOP = re.compile(
    r"^(?:j|jg|b|br|bras|brasl|bas|basr|bal|balr|bassm|bsm|svc|ex|exrl|lpswe?|diag|sigp"
    r"|trap[24]|sie|tbeginc?|tend|tabort|pc|pr|pt|ptlb)$|^(?:c|cl)g?(?:r|i|h|f)?[jb]$"
)
_S390_MASKED = re.compile(r"^(?:bc|bcr|brc|brcl)$")
_S390_COMPARE = re.compile(
    r"^(?:c|cr|cg|cgr|cgf|cgfr|ch|chy|chi|cghi|chsi|cghsi|chhsi|cl|clr|clg|clgr|clgf|clgfr"
    r"|clfi|clgfi|cli|cliy|clc|clm|clmh|clmy|cy|cly|chrl|cghrl|crl|cgrl|clrl|clgrl|clhrl"
    r"|clghrl|clgfrl|cgfrl|clhhsi|clfhsi|clghsi|cfi|cgfi|cih|clih|chf|clhf|tm|tmll|tmlh"
    r"|tmhl|tmhh|tmh|tml|tmy)$"
)
# long, string and crypto instructions that write registers besides their first operand
_S390_COMPLEX = re.compile(
    r"^(?:tr|cu|km|kimd|klmd|kdsa|prno|ppno|mvcl|clcl|mvst|clst|srst|cuse|cksm|cmpsc|upt"
    r"|plo|lpq|cds|csst|ectg|ecag|ptff|pfmf|stfle|dfltcc|sortl|nnpa|lmd)"
)
_S390_PAIR = re.compile(r"^(?:dr?|dlg?r?|dsgf?r?|mr?|mfy|mlg?r?|mg(?:rk)?|s[lr]d[al])$")
_S390_STORE = {"stc": 1, "stcy": 1, "sth": 2, "sthy": 2, "st": 4, "sty": 4, "stg": 8,
               "std": 8, "stdy": 8, "ste": 4, "stey": 4, "strv": 4, "strvg": 8, "strvh": 2,
               "mvi": 1, "mviy": 1, "mvhhi": 2, "mvhi": 4, "mvghi": 8}  # fmt: skip


def _s390_reg(text: str) -> int | None:
    return int(text[2:]) if re.fullmatch(r"%r\d+", text) else None


def _s390_writes(mnem: str, parts: list[str], reg: str) -> bool:
    """Whether a non-store, non-compare instruction writes `reg`: its first operand, a
    load-multiple range, or the odd half of an even/odd register pair."""
    first = parts[0] if parts else ""
    n = _s390_reg(reg)
    if mnem in ("lm", "lmy", "lmg", "lmh") and len(parts) == 3:
        lo, hi = _s390_reg(parts[0]), _s390_reg(parts[1])
        return lo is None or hi is None or n is None or (n - lo) % 16 <= (hi - lo) % 16
    if _S390_PAIR.match(mnem) and (r := _s390_reg(first)) is not None and n == r + 1:
        return True
    return first == reg and not mnem.startswith(("st", "mv", "xc", "nc", "oc"))


def _s390(mnem: str, ops: str, loc: Loc) -> Effect:
    parts = split(ops)
    first = parts[0] if parts else ""
    if _S390_LOOP.match(mnem):
        return _CLOBBER if first == loc else _PASS
    if _S390_PASS.match(mnem):
        return _PASS
    if _S390_MASKED.match(mnem):
        mask = _imm(first)
        return _NONE if mask == 0 else _STOP if mask in (None, 15) else _PASS
    if _S390_STOP.match(mnem):
        return _STOP
    if mnem in ("nop", "nopr"):
        return _NONE
    if _S390_COMPLEX.match(mnem):
        return _CLOBBER
    if isinstance(loc, tuple) and _s390_writes(mnem, parts, loc[0]):
        return _CLOBBER
    if mnem.startswith(("st", "mv", "xc", "nc", "oc")):  # stores: the first operand is read
        size = _S390_STORE.get(mnem, 0)
        if mnem in ("stm", "stmy", "stmg") and len(parts) == 3:
            lo, hi = _s390_reg(parts[0]), _s390_reg(parts[1])
            if lo is not None and hi is not None:
                size = ((hi - lo) % 16 + 1) * (8 if mnem == "stmg" else 4)
        elif mnem in ("mvc", "xc", "nc", "oc") and (m := mem(first)) and _imm(m[1][0]) is not None:
            size = int(m[1][0], 0)
        if isinstance(loc, tuple):
            if mnem == "mvghi" and len(parts) == 2 and (v := _imm(parts[1])) is not None:
                e = _store(parts[:1], 8, loc, "%r15", "%r0")
                return Effect(Kind.SET, value=v) if e.kind is Kind.COPY else e
            return _store(parts[1:] if mnem[:2] == "st" else parts[:1], size, loc,
                          "%r15", first if mnem in ("stg", "strvg") else None)  # fmt: skip
        return _NONE
    if isinstance(loc, tuple) or _S390_COMPARE.match(mnem):
        return _NONE
    if mnem in ("lm", "lmy", "lmg", "lmh") or _S390_PAIR.match(mnem):
        return _CLOBBER if _s390_writes(mnem, parts, loc) else _NONE
    if first != loc:
        return _NONE
    # the number register of `svc 0` is read as `gprs[1] & 0xffff`: 32-bit forms suffice
    low_ok = loc == "%r1"
    src = parts[1] if len(parts) > 1 else ""
    v = _imm(src)
    if mnem in ("lghi", "lgfi", "llill", "llilf") or (mnem == "lhi" and low_ok):
        return Effect(Kind.SET, value=v) if v is not None else _CLOBBER
    if mnem == "llilh" and v is not None:
        return Effect(Kind.SET, value=v << 16)
    if mnem in ("la", "lay"):
        if v is not None:
            return Effect(Kind.SET, value=v)
        m = mem(src)
        if m and len(m[1]) == 1 and _s390_reg(m[1][0]) is not None:
            return Effect(Kind.ADD, value=m[0], src=m[1][0])
        return _CLOBBER
    if mnem in ("lgr", "lgfr", "llgfr", "ltgr") or (mnem in ("lr", "ltr") and low_ok):
        return Effect(Kind.COPY, src=src) if _s390_reg(src) is not None else _CLOBBER
    if (mnem in ("aghi", "agfi") or (mnem in ("ahi", "afi") and low_ok)) and v is not None:
        return Effect(Kind.ADD, value=v, src=loc)
    if mnem in ("xgr", "xr") and src == loc:
        return Effect(Kind.SET, value=0)
    return _CLOBBER


# -- ppc64le -------------------------------------------------------------------------

_PPC_UNCOND = {"b", "ba", "bl", "bla", "blr", "blrl", "bctr", "bctrl", "btar", "btarl"}
_PPC_COND = re.compile(
    r"^b(?=[dtfelgsnu])(?:dnz|dz)?(?:t|f)?(?:eq|ne|lt|le|gt|ge|so|ns|un|nu|nl|ng)?"
    r"(?:lr|ctr|tar)?(?P<link>l)?a?$"
)
_PPC_COMPARE = re.compile(r"^cmpl?[wd]?i?$")
_PPC_UPDATE = re.compile(r"^(?:l|st)[a-z]*ux?$")  # load/store with update: writes the base
_PPC_STORE = {"stb": 1, "sth": 2, "stw": 4, "std": 8, "stfs": 4, "stfd": 8, "stq": 16,
              "stbx": 1, "sthx": 2, "stwx": 4, "stdx": 8}  # fmt: skip


def _ppc(mnem: str, ops: str, loc: Loc) -> Effect:
    mnem = mnem.rstrip("+-")
    parts = split(ops)
    first = parts[0] if parts else ""
    if mnem in _PPC_UNCOND or mnem.startswith(("bc", "t", "sc", "rfi", "rfs", "hrfi", "attn")):
        return _STOP
    if (m := _PPC_COND.match(mnem)) and mnem != "b":
        return _STOP if m.group("link") else _PASS
    if _PPC_UPDATE.match(mnem) and len(parts) >= 2:
        m2 = mem(parts[1])
        base = m2[1][0] if m2 else parts[1]
        if base == loc or (isinstance(loc, tuple) and base == loc[0]):
            return _CLOBBER
    if mnem.startswith("st"):  # stores: the first operand is read
        if isinstance(loc, tuple):
            return _store(parts[1:], _PPC_STORE.get(mnem, 0), loc, "r1",
                          first if mnem == "std" else None)  # fmt: skip
        return _NONE
    if isinstance(loc, tuple):
        return _CLOBBER if first == loc[0] else _NONE
    if _PPC_COMPARE.match(mnem) or mnem.startswith(("mt", "dcb", "icb")):
        return _NONE
    if mnem in ("lmw", "lswi", "lswx", "lq", "lqarx"):
        return _CLOBBER
    if first != loc:
        return _NONE
    src = parts[1] if len(parts) > 1 else ""
    v = _imm(parts[2]) if len(parts) > 2 else _imm(src)
    if mnem == "li" and v is not None:
        return Effect(Kind.SET, value=sext(v, 16))
    if mnem == "lis" and v is not None:
        return Effect(Kind.SET, value=sext(v, 16) << 16)
    if mnem in ("addi", "addis") and v is not None and len(parts) == 3:
        shifted = sext(v, 16) << (16 if mnem == "addis" else 0)
        if src == "r0":  # rA = 0 reads as the value 0
            return Effect(Kind.SET, value=shifted)
        return Effect(Kind.ADD, value=shifted, src=src)
    if mnem in ("ori", "oris") and v is not None and len(parts) == 3:
        return Effect(Kind.OR, value=(v & 0xFFFF) << (16 if mnem == "oris" else 0), src=src)
    if mnem in ("mr", "mr.", "extsw") and len(parts) == 2:
        return Effect(Kind.COPY, src=src)
    return _CLOBBER


# -- riscv64 and mips64le ---------------------------------------------------------------


@dataclass(frozen=True)
class _LoadStore:
    """What the reading of riscv64 and mips64 code needs: their instructions' shapes agree
    (the first operand is written, but by stores), their mnemonics differ."""

    passes: re.Pattern[str]  # conditional branches
    stops: re.Pattern[str]  # jumps, calls, returns, traps
    reads: re.Pattern[str]  # instructions whose first register operand is only read
    stores: Mapping[str, int]  # store mnemonic -> bytes stored
    gpr_store: str  # the 8-byte store of a register
    sp: str
    zero: str
    lui_shift: int
    adds: frozenset[str]  # rd = rs + imm (`ori`: rs | imm)


_RV = _LoadStore(
    re.compile(r"^(?:c\.)?b(?:eq|ne|lt|ge|ltu|geu|eqz|nez|lez|gez|ltz|gtz|gt|le|gtu|leu)$"),
    re.compile(r"^(?:c\.)?(?:jal|jalr|j|jr|ret|call|tail|ecall|ebreak|unimp|mret|sret|wfi)$"),
    re.compile(r"^$"),
    {"sb": 1, "sh": 2, "sw": 4, "sd": 8, "c.sw": 4, "c.sd": 8, "c.swsp": 4, "c.sdsp": 8,
     "fsw": 4, "fsd": 8, "c.fsd": 8, "c.fsdsp": 8, "c.fsw": 4, "c.fswsp": 4},
    "sd", "sp", "zero", 12, frozenset({"addi", "addiw", "ori"}),
)  # fmt: skip
_MIPS = _LoadStore(
    re.compile(r"^b(?:eq|ne|eqz|nez|lez|gtz|ltz|gez|c[0-3](?:t|f|eqz|nez)|bit[01](?:32)?"
               r"|n?z\.[bhwdv])$"),
    # jumps, calls, "likely" branches (their delay slot runs only if taken), the rest of b*
    re.compile(r"^(?:j|jal|jalr|jalx|jr|jrc|jalrc|jic|jialc|eret|deret|syscall|sdbbp|wait)"
               r"(?:\.hb)?$|^b"),
    re.compile(r"^(?:t(?:eq|ne|ge|geu|lt|ltu)i?u?|mt(?:c[0-3]|hc1|hi|lo)|dmtc[0-3]|ctc1"
               r"|d?multu?|d?divu?|maddu?|msubu?|cache|pref|synci|sync)$"),
    {"sb": 1, "sh": 2, "sw": 4, "sd": 8, "swl": 4, "swr": 4, "sdl": 8, "sdr": 8, "swc1": 4,
     "sdc1": 8, "sc": 4, "scd": 8},
    "sd", "$sp", "$zero", 16, frozenset({"addiu", "daddiu", "addi", "daddi", "ori"}),
)  # fmt: skip


def _load_store(isa: _LoadStore, mnem: str, ops: str, loc: Loc) -> Effect:
    parts = split(ops)
    first = parts[0] if parts else ""
    if isa.passes.match(mnem):
        return _PASS
    if isa.stops.match(mnem):
        return _STOP
    if mnem in isa.stores:
        if isinstance(loc, tuple):
            src = first if mnem in (isa.gpr_store, "c.sd", "c.sdsp") else None
            return _store(parts[1:], isa.stores[mnem], loc, isa.sp, src)
        if mnem not in ("sc", "scd"):  # MIPS store-conditional also writes its register
            return _NONE
    if isinstance(loc, tuple):
        return _CLOBBER if first == loc[0] else _NONE
    if first != loc or isa.reads.match(mnem):
        return _NONE
    src = parts[1] if len(parts) > 1 else ""
    v = _imm(parts[-1]) if len(parts) > 1 else None
    if v is not None and mnem in ("li", "c.li"):
        return Effect(Kind.SET, value=v)
    if v is not None and mnem in ("lui", "c.lui"):
        return Effect(Kind.SET, value=sext(v << isa.lui_shift, 32))
    if v is not None and mnem in isa.adds and len(parts) == 3:
        if src == isa.zero:
            return Effect(Kind.SET, value=v)
        return Effect(Kind.OR if mnem == "ori" else Kind.ADD, value=v, src=src)
    if v is not None and mnem in ("c.addi", "c.addiw"):
        return Effect(Kind.ADD, value=v, src=loc)
    if mnem in ("mv", "c.mv", "sext.w", "move") and len(parts) == 2:
        return Effect(Kind.COPY, src=src)
    return _CLOBBER


def _riscv(mnem: str, ops: str, loc: Loc) -> Effect:
    return _load_store(_RV, mnem, ops, loc)


def _mips(mnem: str, ops: str, loc: Loc) -> Effect:
    return _load_store(_MIPS, mnem, ops, loc)


# -- the ISAs --------------------------------------------------------------------------


def _riscv_length(data: bytes, off: int) -> int:
    low = data[off]
    return 2 if low & 3 != 3 else 4 if low & 0x1F != 0x1F else 0  # 48-bit+: not RV64GC


def _ppc_calls(data: bytes, off: int, vaddr: int) -> int | None:  # `bl`: I-form, LK=1
    w = int.from_bytes(data[off : off + 4], "little")
    return vaddr + off + sext(w & 0x3FFFFFC, 26) if w >> 26 == 18 and w & 3 == 1 else None


def _riscv_calls(data: bytes, off: int, vaddr: int) -> int | None:
    """`jal ra, imm` (Go's direct calls; far ones go through linker trampolines), and
    `auipc ra, hi; jalr ra, lo(ra)` (`call` beyond jal's 1 MiB, as glibc's are)."""
    w = int.from_bytes(data[off : off + 4], "little")
    if w & 0xFFF == 0x097:  # auipc ra
        nxt = int.from_bytes(data[off + 4 : off + 8], "little")
        ok = nxt & 0xFFFFF == 0x080E7  # jalr ra, imm(ra)
        return vaddr + off + sext(w & 0xFFFFF000, 32) + sext(nxt >> 20, 12) if ok else None
    imm = (
        (w >> 31) << 20
        | ((w >> 12) & 0xFF) << 12
        | ((w >> 20) & 1) << 11
        | ((w >> 21) & 0x3FF) << 1
    )
    return vaddr + off + sext(imm, 21) if w & 0xFFF == 0x0EF else None


def _mips_calls(data: bytes, off: int, vaddr: int) -> int | None:
    """`jal` (in the 256 MiB region of its delay slot) and `bal` (bgezal $zero)."""
    w = int.from_bytes(data[off : off + 4], "little")
    if w >> 16 == 0x0411:
        return vaddr + off + 4 + (sext(w & 0xFFFF, 16) << 2)
    return ((vaddr + off + 4) & ~0x0FFFFFFF) | (w & 0x3FFFFFF) << 2 if w >> 26 == 3 else None


def _s390_calls(data: bytes, off: int, vaddr: int) -> int | None:  # `brasl %r14, halfwords`
    rel = int.from_bytes(data[off + 2 : off + 6], "big", signed=True)
    return vaddr + off + 2 * rel if data[off : off + 2] == b"\xc0\xe5" else None


Leads = tuple[tuple[bytes, int], ...]  # byte strings that start a search, and where they sit


@dataclass(frozen=True)
class Isa:
    cs_arch: str  # capstone's constant names (kcompat.disasm.named_decoder): capstone is
    cs_mode: tuple[str, ...]  # imported only where code is decoded
    sites: Leads  # the syscall instruction
    site_size: int
    align: int
    length: Callable[[bytes, int], int] | None  # variable-width: an instruction's size
    window: int  # bytes decoded before a site (variable-width ISAs)
    number: str  # the syscall number's register
    effect: Callable[[str, str, Loc], Effect]
    zero: str  # the register that reads as 0
    calls: Leads  # direct calls (their target computed by `call_target`)
    call_size: int
    call_target: Callable[[bytes, int, int], int | None]
    go_reg: str | None  # Go's first integer argument register (register ABI)
    go_slot: tuple[str, int]  # Go's first ABI0 argument: (stack pointer, offset)
    is_site: Callable[[bytes, int], bool] | None = None  # confirms a lead's whole encoding
    number_at: int = -1  # the byte of the instruction that holds its number (s390x)
    delay_slot: bool = False


def find(data: bytes, leads: Leads, align: int) -> list[int]:
    """Aligned offsets where one of `leads` sits (overlapping ones too)."""
    found = set()
    for lead, at in leads:
        i = data.find(lead)
        while i >= 0:
            if i >= at and (i - at) % align == 0:
                found.add(i - at)
            i = data.find(lead, i + 1)
    return sorted(found)


def _mips_syscall(data: bytes, off: int) -> bool:  # SPECIAL, any code field, funct 0x0c
    return int.from_bytes(data[off : off + 4], "little") & 0xFC00003F == 0x0C


ISAS: Mapping[str, Isa] = {
    "s390x": Isa(
        "CS_ARCH_SYSZ", ("CS_MODE_BIG_ENDIAN",), ((b"\x0a", 0),), 2, 2,
        lambda d, o: (2, 4, 4, 6)[d[o] >> 6], 96, "%r1", _s390, "",
        ((b"\xc0\xe5", 0),), 6, _s390_calls, None, ("%r15", 8), number_at=1,
    ),
    "ppc64le": Isa(
        "CS_ARCH_PPC", ("CS_MODE_64", "CS_MODE_LITTLE_ENDIAN"),
        ((b"\x02\x00\x00\x44", 0), (b"\x01\x00\x00\x44", 0)), 4, 4, None, 0, "r0", _ppc, "",
        tuple((bytes([b]), 3) for b in range(0x48, 0x4C)), 4, _ppc_calls, "r3", ("r1", 32),
    ),
    "riscv64": Isa(
        "CS_ARCH_RISCV", ("CS_MODE_RISCV64", "CS_MODE_RISCVC"),
        ((b"\x73\x00\x00\x00", 0),), 4, 2, _riscv_length, 96, "a7", _riscv, "zero",
        ((b"\xef", 0), (b"\x97", 0)), 4, _riscv_calls, "a0", ("sp", 8),
    ),
    "mips64le": Isa(
        "CS_ARCH_MIPS", ("CS_MODE_MIPS64", "CS_MODE_LITTLE_ENDIAN"),
        tuple((bytes([b]), 0) for b in (0x0C, 0x4C, 0x8C, 0xCC)), 4, 4, None, 0, "$v0",
        _mips, "$zero", ((b"\x11\x04", 2), *((bytes([b]), 3) for b in range(0x0C, 0x10))),
        4, _mips_calls, None, ("$sp", 8), is_site=_mips_syscall, delay_slot=True,
    ),
}  # fmt: skip
