"""Static syscall recovery on s390x, ppc64le, riscv64 and mips64le (kcompat.disasm_isas).

Real binaries from Debian's packages (tests/fixtures/build_binaries.py): busybox-static,
whose syscalls qemu-user's -strace observes for a few applets (every one must have been
recovered, and nothing recovered may lie outside the arch's table), and fzf, a Go
program, whose runtime makes the raw syscalls its source names and whose calls to Go's
syscall functions add what qemu sees it make. Then hand-assembled idioms (bytes below,
assembled with binutils' cross assemblers and linked at 0x10000), including the shapes
that must stay unresolved."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kcompat import disasm, elf
from kcompat.elf import CodeRange
from kcompat.filescan import GO_SYSCALL_FUNCS, scan_file
from kcompat.needs import needs_of
from kcompat.scan import scan_path
from kcompat.syscalls import table
from tests.conftest import Binaries

# debian arch -> (syscall ABI, qemu-user's name for it)
ARCHES = {
    "s390x": ("s390x", "s390x"),
    "ppc64el": ("ppc64le", "ppc64le"),
    "riscv64": ("riscv64", "riscv64"),
    "mips64el": ("mips64le", "mips64el"),
}
APPLETS = (
    ["true"],
    ["ls", "/"],
    ["cat", "/etc/hostname"],
    ["sh", "-c", "echo hi > f; cat f; rm f"],
    ["ls", "-l", "/etc"],
    ["date"],
    ["id"],
    ["mkdir", "-p", "a/b"],
    ["sort", "/etc/passwd"],
)
# raw syscalls of Go's runtime (runtime/sys_linux_<arch>.s, Go 1.19 and 1.24: SYS_futex,
# SYS_mmap... in TEXT runtime·futex, runtime·mmap...), linked into every Go program
GO_RUNTIME = {
    "futex", "mmap", "munmap", "madvise", "rt_sigaction", "rt_sigprocmask", "sigaltstack",
    "clone", "exit_group", "sched_getaffinity", "tgkill", "getpid", "gettid", "nanosleep",
    "sched_yield", "mincore", "read", "write", "close",
}  # fmt: skip
_STRACE = re.compile(r"^\d+ (?:(\w+)\(|Unknown syscall (\d+))")
# another thread's line written into an unfinished one: "nanosleep(...)16251 ioctl(0,..."
_MERGED = re.compile(r"\)(\d+) (\w+)\(")
# made by the signal trampoline the kernel (vDSO, signal frame) or qemu-user provides, not
# by the program: Debian's glibc sets no SA_RESTORER on these arches
TRAMPOLINE = {"sigreturn", "rt_sigreturn"}


def _fixture(binaries: Binaries, name: str) -> Path:
    missing = binaries.bin(f"{name}.missing")
    if missing.is_file():
        pytest.skip(f"fixture {name} could not be fetched: {missing.read_text().strip()}")
    return binaries.bin(name)


def _qemu(qemu: str) -> str:
    path = shutil.which(f"qemu-{qemu}-static")
    if path is None:
        pytest.skip(f"needs qemu-{qemu}-static (qemu-user-static, installed by ci/setup)")
    return path


def _observed(argv: list[str], abi: str, cwd: Path, stdin: Path | None = None) -> set[int]:
    """The syscall numbers qemu-user's -strace shows (execve is qemu's own exec; the
    trampoline's are not the program's). Threads' lines may interleave and be lost."""
    with open(stdin or "/dev/null", "rb") as data:
        out = subprocess.run(argv, cwd=cwd, stdin=data, capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
    t = table(abi)
    seen, unknown = set(), set()
    for line in out.stderr.splitlines():
        m = _STRACE.match(line)
        if m and m.group(2):
            seen.add(int(m.group(2)))
        elif m and (row := t.lookup(m.group(1))) is not None:
            seen.add(row.nr)
        elif m:
            unknown.add(m.group(1))
        for merged in _MERGED.finditer(line):
            if (row := t.lookup(merged.group(2))) is not None:
                seen.add(row.nr)
    assert unknown == set(), f"qemu names no {abi} table row has: {unknown}"
    return seen - {r.nr for n in ("execve", *TRAMPOLINE) if (r := t.lookup(n)) is not None}


def _scan(path: Path) -> disasm.SyscallScan:
    data = path.read_bytes()
    f, _ = scan_file(f"/{path.name}", 0o755, len(data), data, lambda: b"")
    assert f.syscalls is not None, f"{path.name}: machine code not read"
    return f.syscalls


@pytest.mark.integration
@pytest.mark.parametrize("arch", list(ARCHES))
def test_busybox_recall_under_qemu(binaries: Binaries, arch: str, tmp_path: Path) -> None:
    abi, qemu = ARCHES[arch]
    busybox = _fixture(binaries, f"busybox-{arch}")
    found = _scan(busybox)
    t = table(abi)
    assert [n for n in found.numbers if t.lookup(n) is None] == []  # precision sanity
    seen: set[int] = set()
    for args in APPLETS:
        seen |= _observed([_qemu(qemu), "-strace", str(busybox), *args], abi, tmp_path)
    assert len(seen) > 20  # qemu really ran the applets and was parsed
    missed = sorted(t.lookup(n).name for n in seen - set(found.numbers))  # type: ignore[union-attr]
    assert missed == []
    # glibc 2.33+ on ppc64le has an `scv 0` twin for each `sc`, reached only by a branch
    limit = 0.6 if abi == "ppc64le" else 0.2
    assert found.unresolved < found.sites * limit


@pytest.mark.integration
@pytest.mark.parametrize("arch", list(ARCHES))
def test_go_runtime_and_syscall_calls(binaries: Binaries, arch: str, tmp_path: Path) -> None:
    abi, qemu = ARCHES[arch]
    fzf = _fixture(binaries, f"fzf-{arch}")
    t = table(abi)
    data = fzf.read_bytes()
    info = elf.read_elf(data, with_code=True)
    assert info.go_version
    raw = disasm.scan_code(abi, info.code)
    assert raw is not None
    names = {t.lookup(n).name for n in raw.numbers}  # type: ignore[union-attr]
    assert names >= GO_RUNTIME
    funcs = elf.go_functions(data, GO_SYSCALL_FUNCS)
    if not funcs:
        pytest.skip(f"{fzf.name}: elf.go_functions finds no Go syscall function (on s390x it "
                    "reads the big-endian .gopclntab as little-endian)")  # fmt: skip
    calls = disasm.scan_code(abi, info.code, funcs)
    assert calls is not None
    assert [n for n in calls.numbers if t.lookup(n) is None] == []
    assert set(raw.numbers) < set(calls.numbers)
    assert calls.sites - raw.sites > 40
    assert calls.unresolved - raw.unresolved < (calls.sites - raw.sites) / 5
    root = _fixture(binaries, f"root-{arch}") if False else binaries.root / f"root-{arch}"
    if not root.is_dir():
        pytest.skip(f"libc6:{arch} could not be fetched: no root for qemu-user -L")
    argv = [_qemu(qemu), "-L", str(root), "-strace", str(fzf)]
    seen = _observed([*argv, "--version"], abi, tmp_path)
    seen |= _observed([*argv, "--filter", "root"], abi, tmp_path, Path("/etc/passwd"))
    by_calls = {t.lookup(n).name for n in (set(calls.numbers) - set(raw.numbers)) & seen}  # type: ignore[union-attr]
    assert by_calls, "no syscall that fzf makes is found only through its syscall calls"


@pytest.mark.integration
def test_arches_are_judged_not_unknown(binaries: Binaries, tmp_path: Path) -> None:
    """needs.py's "static syscall recovery is not implemented" no longer applies to them."""
    for arch, (abi, _) in ARCHES.items():
        busybox = _fixture(binaries, f"busybox-{arch}")
        root = tmp_path / arch / "bin"
        root.mkdir(parents=True)
        shutil.copy2(busybox, root / "busybox")
        scan = scan_path(root.parent)
        f = scan.files["/bin/busybox"]
        assert disasm.supported(abi)
        needs = needs_of(scan, f, None)
        assert needs is not None and needs.abi == abi
        assert needs.complete and "not implemented" not in needs.method
        assert {"openat", "exit_group"} <= {s.name for s in needs.syscalls}


@pytest.mark.integration
def test_loong64_stays_unknown(binaries: Binaries) -> None:
    """capstone 5 has no LoongArch: a loong64 static binary (busybox with its e_machine
    set to EM_LOONGARCH) is not read, and the reason says why."""
    data = bytearray(_fixture(binaries, "busybox-riscv64").read_bytes())
    data[18:20] = elf.EM_LOONGARCH.to_bytes(2, "little")
    f, _ = scan_file("/busybox", 0o755, len(data), bytes(data), lambda: b"")
    assert f.elf is not None and f.elf.arch.abi == "loong64"
    assert f.syscalls is None and not disasm.supported("loong64")
    assert "LoongArch" in disasm.unsupported_reason("loong64")


# -- hand-assembled idioms ---------------------------------------------------------------

# Each: the bytes of .text at 0x10000, the address of `f` (called as a Go syscall
# function), the numbers to recover and how many sites stay unresolved.
HAND = {
    # a: svc 1 | b: lghi %r1,383; svc 0 | c: la %r1,280; jne 1f; 1: svc 0
    # d: lghi %r2,7; lgr %r1,%r2; svc 0 | u1: lgr %r1,%r2; svc 0
    # u2: lghi %r1,301; brasl %r14,f; svc 0 | u3: lghi %r1,302; j 1f; svc 0
    # g1: mvghi 8(%r15),20; brasl %r14,f | g2: lghi %r2,39; brasl %r14,f (register ABI:
    # not read); each ends with br %r14
    "s390x": (
        "07000a0107fea719017f0a0007fe41100118a77400020a0007fea7290007b90400120a0007feb904"
        "00120a0007fea719012dc0e5000000180a0007fea719012ea7f400030a0007fee548f0080014c0e5"
        "0000000a07fea7290027c0e50000000407fe07fe",
        0x10062, (1, 7, 20, 280, 383), 5,
    ),
    # a: li 0,1; sc | b: lis 0,0; ori 0,0,383; sc | c: li 9,384; mr 0,9; beq 4,1f;
    # ld 9,8(1); 1: sc | d: li 0,3; scv 0 | u1: ld 0,8(1); sc | u2: li 0,5; bl f; sc
    # u3: li 0,6; b 1f; scv 0 | g1: li 3,39; bl f | g2: li 9,20; std 9,32(1); li 3,7;
    # bl f (ABI0: the slot) | g3: li 3,21; std 3,40(1); bl f (r3 is a stack argument's
    # temporary: not read); each ends with blr, and so does f
    "ppc64el": (
        "0000006001000038020000442000804e0000003c7f010060020000442000804e80012039784b207d"
        "08009241080021e9020000442000804e03000038010000442000804e080001e8020000442000804e"
        "050000384d000048020000442000804e0600003808000048010000442000804e270060382d000048"
        "2000804e14002039200021f907006038190000482000804e15006038280061f8090000482000804e"
        "2000804e",
        0x100A0, (1, 3, 20, 39, 383, 384), 5,
    ),
    # a: li a7,93; ecall | b: c.li a7,29; ecall | c: lui a7,1; addiw a7,a7,-1896;
    # beqz a0,1f; 1: ecall | d: li t1,64; mv a7,t1; ecall | u1: mv a7,a0; ecall
    # u2: li a7,65; call f (auipc+jalr: a call of f with a0 unknown, too); ecall
    # u3: li a7,66; j 1f; ecall | g1: li a0,172; jal ra,f
    # g2: li t0,220; sd t0,8(sp); jal ra,f (ABI0); each ends with ret, and so does f
    "riscv64": (
        "01009308d005730000008280f54873000000828085689b88888909c1730000008280130300049a88"
        "730000008280aa887300000082809308100497000000e78000037300000082809308200419a07300"
        "000082801305c00aef00200182809302c00d16e4ef00600082808280",
        0x1006A, (29, 64, 93, 172, 220, 2200), 4,
    ),
    # (.set noreorder) a: addiu $2,$0,5001; syscall | b: lui $2,0; ori $2,$2,5002; syscall
    # c: beqz $4,1f; daddiu $2,$0,5003 (delay slot); 1: syscall | d: daddiu $3,$0,5004;
    # move $2,$3; syscall | u1: move $2,$4; syscall | u2: b 1f; addiu $2,$0,5005 (delay
    # slot of a jump); syscall | u3: addiu $2,$0,5006; jal f; nop; syscall
    # g1: daddiu $1,$0,5038; sd $1,8($29); jal f; nop (ABI0) | g2: daddiu $1,$0,5039;
    # jal f; sd $1,8($29) (in the delay slot: not read); each ends with jr $31; nop
    "mips64el": (
        "00000000891302240c0000000800e003000000000000023c8a1342340c0000000800e00300000000"
        "010080108b1302640c0000000800e003000000008c130364251060000c0000000800e00300000000"
        "251080000c0000000800e00300000000020000108d1302240c0000000800e003000000008e130224"
        "2e40000c000000000c0000000800e00300000000ae1301640800a1ff2e40000c000000000800e003"
        "00000000af1301642e40000c0800a1ff0800e003000000000800e00300000000",
        0x100B8, (5001, 5002, 5003, 5004, 5038), 5,
    ),
}  # fmt: skip


@pytest.mark.parametrize("arch", list(HAND))
def test_hand_assembled_idioms(arch: str) -> None:
    code, f, numbers, unresolved = HAND[arch]
    abi = ARCHES[arch][0]
    found = disasm.scan_code(abi, [CodeRange(0x10000, bytes.fromhex(code))],
                             {f: "syscall.Syscall"})  # fmt: skip
    assert found is not None
    assert found.numbers == numbers
    assert found.unresolved == unresolved
    assert found.sites == len(numbers) + unresolved
    # without the Go function, its call sites are not sites
    plain = disasm.scan_code(abi, [CodeRange(0x10000, bytes.fromhex(code))])
    assert plain is not None and plain.sites < found.sites


@pytest.mark.integration
def test_externally_linked_go_keeps_its_table_in_data_rel_ro(binaries: Binaries) -> None:
    """Debian's Go 1.24 programs are linked by the system linker (cgo): the function table
    is .data.rel.ro.gopclntab, and without it the calls to Go's syscall functions (the
    getrandom of crypto/rand, a fatal EPERM since Go 1.24) went unseen."""
    age = _fixture(binaries, "age-keygen-amd64")
    data = age.read_bytes()
    info = elf.read_elf(data, with_code=True)
    assert info.go_version and info.go_version.startswith("go1.2")
    funcs = elf.go_functions(data, GO_SYSCALL_FUNCS)
    assert {"syscall.Syscall", "syscall.RawSyscall6"} <= set(funcs.values())
    t = table("x86_64")
    calls = disasm.scan_code("x86_64", info.code, funcs)
    raw = disasm.scan_code("x86_64", info.code)
    assert calls is not None and raw is not None
    assert "getrandom" in {t.lookup(n).name for n in set(calls.numbers) - set(raw.numbers)}  # type: ignore[union-attr]
