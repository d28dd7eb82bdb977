"""Old runtimes' default seccomp profiles, which answer new syscalls with EPERM.

Judged per binary and per C library actually used: the program must reach the call
(kcompat.needs: glibc 2.34+'s pthread_create, posix_spawn, system and popen try clone3;
a static musl binary never does), and what then happens is decided as for any EPERM
(kcompat.rules.syscalls.judge): a runtime that starts threads at start-up fails there, a
program that only may create threads is uncertain with that path named, one that never
reaches the call is not hit.
"""

from __future__ import annotations

from kcompat.facts import ImageFacts
from kcompat.filescan import ScannedFile
from kcompat.knowledge import KNOWLEDGE
from kcompat.rules.common import glibc_of
from kcompat.rules.findings import Finding, Severity
from kcompat.rules.syscalls import Outcome, Program, judge
from kcompat.target import Target
from kcompat.versions import version_key

# What qemu-user's host build does through its own C library for every guest (glibc
# 2.34+ pthread_create tries clone3; 2.33+ faccessat tries faccessat2), and what an EPERM
# for it breaks (census: Debian bookworm's qemu-user-static 7.2, glibc 2.36)
_QEMU_HOST_CALLS = {
    "clone3": "qemu-user makes the guest's threads, and its own RCU thread at start, with "
    "the host build's pthread_create: it stops with 'qemu_thread_create: Operation not "
    "permitted' (every arm64 and s390x program below --kernel 5.4 --seccomp-eperm)",
    "faccessat2": "qemu-user answers the guest's access() and faccessat() with the host "
    "build's faccessat, which tries faccessat2 and returns its EPERM: the guest's file "
    "checks fail (arm64 sort 'cannot read: Operation not permitted' and java 'could not "
    "find libjava.so' at --kernel 5.4 --seccomp-eperm)",
}


def emulator_rule(binary: ScannedFile | None, target: Target) -> list[Finding]:
    """A binary the target runs through qemu-user, under a seccomp profile that answers
    with EPERM a call qemu-user's host build makes for the guest (_QEMU_HOST_CALLS): which
    build the target has (its glibc) is not known here, so the verdict is uncertain."""
    if binary is None or binary.elf is None:
        return []
    arch = binary.elf.arch.platform.architecture
    if target.runs_natively(arch):
        return []
    eperm = set(target.blocked_syscalls or ())
    if target.runtime:
        eperm |= {fix.call for fix in KNOWLEDGE.runtime_eperm(target.runtime)}
    hit = sorted(c for c in _QEMU_HOST_CALLS if c in eperm)
    if not hit:
        return []
    who = f"{target.runtime}'s seccomp profile" if target.runtime else "the seccomp profile"
    return [
        Finding(
            "emulator-seccomp",
            Severity.UNCERTAIN,
            f"{binary.path} runs under qemu-user, and {who} answers {', '.join(hit)} with EPERM",
            "; ".join(_QEMU_HOST_CALLS[c] for c in hit) + ". A qemu-user-static linked "
            "with glibc 2.34 or later (Debian 12, Ubuntu 22.04) is hit; an older build is "
            "not. What decides it: the glibc of the target's qemu-user-static; kcompat "
            "check --verify runs it here.",
            (
                "census: Debian bookworm qemu-user-static 7.2 (glibc 2.36)",
                f"runs emulated: {arch} on {target.platform.architecture}",
            ),
            "run the image on a host of its arch, upgrade the runtime, or use a seccomp "
            "profile that answers these calls with ENOSYS",
            binary.path,
        )
    ]


def runtime_rule(
    facts: ImageFacts, binary: ScannedFile | None, target: Target, names: tuple[str, ...] = ()
) -> list[Finding]:
    if not target.runtime or binary is None or binary.elf is None:
        return []
    e = binary.elf
    mine = facts.of_file(binary)
    libc = mine.libc
    glibc, _, _ = glibc_of(facts)
    needs = mine.needs
    if needs is None or libc is None:
        return []
    by_name = {s.name: s for s in needs.syscalls}
    prog = Program.of(facts, binary, names, glibc)
    out = []
    for fix in KNOWLEDGE.runtime_eperm(target.runtime):
        have = mine.libc_version  # fix.libc is its C library, or the fix is skipped
        if fix.libc != libc or (fix.only_32bit and e.arch.bits != 32):
            continue
        need = by_name.get(fix.call)
        if need is None:
            continue  # this program never makes the call: not hit
        if have is not None and version_key(have) < version_key(fix.since):
            continue  # a C library older than the one that tries the call
        judged = judge(need, True, prog)
        if judged.outcome is Outcome.HANDLED:
            continue
        fatal = judged.outcome is Outcome.FATAL
        how = "; ".join(judged.reasons) or (
            f"reached by {', '.join(need.via[:2])}; what the program does then decides it"
        )
        out.append(
            Finding(
                "runtime-seccomp",
                Severity.FATAL if fatal else Severity.UNCERTAIN,
                ("fails at start: " if fatal else "")
                + f"{target.runtime}'s seccomp profile answers {fix.call} with EPERM",
                f"{fix.libc} {have or '(version unknown)'} tries {fix.call} first and falls "
                "back only on ENOSYS; "
                f"with EPERM, {fix.symptom}. This program reaches it: {how}."
                + (
                    ""
                    if fatal
                    else " What decides it: whether the command takes that path; "
                    "kcompat check --verify --runtime ... runs it under that profile."
                ),
                (
                    f"{fix.libc} {have or '(version unknown)'}",
                    f"runtime {target.runtime} < {fix.fixed}",
                    *need.via[:2],
                    fix.source,
                ),
                f"upgrade {fix.runtime} to >= {fix.fixed}, or run with a seccomp profile that "
                "returns ENOSYS",
                binary.path,
            )
        )
    return out
