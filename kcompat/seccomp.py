"""Simulate an older kernel's system call table with a seccomp filter.

Every syscall the per-ABI table (syscall_tables/) dates after the simulated release is
answered with ENOSYS, as that kernel would (or EPERM, as old container runtimes' seccomp
profiles answer calls they do not know). The filter is a classic BPF program assembled
here, so no libseccomp is needed: check the audit arch (another ABI is let through: a
32-bit call on a 64-bit host is not simulated), load the number, compare it with each
denied number. It is installed by the container's PID 1 after no_new_privs, just before
exec, and is inherited by every process of the container.
"""

from __future__ import annotations

import ctypes
import errno
import struct
from dataclasses import dataclass

from kcompat import linuxapi as L
from kcompat.syscalls import table
from kcompat.versions import version_key

# linux/audit.h: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH = {
    "x86_64": 0xC000003E, "i386": 0x40000003, "arm64": 0xC00000B7, "arm": 0x40000028,
    "s390x": 0x80000016, "ppc64le": 0xC0000015, "riscv64": 0xC00000F3,
    "mips64le": 0xC0000008, "loong64": 0xC0000102,
}  # fmt: skip

# linux/filter.h and linux/seccomp.h
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_JGE_K = 0x35
_BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
_PR_SET_SECCOMP = 22
_SECCOMP_MODE_FILTER = 2
_X32_BIT = 0x40000000


@dataclass(frozen=True)
class Simulation:
    """What a simulated kernel refuses: syscall numbers of one ABI and the errno."""

    abi: str
    kernel: str
    denied: tuple[tuple[int, str], ...]  # (number, name)
    errno: int = errno.ENOSYS

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.denied)


def simulation(abi: str, kernel: str, eperm: bool = False) -> Simulation:
    """The syscalls `kernel` lacks on `abi`, by the tables' dates."""
    k = version_key(kernel)
    denied = tuple(
        sorted(
            (s.nr, s.name)
            for s in table(abi).by_nr.values()
            if s.implemented and s.since is not None and version_key(s.since) > k
        )
    )
    return Simulation(abi, kernel, denied, errno.EPERM if eperm else errno.ENOSYS)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def assemble(sim: Simulation) -> bytes:
    """The BPF program (struct sock_filter[]) for `sim`."""
    arch = AUDIT_ARCH.get(sim.abi)
    if arch is None:
        raise ValueError(f"no audit arch for {sim.abi}")
    ret_errno = SECCOMP_RET_ERRNO | (sim.errno & 0xFFFF)
    prog = [
        _insn(_BPF_LD_W_ABS, 0, 0, 4),  # seccomp_data.arch
        _insn(_BPF_JEQ_K, 1, 0, arch),
        _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
        _insn(_BPF_LD_W_ABS, 0, 0, 0),  # seccomp_data.nr
    ]
    if sim.abi == "x86_64":  # x32 calls (nr | 0x40000000) are not simulated
        prog += [_insn(_BPF_JGE_K, 0, 1, _X32_BIT), _insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    for nr, _ in sim.denied:
        prog += [_insn(_BPF_JEQ_K, 0, 1, nr), _insn(_BPF_RET_K, 0, 0, ret_errno)]
    prog.append(_insn(_BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW))
    if len(prog) > 4096:
        raise ValueError("seccomp program too long")
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install(program: bytes) -> None:
    """Install the filter on the calling thread (no_new_privs must be set)."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    L.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(prog))
