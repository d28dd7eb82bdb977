"""The rule engine's vocabulary: findings, their severities, and the verdict they make."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from kcompat.filescan import ScannedFile


class Severity(str, Enum):
    FATAL = "fatal"  # it will fail: the verdict is incompatible
    UNCERTAIN = "uncertain"  # it may fail: the verdict is at best uncertain
    WARNING = "warning"  # worth knowing; does not change the verdict
    INFO = "info"


class Verdict(str, Enum):
    NATIVE = "native"  # runs, on the target's own CPU (or its compat mode)
    EMULATED = "emulated"  # runs, through a qemu-user binfmt handler
    INCOMPATIBLE = "incompatible"
    UNCERTAIN = "uncertain"


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    title: str
    explanation: str
    evidence: tuple[str, ...] = ()
    fix: str | None = None
    path: str | None = None
    exit_code: int | None = None  # what `docker run` returns when this failure happens


@dataclass(frozen=True)
class Entrypoint:
    argv: tuple[str, ...]
    chain: tuple[str, ...]  # argv[0] resolved, then script interpreters, in exec order
    binary: ScannedFile | None  # the ELF the kernel finally runs
    problem: Finding | None = None
    user: str | None = None  # USER or -u, as given
    workdir: str | None = None


@dataclass
class Result:
    verdict: Verdict
    findings: list[Finding] = field(default_factory=list)
    entrypoint: Entrypoint | None = None


def verdict_of(findings: list[Finding]) -> Verdict:
    if any(f.severity is Severity.FATAL for f in findings):
        return Verdict.INCOMPATIBLE
    if any(f.severity is Severity.UNCERTAIN for f in findings):
        return Verdict.UNCERTAIN
    if any(f.rule == "emulated" for f in findings):
        return Verdict.EMULATED
    return Verdict.NATIVE

