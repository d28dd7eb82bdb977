"""Facts about C libraries and Go that the rules judge by, loaded and validated at import.

The data (kcompat/data/knowledge.json) cites its sources; they are gathered in
docs/compat-facts.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatch
from importlib import resources
from typing import Any

from kcompat.versions import version_key as vkey


@dataclass(frozen=True)
class Fallback:
    syscall: str
    kernel: str
    glibc_since: str
    fallback: bool
    note: str


@dataclass(frozen=True)
class SeccompFix:
    """A C library that tries a new syscall first, and the runtime release whose default
    seccomp profile stopped answering it with EPERM (knowledge.json runtime_seccomp)."""

    libc: str
    since: str
    call: str
    runtime: str
    fixed: str
    symptom: str
    source: str
    only_32bit: bool = False


@dataclass(frozen=True)
class Knowledge:
    raw: dict[str, Any]
    fallbacks: tuple[Fallback, ...]
    seccomp_fixes: tuple[SeccompFix, ...] = ()

    def runtime_eperm(self, runtime: str) -> tuple[SeccompFix, ...]:
        """The fixes `runtime` ("docker:20.10.7") predates: calls its profile answers EPERM."""
        name, _, version = runtime.partition(":")
        return tuple(
            f
            for f in self.seccomp_fixes
            if f.runtime == name and version and vkey(version) < vkey(f.fixed)
        )

    def glibc_default_min_kernel(self, glibc: str, arch: str) -> str:
        """glibc's default --enable-kernel for a release, raised to the arch's own minimum."""
        found = "2.6.16"
        for step in self.raw["glibc"]["default_min_kernel"]:
            if vkey(glibc) >= vkey(step["from"]):
                found = step.get("except_arches", {}).get(arch, step["kernel"])
        arch_min = self.raw["glibc"]["arch_min_kernel"].get(arch)
        return max(found, arch_min, key=vkey) if arch_min else found

    def glibc_checks_kernel_version(self, glibc: str) -> bool:
        """glibc before 2.36 aborts with FATAL: kernel too old below its ABI tag."""
        return vkey(glibc) < vkey(self.raw["glibc"]["kernel_too_old_check_removed_in"])

    def glibc_needs_vsyscall(self, glibc: str) -> bool:
        return vkey(glibc) < vkey(self.raw["glibc"]["vsyscall_needed_before"])

    def go_min_kernel(self, go_version: str) -> str:
        found = self.raw["go_min_kernel"][0]["kernel"]
        for step in self.raw["go_min_kernel"]:
            if vkey(go_version) >= vkey(step["from"]):
                found = step["kernel"]
        return str(found)

    @property
    def exec_facts(self) -> dict[str, Any]:
        """How runc and the kernel start a command: `#!` buffer, nesting limit, and the
        exit status docker returns for each failure."""
        facts: dict[str, Any] = self.raw["exec"]
        return facts

    def program_fallback(self, program: str, syscall: str) -> str | None:
        """A well-known program's own ENOSYS fallback for `syscall`, with its source."""
        for f in self.raw.get("program_fallbacks", ()):
            if f["syscall"] == syscall and any(fnmatch(program, p) for p in f["programs"]):
                return f"{f['note']} ({f['source']})"
        return None

    def fallback_for(self, syscall: str, glibc: str) -> Fallback | None:
        """glibc's own ENOSYS fallback for `syscall`, if this glibc has one."""
        for f in self.fallbacks:
            if f.syscall == syscall and f.fallback and vkey(glibc) >= vkey(f.glibc_since):
                return f
        return None


def _load() -> Knowledge:
    raw = json.loads(resources.files("kcompat").joinpath("data", "knowledge.json").read_text())
    if raw.get("schema") != 1:
        raise ValueError("kcompat/data/knowledge.json: unknown schema")
    fallbacks = tuple(
        Fallback(
            str(f["syscall"]),
            str(f["kernel"]),
            str(f["glibc_since"]),
            bool(f["fallback"]),
            str(f["note"]),
        )
        for f in raw["enosys_fallbacks"]
    )
    versions = [v for f in fallbacks for v in (f.kernel, f.glibc_since)]
    for step in (*raw["glibc"]["default_min_kernel"], *raw["go_min_kernel"]):
        versions += [step["from"], step["kernel"]]
    exec_ = raw["exec"]
    versions += [exec_["binprm_buf_size"]["256_since"], exec_["shebang_enoexec_since"]]
    if not isinstance(exec_["max_interpreter_depth"], int) or not all(
        isinstance(v, int) for v in exec_["exit_codes"].values()
    ):
        raise ValueError("kcompat/data/knowledge.json: exec facts must be integers")
    fixes = tuple(
        SeccompFix(
            str(f["libc"]), str(f["since"]), str(f["call"]), str(f["runtime"]),
            str(f["fixed"]), str(f["symptom"]), str(f["source"]), bool(f.get("only_32bit")),
        )
        for f in raw["runtime_seccomp"]["fixes"]
    )  # fmt: skip
    versions += [v for f in fixes for v in (f.since, f.fixed)]
    for version in versions:
        vkey(version)  # raises ValueError on a malformed version: caught at import
    return Knowledge(raw, fallbacks, fixes)


KNOWLEDGE = _load()
