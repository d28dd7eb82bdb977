"""Machine code that uses x86-64's legacy vsyscall page (0xffffffffff600000-0xffffffffff600fff:
gettimeofday at +0x0, time at +0x400, getcpu at +0x800).

How the kernel treats it (`vsyscall=` boot option, arch/x86/entry/vsyscall/vsyscall_64.c):
`emulate` maps the page readable and emulates calls into it; `xonly` (Linux 5.3+, the
default since) emulates calls but the page cannot be read, so a load from it faults;
`none` faults on both. A fault is SIGSEGV: the container exits 139 and dmesg says
"vsyscall attempted with vsyscall=none" (compat-facts).

How code reaches the page: an absolute address, as a 32-bit sign-extended immediate or
displacement (`mov $0xffffffffff600400,%rax; call *%rax`, old glibc's time()) or a 64-bit
`movabs`. The bytes `[0x00-0x0f] 0x60 0xff` are found first, then the instruction that
holds them is decoded with capstone to tell an address taken to be called (a call) from
a memory operand (a read: a `mov` from the page, or `call *0xffffffffff600000(,...)`,
which reads the pointer from the page).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from kcompat.elf import CodeRange, CodeView

PAGE = 0xFFFFFFFFFF600000
# the operand's top bytes, `[0x00-0x0f] 0x60 0xff`: searched as the literal 0x60 0xff
# (a leading class makes the regex engine try every byte: 30x slower on large code)
_NEEDLE = re.compile(b"\x60\xff")  # re's literal search: 3x bytes.find's for two bytes
_ADDR = re.compile(r"0xffffffffff60[0-9a-f]{4}")
MAX_SITES = 64  # candidate byte patterns examined per file (data in code segments)


@dataclass(frozen=True)
class VsyscallUse:
    kind: str  # "call" (needs emulate or xonly) | "read" (needs emulate)
    address: int  # where in the file's address space the instruction is
    target: int  # the vsyscall address it uses
    instruction: str

    def __str__(self) -> str:
        return f"{self.instruction} at {self.address:#x} ({self.kind} of {self.target:#x})"


def _classify(mnemonic: str, op_str: str) -> tuple[str, int] | None:
    m = _ADDR.search(op_str)
    if m is None:
        return None
    target = int(m.group(0), 16)
    if not PAGE <= target < PAGE + 0x1000:
        return None
    memory = "[" in op_str and m.start() > op_str.index("[") and mnemonic != "lea"
    return ("read" if memory else "call"), target


def find(code: Iterable[CodeRange]) -> VsyscallUse | None:
    """The first use of the vsyscall page in x86-64 code: a read if there is one (it
    is the stricter need), else a call; None if the code never names the page."""
    import capstone

    from kcompat.disasm import decoder

    md = decoder(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    found: VsyscallUse | None = None
    examined = 0
    for c in code:
        buf, lo, hi = _span(c.data)
        for m in _NEEDLE.finditer(buf, lo + 1, hi):
            hit_at = m.start()
            if buf[hit_at - 1] > 0x0F:
                continue
            examined += 1
            if examined > MAX_SITES:
                return found
            imm = hit_at - 2  # the operand's first byte
            if imm < lo:
                continue
            for back in range(1, 11):  # an x86 instruction before its 4-byte operand
                start = imm - back
                if start < lo:
                    break
                at = c.vaddr + start - lo
                insn = next(md.disasm_lite(bytes(buf[start : min(start + 15, hi)]), at, 1), None)
                if insn is None:
                    continue
                address, size, mnemonic, op_str = insn
                end = start + size
                if end not in (imm + 4, imm + 8, imm + 5, imm + 6):
                    continue
                hit = _classify(mnemonic, op_str)
                if hit is None:
                    continue
                use = VsyscallUse(hit[0], address, hit[1], f"{mnemonic} {op_str}")
                if use.kind == "read":
                    return use
                found = found or use
                break
    return found


def _span(data: bytes | CodeView) -> tuple[bytes, int, int]:
    """The buffer that holds the code and where in it the code starts and ends: searched
    in place, not through CodeView's methods (a call per candidate byte pair)."""
    if isinstance(data, CodeView):
        return data.span()
    return data, 0, len(data)
