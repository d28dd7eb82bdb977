"""Facts of kcompat's real families table (kcompat/data/families.json), judged on in-memory
scans: systemd's private library (libsystemd-shared-NNN.so) and Debian 12's systemctl, and
the getrandom crate in Rust programs, whose fallback depends on the target architecture.

What the facts say (each with its source in the table): copy_file_range, getrandom,
renameat2 and statx fall back on ENOSYS everywhere; the new mount API of 252 is reached
only by systemd-nspawn's ID-mapped mounts; setns only by tools entering a container.
The census observes the same: `systemctl --version`, `systemd-analyze calendar daily`
and `systemd-id128 new` of Debian 12 run on every kernel of the ladder.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from kcompat.elf import ElfArch
from kcompat.facts import ImageFacts
from kcompat.platform import Platform
from kcompat.rules import Verdict, check
from kcompat.target import described
from tests.memscan import config, elf, libc, scan_of

RISCV64 = ElfArch(Platform("linux", "riscv64"), 64, "little", 243, "riscv64")


def _check(scan: Any, *cmd: str, kernel: str, arch: str = "amd64") -> Any:
    return check(ImageFacts.of(scan), config(*cmd, arch=arch), described(kernel, arch), None)

SHARED = "libsystemd-shared-252.so"
SHARED_PATH = f"/usr/lib/x86_64-linux-gnu/{SHARED}"  # (Debian: systemd/, by RUNPATH)
# what libsystemd-shared-252.so of Debian 12 imports among the calls newer than Linux 3.2
IMPORTS = ("copy_file_range", "getrandom", "renameat2", "statx", "memfd_create",
           "close_range", "mount_setattr", "open_tree", "move_mount", "puts")  # fmt: skip


def _judge(program: str, kernel: str) -> Any:
    shared = elf(SHARED_PATH, soname=SHARED, imports=IMPORTS)
    prog = elf(program, imports=("puts",), needed=(SHARED, "libc.so.6"))
    scan = scan_of(prog, shared, *libc())
    return _check(scan, program, "--version", kernel=kernel)


def _syscall_findings(r: Any) -> dict[str, Any]:
    return {f.rule: f for f in r.findings if f.rule.startswith("syscall")}


def test_systemd_tool_runs_where_its_calls_fall_back() -> None:
    r = _judge("/usr/bin/systemd-analyze", "3.10")
    assert r.verdict is Verdict.NATIVE, r.findings
    handled = _syscall_findings(r)["syscalls-with-fallback"]
    text = handled.explanation + " ".join(handled.evidence)
    assert "copy_file_range" in text and "systemd-shared" in text


def test_mount_api_is_only_nspawns_path() -> None:
    """On 5.10 only mount_setattr (5.12) is missing: only systemd-nspawn reaches it."""
    assert _judge("/usr/bin/systemd-analyze", "5.10").verdict is Verdict.NATIVE
    r = _judge("/usr/bin/systemd-nspawn", "5.10")
    assert r.verdict is Verdict.UNCERTAIN
    f = _syscall_findings(r)["syscalls-on-a-path"]
    assert "mount_setattr" in " ".join(f.evidence) + f.title and "ID-mapped" in f.explanation


def test_an_unknown_systemd_release_gets_no_facts() -> None:
    """libsystemd-shared-250.so: a release the table does not list is not recognised, and
    its copy_file_range stays undecided."""
    name = "libsystemd-shared-250.so"
    shared = elf(f"/usr/lib/x86_64-linux-gnu/{name}", soname=name,
                 imports=("copy_file_range", "puts"))  # fmt: skip
    prog = elf("/usr/bin/x", imports=("puts",), needed=(name, "libc.so.6"))
    r = _check(scan_of(prog, shared, *libc()), "/usr/bin/x", kernel="3.10")
    assert r.verdict is Verdict.UNCERTAIN


def _rust(arch: ElfArch | None = None) -> Any:
    """A static musl Rust program (std's marker strings, no glibc ABI tag) whose machine
    code calls getrandom."""
    extra = {"arch": arch} if arch else {}
    prog = elf("/usr/bin/tool", interpreter=None, syscalls=("read", "write", "getrandom"),
               markers=("library/std/src/",), **extra)  # fmt: skip
    assert prog.elf is not None
    return scan_of(replace(prog, elf=replace(prog.elf, abi_tag=None)))


def test_getrandom_crate_falls_back_where_rust_supports_old_kernels() -> None:
    """x86_64: the getrandom crate reads /dev/urandom on ENOSYS (every release)."""
    r = _check(_rust(), "/usr/bin/tool", kernel="3.10")
    assert r.verdict is Verdict.NATIVE, r.findings
    text = " ".join(f.explanation for f in r.findings if f.rule == "syscalls-with-fallback")
    assert "getrandom" in text


def test_getrandom_crate_has_no_fallback_on_riscv64() -> None:
    """riscv64: getrandom 0.2.13 and later call getrandom(2) only: a crate's path."""
    scan = _rust(RISCV64)
    r = _check(scan, "/usr/bin/tool", kernel="3.10", arch="riscv64")
    assert r.verdict is Verdict.UNCERTAIN, r.findings
    assert "syscalls-on-a-path" in {f.rule for f in r.findings}


def test_pid1_library_probes_mount_options_and_goes_on() -> None:
    """libsystemd-core-252.so (linked by systemd-analyze): fsopen and fsconfig only in
    mount_option_supported(), which treats any failure of fsopen as "supported"."""
    core = "libsystemd-core-252.so"
    lib = elf(f"/usr/lib/x86_64-linux-gnu/{core}", soname=core, imports=("fsopen", "fsconfig"))
    prog = elf("/usr/bin/systemd-analyze", imports=("puts",), needed=(core, "libc.so.6"))
    r = _check(scan_of(prog, lib, *libc()), "/usr/bin/systemd-analyze", kernel="4.19")
    assert r.verdict is Verdict.NATIVE, r.findings
