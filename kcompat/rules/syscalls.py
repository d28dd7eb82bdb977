"""The kernel rules: glibc's minimum kernel, Go's documented minimum, and the syscalls a
program needs that the target lacks, judged by what the program's families do on ENOSYS
(kcompat.families) and by glibc's own fallbacks (kcompat/data/knowledge.json)."""

from __future__ import annotations

import posixpath

from kcompat.knowledge import KNOWLEDGE
from kcompat.needs import SyscallNeed, needs_of
from kcompat.rules.common import glibc_of
from kcompat.rules.findings import Finding, Severity
from kcompat.scan import Scan, ScannedFile
from kcompat.syscalls import table
from kcompat.target import Target
from kcompat.versions import version_key


def kernel_rules(scan: Scan, binary: ScannedFile, target: Target) -> list[Finding]:
    assert binary.elf is not None and target.kernel is not None
    e = binary.elf
    kernel = target.kernel
    out: list[Finding] = []
    glibc, libc_tag, libc_path = glibc_of(scan)
    dynamic_glibc = e.interpreter is not None and e.libc == "glibc"
    static = e.interpreter is None
    # ABI tag: glibc < 2.36 refuses to start below its configured minimum kernel
    if dynamic_glibc and glibc and libc_tag and version_key(kernel) < version_key(libc_tag):
        if KNOWLEDGE.glibc_checks_kernel_version(glibc):
            out.append(
                Finding(
                    "kernel-too-old",
                    Severity.FATAL,
                    f"glibc {glibc} needs Linux {libc_tag}; the target has {kernel}",
                    "glibc before 2.36 compares the running kernel with its minimum at start-up "
                    "and "
                    "aborts: 'FATAL: kernel too old' (exit 127).",
                    (
                        f"{libc_path}: .note.ABI-tag {libc_tag}",
                        f"glibc {glibc} (< 2.36 keeps the check)",
                    ),
                    f"run on Linux >= {libc_tag}, or use an image with an older distribution",
                    binary.path,
                )
            )
            return out
        out.append(
            Finding(
                "abi-tag",
                Severity.INFO,
                f"glibc {glibc} is built for Linux {libc_tag}, the target has {kernel}",
                "glibc 2.36 and later no longer check the kernel version; what decides is whether "
                "the syscalls it uses exist (below).",
                (f"{libc_path}: .note.ABI-tag {libc_tag}",),
                None,
                binary.path,
            )
        )
    elif static and e.abi_tag and version_key(kernel) < version_key(e.abi_tag) and not e.go_version:
        out.append(
            Finding(
                "kernel-too-old",
                Severity.UNCERTAIN,
                f"{binary.path} is built for Linux {e.abi_tag}; the target has {kernel}",
                "A statically linked glibc program: glibc before 2.36 aborts with "
                "'FATAL: kernel too "
                "old', 2.36 and later go on; the glibc version inside a static binary is not "
                "recorded, so the outcome is uncertain.",
                (f"{binary.path}: .note.ABI-tag {e.abi_tag}",),
                f"run on Linux >= {e.abi_tag}",
                binary.path,
            )
        )
    if e.go_version:
        minimum = KNOWLEDGE.go_min_kernel(e.go_version.removeprefix("go"))
        if version_key(kernel) < version_key(minimum):
            out.append(
                Finding(
                    "go-min-kernel",
                    Severity.UNCERTAIN,
                    f"{e.go_version} documents Linux {minimum} as its minimum; "
                    f"the target has {kernel}",
                    "Below the documented minimum the Go runtime is not supported; it may fail at "
                    "start-up or later.",
                    (
                        f"{binary.path}: .go.buildinfo {e.go_version}",
                        "Go wiki: MinimumRequirements",
                    ),
                    f"run on Linux >= {minimum} or build with an older Go",
                    binary.path,
                )
            )
    out += _syscall_rule(scan, binary, target, glibc)
    return out


def _syscall_rule(
    scan: Scan, binary: ScannedFile, target: Target, glibc: str | None
) -> list[Finding]:
    assert binary.elf is not None and target.kernel is not None
    needs = needs_of(scan, binary, glibc if binary.elf.libc == "glibc" else None)
    if needs is None:
        return []
    out: list[Finding] = []
    if not needs.complete:
        out.append(
            Finding(
                "syscalls-unknown",
                Severity.UNCERTAIN,
                f"{binary.path}: syscalls could not be read",
                needs.method,
                (),
                None,
                binary.path,
            )
        )
    t = table(needs.abi)
    absent = set(target.absent_syscalls or ())
    blocked = sorted(s.name for s in needs.syscalls if s.name in set(target.blocked_syscalls or ()))
    if blocked:
        out.append(
            Finding(
                "syscalls-blocked",
                Severity.UNCERTAIN,
                f"{len(blocked)} syscall(s) answered with EPERM on the target",
                "The target's probe saw EPERM (a seccomp profile or missing capability) for "
                "calls this program makes; fallbacks run only on ENOSYS, so a call that is "
                "needed fails with 'Operation not permitted'.",
                tuple(f"{n}: EPERM on the target" for n in blocked),
                "allow them in the seccomp profile, or make it answer ENOSYS",
                binary.path,
            )
        )
    handled: list[tuple[SyscallNeed, str, str]] = []
    unhandled: list[tuple[SyscallNeed, str, str | None]] = []
    for s in needs.syscalls:
        row = t.lookup(s.name)
        missing = (
            s.name in absent
            if target.absent_syscalls is not None
            else (row is not None and not row.available_on(target.kernel))
        )
        if not missing:
            continue
        fallback = (
            s.fallback
            or _static_glibc_fallback(binary, s.name)
            or KNOWLEDGE.program_fallback(posixpath.basename(binary.path), s.name)
        )
        line = f"{s.name} (Linux {s.since}) via {', '.join(s.via[:2])}"
        if fallback:
            handled.append((s, line, fallback))
        else:
            unhandled.append((s, line, None))
    probed = target.absent_syscalls is not None and target.source != "simulated"
    missing_words = (
        "absent on the target" if probed else f"newer than {target.kernel}"
    )  # a probe saw ENOSYS: a missing backport, a sandbox or a seccomp filter, not age
    if handled:
        out.append(
            Finding(
                "syscalls-with-fallback",
                Severity.INFO,
                f"{len(handled)} syscall(s) {missing_words}, handled by fallbacks",
                "These return ENOSYS on the target and the C library falls back: "
                + "; ".join(f"{s.name}: {fb}" for s, _, fb in handled),
                tuple(line for _, line, _ in handled),
                None,
                binary.path,
            )
        )
    if unhandled:
        newest = max((s.since or "0" for s, _, _ in unhandled), key=version_key)
        if probed:
            explanation = (
                "The target's probe saw these answer ENOSYS although its kernel version "
                "has them: a backport the distribution kernel lacks, a sandbox (gVisor, "
                "a VM's shim) or a seccomp filter answering ENOSYS. Programs often handle "
                "that, so this is not proof of failure; whether it fails depends on the "
                "code path."
            )
            fix = (
                "allow them in the runtime's seccomp profile (or run where they exist); "
                "kcompat check --verify shows what happens"
            )
        else:
            explanation = (
                "These return ENOSYS on the target. Programs often handle that (it is how "
                "new syscalls are probed), so this is not proof of failure; whether it "
                "fails depends on the code path."
            )
            fix = f"run on a newer kernel (the newest needed: {newest})"
        out.append(
            Finding(
                "syscalls-newer-than-kernel" if not probed else "syscalls-absent",
                Severity.UNCERTAIN,
                f"{len(unhandled)} syscall(s) {missing_words} without a known fallback",
                explanation,
                tuple(line + (" (probed: ENOSYS)" if probed else "") for _, line, _ in unhandled),
                fix,
                binary.path,
            )
        )
    return out


def _static_glibc_fallback(binary: ScannedFile, name: str) -> str | None:
    """For a static glibc binary: syscalls that only glibc's own start-up makes, with the
    fallback its version must have (the call's presence proves the version)."""
    e = binary.elf
    if e is None or e.interpreter is not None or e.libc != "glibc":
        return None
    proofs = {
        "rseq": "2.35",  # registered at start-up since 2.35, failure tolerated
        "clone3": "2.34",  # __clone_internal falls back to clone
        "faccessat2": "2.33",
    }
    if name in proofs:
        fb = KNOWLEDGE.fallback_for(name, proofs[name])
        return f"glibc >= {proofs[name]} (the call itself shows it): {fb.note}" if fb else None
    return None

