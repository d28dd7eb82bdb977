"""Old runtimes' default seccomp profiles, which answer new syscalls with EPERM."""

from __future__ import annotations

from dataclasses import dataclass

from kcompat.rules.findings import Finding, Severity
from kcompat.scan import Scan, ScannedFile
from kcompat.target import Target
from kcompat.versions import version_key


# runtime default seccomp profiles that answer new syscalls with EPERM (compat-facts)
@dataclass(frozen=True)
class _SeccompFix:
    """A libc that tries a new syscall first, and the runtime release whose default
    seccomp profile stopped answering it with EPERM (compat-facts: runtime seccomp)."""

    libc: str
    since: str
    call: str
    runtime: str
    fixed: str
    symptom: str
    source: str
    only_32bit: bool = False


_SECCOMP_FIXES = (
    _SeccompFix("glibc", "2.34", "clone3", "docker", "20.10.9",
                "creating threads and spawning fail, e.g. curl: (6) getaddrinfo() thread "
                "failed to start",
                "moby/moby#42681, backported to 20.10 by #42836 (released in 20.10.9)"),
    _SeccompFix("musl", "1.2.2", "faccessat2", "docker", "20.10.0",
                "access checks fail, e.g. make: /bin/sh: Operation not permitted",
                "alpinelinux/docker-alpine#182 (also needs libseccomp >= 2.4.4)"),
    _SeccompFix("glibc", "2.34", "clock_gettime64", "docker", "19.03.9",
                "time calls fail, e.g. sleep: cannot read realtime clock: Operation not "
                "permitted", "alpinelinux/docker-alpine#150 (also needs libseccomp >= 2.4.2)",
                only_32bit=True),
    _SeccompFix("musl", "1.2.0", "clock_gettime64", "docker", "19.03.9",
                "time calls fail, e.g. sleep: cannot read realtime clock: Operation not "
                "permitted", "alpinelinux/docker-alpine#150 (also needs libseccomp >= 2.4.2)",
                only_32bit=True),
)  # fmt: skip


def runtime_rule(scan: Scan, binary: ScannedFile | None, target: Target) -> list[Finding]:
    if not target.runtime or binary is None or binary.elf is None:
        return []
    name, _, version = target.runtime.partition(":")
    libcs = {c.family: c.version for c in scan.libc() if c.version}
    out = []
    for fix in _SECCOMP_FIXES:
        have = libcs.get(fix.libc)
        if (
            have is None
            or version_key(have) < version_key(fix.since)
            or name != fix.runtime
            or version_key(version) >= version_key(fix.fixed)
            or (fix.only_32bit and binary.elf.arch.bits != 32)
        ):
            continue
        out.append(
            Finding(
                "runtime-seccomp",
                Severity.UNCERTAIN,
                f"{target.runtime}'s seccomp profile answers {fix.call} with EPERM",
                f"{fix.libc} {have} tries {fix.call} first and falls back only on ENOSYS; "
                f"with EPERM, {fix.symptom}. Programs that never make the call are not hit.",
                (f"{fix.libc} {have}", f"runtime {target.runtime} < {fix.fixed}", fix.source),
                f"upgrade {fix.runtime} to >= {fix.fixed}, or run with a seccomp profile that "
                "returns ENOSYS",
                binary.path,
            )
        )
    return out
