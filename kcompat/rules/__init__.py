"""The rule engine: from an image's scanned binaries and a target, findings and a verdict.

Each finding names its rule, what it rests on (file, note, symbol, syscall), what the
user will see and how to fix it. Only a certain failure makes the verdict
`incompatible`; a failure that depends on how a program handles an error (ENOSYS from a
syscall without a known fallback, say) makes it `uncertain`, with the calls listed.
The facts and exact messages come from docs/compat-facts.md via knowledge.json.
"""


from __future__ import annotations

import posixpath

from kcompat import execve
from kcompat.binfmt import QEMU_NAMES
from kcompat.execve import Command, container_argv
from kcompat.facts import ImageFacts
from kcompat.filescan import ScannedFile
from kcompat.formats import Format
from kcompat.image import ImageConfig
from kcompat.knowledge import KNOWLEDGE
from kcompat.layers import FileKind
from kcompat.rules.cgroup import cgroup_rule
from kcompat.rules.common import glibc_of
from kcompat.rules.findings import Entrypoint, Finding, Result, Severity, Verdict, verdict_of
from kcompat.rules.runtime import emulator_rule, runtime_rule
from kcompat.rules.syscalls import kernel_rules
from kcompat.rules.vsyscall import vsyscall_rule
from kcompat.scan import Scan
from kcompat.target import Target

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



def check(
    facts: ImageFacts,
    config: ImageConfig,
    target: Target,
    command: Command | list[str] | None = None,
) -> Result:
    """Judge what the image runs (docker's meaning of `command`) on `target`, from the
    image's facts (kcompat.facts: drawn once, with its analysis)."""
    scan = facts.scan
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
        findings += _loader_rule(facts, binary)
    if arch_ok and target.kernel is not None and binary is not None and binary.elf is not None:
        findings += kernel_rules(facts, binary, target, run_names(entry))
    findings += vsyscall_rule(facts, binary, target)
    findings += runtime_rule(facts, binary, target, run_names(entry))
    if arch_ok:
        findings += emulator_rule(binary, target)
    findings += cgroup_rule(scan, entry, target)
    return Result(verdict_of(findings), findings, entry)


def run_names(entry: Entrypoint) -> tuple[str, ...]:
    """The name the final program is exec'd by (a multi-call binary picks its applet by
    it): a script's interpreter as its #! line names it, else argv[0] as given (the
    chain's first element has its links resolved)."""
    names = (entry.chain[-1],) if len(entry.chain) > 1 else entry.argv[:1]
    if names and posixpath.basename(names[0]) == "busybox" and len(entry.argv) > 1:
        names = (*names, entry.argv[1])  # `busybox APPLET ...`
    return names


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


def _loader_rule(facts: ImageFacts, binary: ScannedFile) -> list[Finding]:
    e = binary.elf
    assert e is not None
    if e.interpreter is None:
        return []
    mine = facts.of_file(binary)
    if not mine.interpreter_found:
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
    missing = mine.missing
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



__all__ = [
    "Command",
    "Entrypoint",
    "Finding",
    "Result",
    "Severity",
    "Verdict",
    "check",
    "glibc_of",
    "verdict_of",
]
