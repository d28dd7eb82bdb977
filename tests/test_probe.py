"""The host's syscall probe on this kernel, and under a real seccomp filter that makes
one syscall answer ENOSYS (a kernel without it) and another EPERM (an old runtime's
profile): the probe must tell them apart."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kcompat.probe import probe_syscalls

# Installs a seccomp filter (classic BPF, assembled here) in this process, then probes.
# x86_64 seccomp_data.nr is at offset 0; statx is 332, memfd_create 319.
_FILTERED_PROBE = r"""
import ctypes, json, struct
from kcompat.probe import probe_syscalls
def insn(code, jt, jf, k):
    return struct.pack("HBBI", code, jt, jf, k)
LD, JEQ, RET = 0x20, 0x15, 0x06
ERRNO, ALLOW = 0x00050000, 0x7FFF0000
prog = b"".join([
    insn(LD, 0, 0, 0),
    insn(JEQ, 0, 1, 319), insn(RET, 0, 0, ERRNO | 1),
    insn(JEQ, 0, 1, 332), insn(RET, 0, 0, ERRNO | 38),
    insn(RET, 0, 0, ALLOW),
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP filter
r = probe_syscalls("x86_64")
print(json.dumps({"absent": r.absent, "blocked": r.blocked, "present": r.present}))
"""

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the probe tests are written for x86_64"
)


def test_probe_on_this_kernel() -> None:
    r = probe_syscalls("x86_64")
    assert r is not None
    assert {"read", "openat", "statx", "memfd_create", "futex"} <= set(r.present)
    assert "sysctl" in r.absent  # removed in Linux 5.9; this machine runs a newer kernel
    assert "exit_group" in r.skipped and "exit_group" not in r.present


def test_probe_tells_enosys_from_eperm() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _FILTERED_PROBE], capture_output=True, text=True, check=True
    )
    r = json.loads(out.stdout)
    assert "statx" in r["absent"] and "statx" not in r["present"]
    assert "memfd_create" in r["blocked"] and "memfd_create" not in r["present"]
    assert "openat" in r["present"]


def test_probe_is_cached_per_boot_and_seccomp_state(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The second probe on the same boot and seccomp state reads the first one's answer;
    a damaged cache file is probed again, never trusted."""
    from kcompat import probe

    calls = []
    real = probe.probe_syscalls

    def counting(abi: str, timeout: float = 60.0) -> Any:
        calls.append(abi)
        return real(abi, timeout)

    monkeypatch.setattr(probe, "probe_syscalls", counting)
    first = probe.cached_probe("x86_64", tmp_path)
    assert first is not None and calls == ["x86_64"]
    again = probe.cached_probe("x86_64", tmp_path)
    assert again == first and calls == ["x86_64"]  # from the cache
    (cached,) = (tmp_path / "probe").glob("*.json")
    cached.write_text("{not json")
    assert probe.cached_probe("x86_64", tmp_path) == first and len(calls) == 2
