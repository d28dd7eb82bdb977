"""The rule engine: from an image's scanned binaries and a target, findings and a verdict.

Each finding names its rule, what it rests on (file, note, symbol, syscall), what the
user will see and how to fix it. Only a certain failure makes the verdict
`incompatible`; a failure that depends on how a program handles an error (ENOSYS from a
syscall without a known fallback, say) makes it `uncertain`, with the calls listed.
The facts and exact messages come from shared/docs/compat-facts.md via knowledge.json.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from enum import Enum

from kcompat import execve
from kcompat.binfmt import QEMU_NAMES
from kcompat.execve import Command, container_argv
from kcompat.formats import Format
from kcompat.image import ImageConfig
from kcompat.knowledge import KNOWLEDGE
from kcompat.layers import FileKind
from kcompat.needs import SyscallNeed, needs_of
from kcompat.scan import Scan, ScannedFile
from kcompat.syscalls import table
from kcompat.target import Target
from kcompat.versions import version_key


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


# -- the entrypoint ----------------------------------------------------------------------


def resolve_entrypoint(
    scan: Scan, config: ImageConfig, command: Command, kernel: str | None = None
) -> Entrypoint:
    """What runs: docker's Entrypoint + Cmd rule, then runc's PATH lookup and the kernel's
    execve through every `#!` hop, for the image's (or -u) user (kcompat.execve)."""
    argv = container_argv(config.entrypoint, config.cmd, command.args, command.entrypoint)
    if not argv:
        return Entrypoint(
            (),
            (),
            None,
            _fatal_entry(
                "no-command",
                "the image has no command",
                "The image config has neither Entrypoint nor Cmd (or --entrypoint '' cleared "
                "it), so a runtime has nothing to run: docker says 'No command specified' "
                "(exit 125).",
                "give a command: kcompat check IMAGE -- CMD",
            ),
        )
    user = command.user or config.user
    workdir = command.workdir or config.workdir
    r = execve.resolve(scan, argv, workdir, user, kernel, command.path, command.volumes)
    problem = None
    if r.problem is not None:
        p = r.problem
        explanation, evidence = p.explanation, p.evidence
        names = _link_chain(scan, p.path) if p.path else []
        refused = [i for i in scan.issues if any(f"{n.lstrip('/')!r}" in i for n in names)]
        if refused:  # the image has it, but a limit or a safety rule left it out
            explanation += (
                " The image does hold it, but kcompat left it out: "
                + "; ".join(refused)
                + " (KCOMPAT_MAX_FILE_SIZE raises the size limit)."
            )
            evidence = (*evidence, *refused)
        problem = Finding(p.rule, Severity.FATAL, p.title, explanation, evidence, p.fix,
                          p.path, p.exit_code)  # fmt: skip
    return Entrypoint(argv, r.chain, r.binary, problem, user, workdir)


def _link_chain(scan: Scan, path: str) -> list[str]:
    """`path` and the paths its symlinks lead to (40 at most), for naming a file that a
    layer rule or a size limit left out of the image."""
    out = [path]
    for _ in range(40):
        node = scan.tree.nodes.get(out[-1])
        if node is None or node.kind is not FileKind.SYMLINK:
            break
        out.append(posixpath.normpath(posixpath.join(posixpath.dirname(out[-1]), node.linkname)))
    return out


def _fatal_entry(
    rule: str, title: str, explanation: str, fix: str, path: str | None = None
) -> Finding:
    return Finding(rule, Severity.FATAL, title, explanation, (), fix, path)


# -- the rules ---------------------------------------------------------------------------


def _glibc(scan: Scan) -> tuple[str | None, str | None, str | None]:
    """(glibc version, its minimum kernel from ld.so/libc.so.6's ABI tag, evidence path)."""
    for c in scan.libc():
        if c.family == "glibc":
            f = scan.files.get(c.path)
            tag = f.elf.abi_tag if f and f.elf else None
            return c.version, tag, c.path
    return None, None, None


def check(
    scan: Scan,
    config: ImageConfig,
    target: Target,
    command: Command | list[str] | None = None,
) -> Result:
    """Judge what the image runs (docker's meaning of `command`) on `target`."""
    if not isinstance(command, Command):
        command = Command(args=tuple(command or ()))
    if config.foreign_os:  # the OS decides; no PATH lookup
        entry = Entrypoint(
            container_argv(config.entrypoint, config.cmd, command.args, command.entrypoint),
            (),
            None,
        )
        return Result(Verdict.INCOMPATIBLE, _os_rule(scan, config, entry), entry)
    findings: list[Finding] = []
    entry = resolve_entrypoint(scan, config, command, target.kernel)
    if entry.problem:
        findings.append(entry.problem)
    findings += _os_rule(scan, config, entry)
    binary = entry.binary
    arch_ok = True
    if binary is not None and binary.elf is not None:
        arch_findings = _arch_rule(binary, config, target)
        findings += arch_findings
        arch_ok = not any(f.severity is Severity.FATAL for f in arch_findings)
        findings += _loader_rule(scan, binary)
    if arch_ok and target.kernel is not None and binary is not None and binary.elf is not None:
        findings += _kernel_rules(scan, binary, target)
    findings += _vsyscall_rule(scan, binary, target)
    findings += _runtime_rule(scan, binary, target)
    findings += _cgroup_rule(scan, entry, target)
    return Result(verdict_of(findings), findings, entry)


def _os_rule(scan: Scan, config: ImageConfig, entry: Entrypoint) -> list[Finding]:
    os_ = config.platform.os
    if config.foreign_os:
        kernel = {"windows": "the Windows NT kernel", "darwin": "the XNU (macOS) kernel"}.get(
            os_, f"a {os_} kernel"
        )
        where = {
            "windows": "a Windows host with Windows containers (Windows Server with the "
            "Containers feature, or Docker Desktop switched to Windows containers)",
        }.get(os_, f"a {os_} host")
        return [
            Finding(
                "os",
                Severity.FATAL,
                f"a {os_} image cannot run on a Linux host",
                f'The image config says os "{os_}": its programs call {kernel}. A container '
                "shares the host's kernel instead of bringing its own, and a Linux host has no "
                f"{kernel.removeprefix('the ')}, so docker refuses it: "
                f'"image operating system "{os_}" cannot be used on this platform" (docker '
                "run exits 125; docker pull of a multi-arch tag says 'no matching manifest "
                "for linux/...').",
                (f"config os: {os_}", f"config architecture: {config.platform.architecture}"),
                f"run it on {where}, or use a Linux build of the program "
                "(a linux/... entry of the image, --platform linux/ARCH), or run it in a "
                f"{os_} virtual machine",
                None,
                125,
            )
        ]
    if entry.chain:
        final = scan.files.get(scan.tree.resolve(entry.chain[-1]) or "")
        if final is not None and final.format in (Format.PE, Format.MACHO):
            kind = "Windows PE" if final.format is Format.PE else "macOS Mach-O"
            return [
                Finding(
                    "os",
                    Severity.FATAL,
                    f"the entrypoint is a {kind} file",
                    f"{final.path} is a {kind} executable; Linux cannot exec it: the runtime "
                    f"fails with 'exec {entry.chain[0]}: exec format error'.",
                    (f"{final.path}: {final.format.value} magic",),
                    "use a Linux build of the program",
                    final.path,
                    KNOWLEDGE.exec_facts["exit_codes"]["execve_ENOEXEC"],
                )
            ]
    return []


def _arch_rule(binary: ScannedFile, config: ImageConfig, target: Target) -> list[Finding]:
    assert binary.elf is not None
    arch = binary.elf.arch.platform.architecture
    out: list[Finding] = []
    labelled = config.platform.architecture
    if labelled != arch:
        out.append(
            Finding(
                "mislabelled",
                Severity.WARNING,
                f"image labelled {labelled} but its entrypoint is {arch}",
                f"The config says {config.platform}, but {binary.path} is an ELF file for "
                f"{binary.elf.arch}. Runtimes choose by the label and the kernel runs by the "
                "ELF header: this judgement follows the ELF header.",
                (
                    f"config architecture: {labelled}",
                    f"{binary.path}: e_machine {binary.elf.arch.machine}",
                ),
                "rebuild or re-tag the image with the right platform",
                binary.path,
            )
        )
    evidence = (f"{binary.path}: ELF {binary.elf.arch}",)
    if arch == target.platform.architecture:
        return out
    if arch in target.compat_arches:
        out.append(
            Finding(
                "arch",
                Severity.INFO,
                f"{arch} runs natively in compat mode",
                f"The target runs {arch} binaries natively "
                f"({target.platform.architecture} compat mode).",
                evidence,
                None,
                binary.path,
            )
        )
        return out
    qemu = QEMU_NAMES.get(arch, arch)
    handler = target.handler_for(arch)
    go = binary.elf.go_version
    go_note = (
        (
            f" {binary.path} is a Go program ({go}); Go under qemu-user is a known source "
            "of crashes ('fatal error: rt_sigaction failure', golang/go#13024)."
        )
        if go
        else ""
    )
    if handler is not None and handler.usable_in_container():
        out.append(
            Finding(
                "emulated",
                Severity.WARNING if go else Severity.INFO,
                f"{arch} runs under emulation ({handler.name})",
                f"binfmt_misc entry {handler.name} is enabled with flag F and a static interpreter "
                f"({handler.interpreter}); expect 8-15x slower execution.{go_note}",
                (*evidence, f"/proc/sys/fs/binfmt_misc/{handler.name}: flags {handler.flags}"),
                None,
                binary.path,
            )
        )
        return out
    if target.private_binfmt and arch in target.qemu:
        out.append(
            Finding(
                "emulated",
                Severity.WARNING if go else Severity.INFO,
                f"{arch} can run under emulation in a private binfmt_misc",
                f"Linux {target.kernel} allows binfmt_misc in a user namespace (6.7+): kcompat run "
                f"registers {target.qemu[arch]} there, nothing changes on the host.{go_note}",
                (*evidence, f"static interpreter {target.qemu[arch]}"),
                None,
                binary.path,
            )
        )
        return out
    if target.binfmt_assumed:
        out.append(
            Finding(
                "emulated",
                Severity.WARNING if go else Severity.INFO,
                f"{arch} assumed to run under qemu-user emulation",
                "The described target is assumed to have qemu-user binfmt handlers (flag F, static "
                f"interpreters); pass --no-binfmt if it has none.{go_note}",
                evidence,
                None,
                binary.path,
            )
        )
        return out
    why = "no binfmt_misc handler is registered for it"
    if handler is not None:
        problems = []
        if not handler.enabled:
            problems.append("disabled")
        if "F" not in handler.flags:
            problems.append("lacks flag F, so the interpreter must exist inside the container")
        if handler.interpreter_static is False:
            problems.append(f"its interpreter {handler.interpreter} is dynamically linked")
        why = f"binfmt_misc entry {handler.name} is " + "; ".join(problems)
    out.append(
        Finding(
            "arch",
            Severity.FATAL,
            f"{arch} binaries cannot run on {target.platform}",
            f"{binary.path} is {binary.elf.arch} and {why}: the container starts and exec "
            f"fails with 'exec {binary.path}: exec format error' (docker run exits 1).",
            evidence,
            f"apt-get install qemu-user-static (Debian package qemu-user-static, gives "
            f"qemu-{qemu}-static and registers binfmt_misc entries with flag F); on Linux "
            f"6.7+ a private binfmt_misc in a user namespace needs no host change; or use the "
            f"{target.platform.architecture} variant of the image",
            binary.path,
            KNOWLEDGE.exec_facts["exit_codes"]["foreign_arch"],
        )
    )
    return out


def _loader_rule(scan: Scan, binary: ScannedFile) -> list[Finding]:
    e = binary.elf
    assert e is not None
    if e.interpreter is None:
        return []
    if scan.tree.resolve(e.interpreter) not in scan.files:
        return [
            Finding(
                "interpreter-missing",
                Severity.FATAL,
                f"{binary.path}: its loader {e.interpreter} is missing",
                f"{binary.path} asks for the ELF interpreter {e.interpreter} (PT_INTERP), which is "
                "not in the image: the container starts and exec fails with 'exec "
                f"{binary.path}: no such file or directory' (docker run exits 1) although the "
                "file exists.",
                (f"{binary.path}: PT_INTERP {e.interpreter}",),
                "install the C library the program was built for, or use a static build",
                binary.path,
                KNOWLEDGE.exec_facts["exit_codes"]["execve_ENOENT"],
            )
        ]
    missing = scan.missing_libraries(binary)
    if missing:
        first = missing[0].library
        return [
            Finding(
                "library-missing",
                Severity.FATAL,
                f"{binary.path}: {', '.join(m.library for m in missing)} not found",
                f"The loader fails with: {binary.path}: error while loading shared libraries: "
                f"{first}: cannot open shared object file: No such file or directory (exit 127).",
                tuple(
                    f"DT_NEEDED {m.library} of {m.needed_by}: not on the search path"
                    for m in missing
                ),
                "install the package that provides it, or fix RUNPATH / ld.so.conf",
                binary.path,
                127,
            )
        ]
    return []


def _kernel_rules(scan: Scan, binary: ScannedFile, target: Target) -> list[Finding]:
    assert binary.elf is not None and target.kernel is not None
    e = binary.elf
    kernel = target.kernel
    out: list[Finding] = []
    glibc, libc_tag, libc_path = _glibc(scan)
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


def _vsyscall_rule(scan: Scan, binary: ScannedFile | None, target: Target) -> list[Finding]:
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
    glibc, _, libc_path = _glibc(scan)
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
    libraries = scan.library_closure(binary) if binary.elf.interpreter else []
    for f in (binary, *libraries):
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


def _runtime_rule(scan: Scan, binary: ScannedFile | None, target: Target) -> list[Finding]:
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


def _cgroup_rule(scan: Scan, entry: Entrypoint, target: Target) -> list[Finding]:
    if target.cgroup != "v2" or entry.binary is None or entry.binary.elf is None:
        return []
    b = entry.binary
    if not any("systemd" in p for p in (*entry.chain, b.path)):
        return []
    version = None
    for lib in b.elf.needed if b.elf else ():
        m = re.match(r"libsystemd-shared-(\d+)", lib)
        if m:
            version = int(m.group(1))
    if version is not None and version >= 230:
        return []
    known = f"systemd {version}" if version else "a systemd without libsystemd-shared (< 231)"
    return [
        Finding(
            "cgroup-v2-systemd",
            Severity.FATAL if version else Severity.UNCERTAIN,
            f"{known} on a cgroup v2-only host",
            "systemd before 230 cannot run on cgroup v2: 'Failed to mount cgroup at "
            "/sys/fs/cgroup/systemd: Operation not permitted' (containers/podman#6183).",
            (f"{b.path}", "target cgroup: v2"),
            "boot the host with systemd.unified_cgroup_hierarchy=0, or use a newer base image",
            b.path,
        )
    ]


__all__ = ["Command", "Finding", "Result", "Severity", "Verdict", "check"]
