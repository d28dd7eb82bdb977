"""The legacy vsyscall page on vsyscall=none / xonly hosts."""

from __future__ import annotations

from kcompat.facts import ImageFacts
from kcompat.filescan import ScannedFile
from kcompat.knowledge import KNOWLEDGE
from kcompat.rules.common import glibc_of
from kcompat.rules.findings import Finding, Severity
from kcompat.target import Target


def vsyscall_rule(
    facts: ImageFacts, binary: ScannedFile | None, target: Target
) -> list[Finding]:
    """The legacy vsyscall page: old dynamic glibc (< 2.14) calls it, and so does any code
    that names its addresses (kcompat.vsyscall): a call needs `emulate` or `xonly`, a
    read needs `emulate`."""
    if target.vsyscall not in ("none", "xonly") or binary is None or binary.elf is None:
        return []
    if binary.elf.arch.platform.architecture != "amd64":
        return []
    mode = target.vsyscall
    fix = (
        "boot the host with vsyscall=emulate"
        + (" (or xonly, Linux 5.3+)" if mode == "none" else "")
        + ", or use a newer base image / rebuild the program"
    )
    segv = (
        f"on a vsyscall={mode} kernel the process dies with SIGSEGV (docker run exits 139); "
        f"dmesg shows 'vsyscall attempted with vsyscall={mode}'"
        if mode == "none"
        else "with vsyscall=xonly the page can be executed but not read: the load faults with "
        "SIGSEGV (docker run exits 139)"
    )
    glibc, _, libc_path = glibc_of(facts)
    if (
        mode == "none"
        and binary.elf.interpreter
        and glibc
        and KNOWLEDGE.glibc_needs_vsyscall(glibc)
    ):
        return [
            Finding(
                "vsyscall",
                Severity.FATAL,
                f"glibc {glibc} needs vsyscall; the target has vsyscall=none",
                f"glibc before 2.14 calls the fixed vsyscall page: {segv}.",
                (f"{libc_path}: glibc {glibc}", "target vsyscall: none"),
                fix,
                binary.path,
                139,
            )
        ]
    out: list[Finding] = []
    for f in (binary, *facts.libraries_of(binary)):  # a static program maps none
        use = f.vsyscall
        if use is None or (use.kind == "call" and mode == "xonly"):
            continue
        own = f is binary
        out.append(
            Finding(
                "vsyscall",
                Severity.FATAL if own else Severity.UNCERTAIN,
                f"{f.path} {'reads' if use.kind == 'read' else 'calls'} the vsyscall page; "
                f"the target has vsyscall={mode}",
                f"Its machine code uses the legacy vsyscall page ({use}): {segv}."
                + (
                    ""
                    if own
                    else f" It is in a library {binary.path} loads; whether the program "
                    "reaches that code depends on what it does."
                ),
                (f"{f.path}: {use}", f"target vsyscall: {mode}"),
                fix,
                f.path,
                139,
            )
        )
        if own:
            break
    return out
