"""The kernel rules: glibc's minimum kernel, Go's documented minimum, and the syscalls a
program needs that the target lacks, judged by what the program's families do on ENOSYS
(kcompat.families) and by glibc's own fallbacks (kcompat/data/knowledge.json)."""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from enum import Enum

from kcompat.facts import ImageFacts
from kcompat.families import KERNEL_TOO_OLD, CallFact, Family, OnError, families, recognise
from kcompat.filescan import ScannedFile
from kcompat.knowledge import KNOWLEDGE
from kcompat.needs import NeedPath, SyscallNeed
from kcompat.rules.common import glibc_of
from kcompat.rules.findings import Finding, Severity
from kcompat.scan import Scan
from kcompat.syscalls import ABI_OF_ARCH, table
from kcompat.target import Target
from kcompat.versions import version_key


def kernel_rules(
    facts: ImageFacts, binary: ScannedFile, target: Target, names: tuple[str, ...] = ()
) -> list[Finding]:
    """`names`: what the program runs as besides its file (the name it is exec'd by:
    a multi-call binary such as busybox picks its applet by it)."""
    assert binary.elf is not None and target.kernel is not None
    e = binary.elf
    kernel = target.kernel
    out: list[Finding] = []
    glibc, libc_tag, libc_path = glibc_of(facts)
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
        known = KNOWLEDGE.raw["glibc"]
        if KERNEL_TOO_OLD in binary.markers:
            out.append(
                Finding(
                    "kernel-too-old",
                    Severity.FATAL,
                    f"{binary.path} (static glibc < 2.36) needs Linux {e.abi_tag}; "
                    f"the target has {kernel}",
                    "A static glibc before 2.36 compares the running kernel with its ABI tag "
                    f"at start-up and aborts: '{KERNEL_TOO_OLD}' (exit "
                    f"{known['kernel_too_old_static_exit']}). The check and its message are in "
                    "the file.",
                    (f"{binary.path}: .note.ABI-tag {e.abi_tag}",
                     f"{binary.path}: contains '{KERNEL_TOO_OLD}'",
                     known["kernel_too_old_static_source"]),
                    f"run on Linux >= {e.abi_tag}, or rebuild against glibc >= 2.36",
                    binary.path,
                    int(known["kernel_too_old_static_exit"]),
                )
            )
            return out
        out.append(
            Finding(
                "abi-tag",
                Severity.INFO,
                f"{binary.path} is built for Linux {e.abi_tag}, the target has {kernel}",
                "A static glibc program without glibc's kernel check (its message, present "
                "in every static glibc before 2.36, is not in the file): 2.36 and later go "
                "on; what decides is whether the syscalls it uses exist (below).",
                (f"{binary.path}: .note.ABI-tag {e.abi_tag}",
                 f"{binary.path}: no '{KERNEL_TOO_OLD}'", known["kernel_too_old_static_source"]),
                None,
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
    out += _syscall_rule(facts, binary, target, glibc, names)
    return out


class Outcome(str, Enum):
    """What one missing syscall does to the program, worst last."""

    HANDLED = "handled"  # a fallback, or a path the program never takes
    PATH = "path"  # fails only on a named code path
    UNKNOWN = "unknown"  # nothing known decides it
    FATAL = "fatal"  # required at start-up


_ORDER = {o: i for i, o in enumerate(Outcome)}


@dataclass(frozen=True)
class Judged:
    need: SyscallNeed
    outcome: Outcome
    reasons: tuple[str, ...]  # what decided it, each with its source


@dataclass
class Program:
    """What the family judgement needs to know about the program being judged."""

    scan: Scan
    binary: ScannedFile
    libraries: list[ScannedFile]
    names: tuple[str, ...]  # the names it runs as: its file, argv[0], the chain
    glibc: str | None
    imports: frozenset[str] = frozenset()

    @classmethod
    def of(
        cls, facts: ImageFacts, binary: ScannedFile, names: tuple[str, ...], glibc: str | None
    ) -> Program:
        assert binary.elf is not None
        libraries = facts.libraries_of(binary)  # a static program maps none
        names = tuple(dict.fromkeys((binary.path, *names)))
        return cls(facts.scan, binary, libraries, names, glibc)

    def __post_init__(self) -> None:
        self.imports = frozenset(
            sym.name
            for obj in (self.binary, *self.libraries)
            if obj.elf is not None
            for sym in obj.elf.undefined
        )

    @property
    def abi(self) -> str | None:
        e = self.binary.elf
        return e.arch.abi if e is not None else None

    @property
    def imports_visible(self) -> bool:
        """A static binary's calls between its own parts are not imports: which of its
        functions it uses is not visible, so facts gated on imports cannot rule it out."""
        e = self.binary.elf
        return e is not None and e.interpreter is not None

    def families_of(self, obj: ScannedFile) -> tuple[tuple[Family, str | None], ...]:
        """(family, its version if known) for one file of the program, glibc aside."""
        e = obj.elf
        if e is None:
            return ()
        own = obj is self.binary
        found = recognise(
            obj.path,
            e.soname,
            e.needed if own else (),
            bool(e.go_version) and own,
            obj.markers,
            self.names if own else (),
        )
        return tuple(
            (f, self._version(f, obj)) for f in found if "libc.so.6" not in f.sonames
        )

    def glibc_facts(self, syscall: str) -> tuple[CallFact, ...]:
        """glibc's own facts for `syscall`, for the glibc this program runs with (a static
        binary's glibc version is only known as far as its own calls prove it)."""
        e = self.binary.elf
        if e is None or e.libc != "glibc":
            return ()
        version = self.glibc if e.interpreter is not None else _static_glibc_floor(self.binary)
        glibc = [fam for fam in families() if "libc.so.6" in fam.sonames]
        return tuple(f for fam in glibc for f in fam.facts(syscall, version, self.abi))

    def in_play(self, fact: CallFact) -> bool:
        """Whether a fact about calls made through named API functions concerns this
        program: one of them is imported (or imports are not visible: a static binary)."""
        if not fact.reached_if_imports or not self.imports_visible:
            return True
        return bool(fact.reached_if_imports & self.imports)

    def _version(self, fam: Family, obj: ScannedFile) -> str | None:
        e = obj.elf
        assert e is not None
        if fam.go and e.go_version:
            return e.go_version.removeprefix("go")
        if e.soname == "libsystemd.so.0":  # symbol versions LIBSYSTEMD_209 ... _257
            found = [int(v[11:]) for v in e.version_defs if re.fullmatch(r"LIBSYSTEMD_\d+", v)]
            return str(max(found)) if found else None
        if e.soname and (m := re.fullmatch(r"libsystemd-(?:shared|core)-(\d+)\.so", e.soname)):
            return m.group(1)  # systemd's private libraries carry the release in their name
        for text in (*self.names, *e.needed):  # python3.11, libpython3.11.so.1.0
            m = re.search(r"python(\d+\.\d+)", text)
            if m and fam.programs and any("python" in p for p in fam.programs):
                return m.group(1)
        return None


# syscalls a static glibc makes only from a release on: their presence proves the floor
_GLIBC_PROOFS = (("rseq", "2.35"), ("clone3", "2.34"), ("faccessat2", "2.33"))


def _static_glibc_floor(binary: ScannedFile) -> str | None:
    if binary.syscalls is None or binary.elf is None or binary.elf.arch.abi is None:
        return None
    t = table(binary.elf.arch.abi)
    names = {row.name for nr in binary.syscalls.numbers if (row := t.lookup(nr)) is not None}
    return next((v for n, v in _GLIBC_PROOFS if n in names), None)


def _classify(fact: CallFact, eperm: bool, prog: Program) -> tuple[Outcome, str]:
    on = fact.on_eperm if eperm else fact.on_enosys
    where = f"{fact.family}: {fact.note} ({fact.source})"
    if on is OnError.FALLBACK:
        return Outcome.HANDLED, where
    if on is OnError.STARTUP:
        return Outcome.FATAL, where
    if on is OnError.PATH:
        applets = {posixpath.basename(n) for n in prog.names}
        if not prog.in_play(fact):
            return Outcome.HANDLED, (
                f"{fact.family}: only {fact.path} reaches it, and nothing in the program "
                f"imports {', '.join(sorted(fact.reached_if_imports)[:3])} ({fact.source})"
            )
        if fact.reached_if_applets and not (fact.reached_if_applets & applets):
            return Outcome.HANDLED, (
                f"{fact.family}: only the applet(s) {', '.join(sorted(fact.reached_if_applets))} "
                f"reach it; this runs as {', '.join(sorted(applets))} ({fact.source})"
            )
        return Outcome.PATH, f"{fact.family}: only when {fact.path}: {fact.note} ({fact.source})"
    return Outcome.UNKNOWN, where  # ERROR: the caller decides


def _decides(fact: CallFact, eperm: bool) -> bool:
    return (fact.on_eperm if eperm else fact.on_enosys) is not OnError.ERROR


def _path_facts(need: SyscallNeed, path: NeedPath, eperm: bool, prog: Program) -> list[CallFact]:
    """The facts that say what happens on this path.

    - glibc's start-up: glibc's internal facts (those not tied to an API function);
    - an import of libc function W by object O: glibc's facts for W if they decide it
      (a fallback inside W), else what O's own families do with W's error;
    - machine code of a static program: glibc's internal facts plus its program
      families' facts (its own direct calls), or, without those, glibc's API facts."""
    g_all = prog.glibc_facts(need.name)
    internal = [f for f in g_all if not f.reached_if_imports]
    obj = prog.scan.files.get(path.obj, prog.binary)
    # what the program's own family does with the call through any library (its
    # start-up drives it, or libraries it loads with dlopen): decides beside the path's
    # own facts, the worst wins
    driven = [
        f for fam, version in prog.families_of(prog.binary)
        for f in fam.facts(need.name, version, prog.abi) if f.program
    ]  # fmt: skip
    if path.kind == "start-up":
        return internal + driven
    own: list[CallFact] = []
    for fam, version in prog.families_of(obj):
        facts = fam.facts(need.name, version, prog.abi)
        played = [f for f in facts if prog.in_play(f) or _on(f, eperm) is OnError.PATH]
        if facts and not played:  # all its uses go through APIs this program lacks
            own.append(_not_reached(fam, facts))
        own += played
    if path.kind == "import":
        api = [f for f in g_all if path.symbol in f.reached_if_imports]
        decided = [f for f in api if _decides(f, eperm)]
        return decided or (own + driven) or api  # glibc's own fallback hides the error
    return internal + (own or [f for f in g_all if f.reached_if_imports]) + driven


def _on(fact: CallFact, eperm: bool) -> OnError:
    return fact.on_eperm if eperm else fact.on_enosys


def _not_reached(fam: Family, facts: tuple[CallFact, ...]) -> CallFact:
    """A family whose every use of a call goes through API functions the program does
    not import: it never makes that call here."""
    apis = sorted({a for f in facts for a in f.reached_if_imports})
    return CallFact(
        fam.id,
        facts[0].syscall,
        OnError.FALLBACK,
        OnError.FALLBACK,
        f"{fam.name} makes it only through {', '.join(apis[:4])}"
        + (" ..." if len(apis) > 4 else "")
        + ", which nothing in this program imports",
        "; ".join(dict.fromkeys(f.source for f in facts)),
    )


def _judge_path(
    need: SyscallNeed, path: NeedPath, eperm: bool, prog: Program
) -> tuple[Outcome, str | None]:
    if not eperm and path.fallback:  # the libc wrapper's own ENOSYS fallback
        return Outcome.HANDLED, f"glibc: {path.fallback}"
    facts = _path_facts(need, path, eperm, prog)
    obj = prog.scan.files.get(path.obj, prog.binary)
    if not facts:
        if not eperm and obj is prog.binary:
            for name in prog.names:
                fb = KNOWLEDGE.program_fallback(posixpath.basename(name), need.name)
                if fb:
                    return Outcome.HANDLED, fb
        return Outcome.UNKNOWN, _undecided(path)
    judged = [_classify(f, eperm, prog) for f in facts]
    outcome, reason = max(judged, key=lambda j: _ORDER[j[0]])
    if outcome is Outcome.UNKNOWN:  # the error goes to a caller no fact speaks for
        return outcome, f"{_undecided(path)}: {reason}"
    return outcome, reason


def _undecided(path: NeedPath) -> str:
    """The path no fact decides, as the undecided verdict names it."""
    if path.kind == "import":
        return f"{path.obj} imports {path.symbol}"
    if path.kind == "start-up":
        return f"glibc's start-up in {path.obj}"
    return f"the machine code of {path.obj}"


def judge(need: SyscallNeed, eperm: bool, prog: Program) -> Judged:
    """The worst of every path that reaches `need` (a fatal start-up call anywhere makes
    the program fail; an unknown path leaves it uncertain)."""
    if not eperm:  # glibc's own fallback for the call, on every path (knowledge.json)
        e = prog.binary.elf
        static = e is not None and e.interpreter is None
        if need.fallback and not static:
            return Judged(need, Outcome.HANDLED, (need.fallback,))
        fb = _static_glibc_fallback(prog.binary, need.name)
        if fb:
            return Judged(need, Outcome.HANDLED, (fb,))
    paths = need.paths or (NeedPath("code", prog.binary.path),)
    results = [_judge_path(need, p, eperm, prog) for p in paths]
    worst = max((o for o, _ in results), key=lambda o: _ORDER[o])
    reasons = tuple(dict.fromkeys(r for o, r in results if r and o is worst))
    if worst is Outcome.HANDLED:
        reasons = tuple(dict.fromkeys(r for _, r in results if r))
    return Judged(need, worst, reasons)


def _line(s: SyscallNeed) -> str:
    return f"{s.name} (Linux {s.since}) via {', '.join(s.via[:2])}"


def _syscall_rule(
    facts: ImageFacts,
    binary: ScannedFile,
    target: Target,
    glibc: str | None,
    names: tuple[str, ...] = (),
) -> list[Finding]:
    assert binary.elf is not None and target.kernel is not None
    needs = facts.of_file(binary).needs
    if needs is None:
        return []
    out: list[Finding] = []
    if not needs.complete:
        out.append(
            Finding(
                "syscalls-unknown",
                Severity.UNCERTAIN,
                f"{binary.path}: syscalls could not be read",
                needs.method + ". What decides it: kcompat check --verify on the target.",
                (),
                None,
                binary.path,
            )
        )
    prog = Program.of(facts, binary, names, glibc)
    own = table(needs.abi)
    # under emulation qemu-user makes the host's syscalls of the same name: the host's
    # table decides (an arm64 table dates everything from 3.7, the port's first kernel)
    native_abi = ABI_OF_ARCH.get(target.platform.architecture)
    arch = binary.elf.arch.platform.architecture
    host = table(native_abi) if native_abi and not target.runs_natively(arch) else None
    absent = set(target.absent_syscalls or ())
    blocked_set = set(target.blocked_syscalls or ())

    def missing(s: SyscallNeed) -> bool:
        if target.absent_syscalls is not None:
            return s.name in absent
        row = (host.lookup(s.name) if host else None) or own.lookup(s.name)
        return row is not None and not row.available_on(target.kernel or "0")

    blocked = [judge(s, True, prog) for s in needs.syscalls if s.name in blocked_set]
    gone = [judge(s, False, prog) for s in needs.syscalls if missing(s)]
    probed = target.absent_syscalls is not None and target.source != "simulated"
    missing_words = (
        "absent on the target" if probed else f"newer than {target.kernel}"
    )  # a probe saw ENOSYS: a missing backport, a sandbox or a seccomp filter, not age
    out += _report(gone, binary, missing_words, "ENOSYS", probed)
    out += _report(blocked, binary, "answered with EPERM on the target", "EPERM", probed)
    return out


def _report(
    judged: list[Judged], binary: ScannedFile, words: str, errno: str, probed: bool
) -> list[Finding]:
    out: list[Finding] = []
    by = {o: [j for j in judged if j.outcome is o] for o in Outcome}
    verify = "kcompat check --verify on the target runs it and reports what happens"
    if by[Outcome.FATAL]:
        first = by[Outcome.FATAL][0]
        out.append(
            Finding(
                "syscall-required-at-start",
                Severity.FATAL,
                f"fails at start: {first.need.name} (Linux {first.need.since}) {words}",
                f"These are made unconditionally at start-up and {errno} ends the program: "
                + "; ".join(f"{j.need.name}: {'; '.join(j.reasons)}" for j in by[Outcome.FATAL]),
                tuple(_line(j.need) for j in by[Outcome.FATAL]),
                "run on a kernel that has them, or use a build of the program that does not "
                "need them",
                binary.path,
            )
        )
    if by[Outcome.HANDLED]:
        out.append(
            Finding(
                "syscalls-with-fallback",
                Severity.INFO,
                f"{len(by[Outcome.HANDLED])} syscall(s) {words}, handled",
                f"These answer {errno} on the target and the program copes (a fallback, or "
                "a code path this program does not take): "
                + "; ".join(
                    f"{j.need.name}: {'; '.join(j.reasons[:2])}" for j in by[Outcome.HANDLED]
                ),
                tuple(_line(j.need) for j in by[Outcome.HANDLED]),
                None,
                binary.path,
            )
        )
    if by[Outcome.PATH]:
        out.append(
            Finding(
                "syscalls-on-a-path",
                Severity.UNCERTAIN,
                f"{len(by[Outcome.PATH])} syscall(s) {words}, needed only on some code paths",
                "The program starts; it fails only if it takes these paths: "
                + "; ".join(f"{j.need.name}: {'; '.join(j.reasons)}" for j in by[Outcome.PATH])
                + f". What decides it: whether the command takes that path; {verify}.",
                tuple(_line(j.need) for j in by[Outcome.PATH]),
                f"avoid that feature on this target, or run on a newer kernel; {verify}",
                binary.path,
            )
        )
    if by[Outcome.UNKNOWN]:
        unknown = by[Outcome.UNKNOWN]
        newest = max((j.need.since or "0" for j in unknown), key=version_key)
        if errno == "EPERM":
            rule, explanation = "syscalls-blocked", (
                "The target answers these with EPERM (a seccomp profile or a missing "
                "capability); fallbacks run only on ENOSYS, so a call that is needed fails "
                "with 'Operation not permitted'."
            )
            fix = "allow them in the seccomp profile, or make it answer ENOSYS"
        elif probed:
            rule, explanation = "syscalls-absent", (
                "The target's probe saw these answer ENOSYS although its kernel version "
                "has them: a backport the distribution kernel lacks, a sandbox (gVisor, "
                "a VM's shim) or a seccomp filter answering ENOSYS."
            )
            fix = "allow them in the runtime's seccomp profile (or run where they exist)"
        else:
            rule, explanation = "syscalls-newer-than-kernel", (
                "These return ENOSYS on the target. Programs often handle that (it is how "
                "new syscalls are probed), so this is not proof of failure."
            )
            fix = f"run on a newer kernel (the newest needed: {newest})"
        out.append(
            Finding(
                rule,
                Severity.UNCERTAIN,
                f"{len(unknown)} syscall(s) {words} without a known fallback",
                explanation
                + " What decides it: what the code that makes each call does with "
                f"{errno}, which no fact kcompat holds says ("
                + "; ".join(f"{j.need.name}: {', '.join(j.reasons)}" for j in unknown)
                + f"); {verify}.",
                tuple(_line(j.need) + (" (probed: ENOSYS)" if probed else "") for j in unknown),
                f"{fix}; {verify}",
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

