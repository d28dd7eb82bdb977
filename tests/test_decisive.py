"""The decisive rules (issue 17) on in-memory scans: each path to a missing syscall is
judged by the facts of the families it passes through (kcompat.families); the old-runtime
rule is judged per binary. The facts here are a small table made for the tests, so the
rules are tested, not kcompat/data/families.json (tests/test_knowledge.py checks that)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from kcompat import families as fam_mod
from kcompat.families import load_families
from kcompat.rules import Severity, Verdict, check
from kcompat.rules import syscalls as syscall_rules
from kcompat.target import described
from tests.memscan import config, elf, facts_of, libc

TABLE = load_families({
    "schema": 1,
    "families": [
        {"id": "libfoo", "recognise": {"sonames": ["libfoo.so.1"]}, "calls": [
            {"syscall": "getrandom", "on_enosys": "fallback", "note": "reads /dev/urandom",
             "source": "test"},
            {"syscall": "pidfd_open", "on_enosys": "path", "path": "datagram I/O",
             "reached_if_imports": ["foo_dgram_open"], "note": "fails the read",
             "source": "test"},
        ]},
        {"id": "vm", "recognise": {"programs": ["vm*"]}, "calls": [
            {"syscall": "memfd_create", "on_enosys": "start-up", "on_eperm": "start-up",
             "note": "aborts: cannot create the code heap", "source": "test"},
            {"syscall": "clone3", "on_enosys": "fallback", "on_eperm": "start-up",
             "note": "starts its threads at start-up", "source": "test"},
        ]},
        {"id": "jvm", "recognise": {"programs": ["jvm"]}, "calls": [
            {"syscall": "clone3", "on_enosys": "fallback", "on_eperm": "start-up",
             "program": True, "note": "its library starts the threads at start-up",
             "source": "test"},
        ]},
        {"id": "box", "recognise": {"programs": ["box"], "markers": ["BoxBox v"]}, "calls": [
            {"syscall": "setns", "on_enosys": "path", "path": "the nsenter applet",
             "reached_if_applets": ["nsenter"], "note": "nsenter fails", "source": "test"},
        ]},
    ],
})  # fmt: skip


@pytest.fixture(autouse=True)
def _table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fam_mod, "families", lambda: TABLE)
    monkeypatch.setattr(syscall_rules, "families", lambda: TABLE)


def judged(facts: Any, *cmd: str, kernel: str = "3.2", runtime: str | None = None) -> Any:
    return check(facts, config(*cmd), described(kernel, "amd64", runtime=runtime), None)


def rules(result: Any, severity: Severity | None = None) -> set[str]:
    return {f.rule for f in result.findings if severity is None or f.severity is severity}


def lib(*imports: str) -> Any:
    return elf("/usr/lib/x86_64-linux-gnu/libfoo.so.1", soname="libfoo.so.1", imports=imports)


def test_fallback_in_a_library_family_is_handled() -> None:
    """getrandom (3.17) reached only through libfoo, which falls back: runs on 3.2."""
    prog = elf("/usr/bin/app", imports=("puts",), needed=("libfoo.so.1", "libc.so.6"))
    r = judged(facts_of(prog, lib("getrandom"), *libc()), "/usr/bin/app")
    assert r.verdict is Verdict.NATIVE, r.findings
    (f,) = [f for f in r.findings if f.rule == "syscalls-with-fallback"]
    assert "getrandom" in f.explanation and "libfoo" in f.explanation


def test_unknown_caller_stays_uncertain_and_says_what_decides() -> None:
    """The same call imported by the program itself, a family kcompat knows nothing of."""
    prog = elf("/usr/bin/app", imports=("getrandom",))
    r = judged(facts_of(prog, *libc()), "/usr/bin/app")
    assert r.verdict is Verdict.UNCERTAIN
    (f,) = [f for f in r.findings if f.rule == "syscalls-newer-than-kernel"]
    assert "getrandom" in " ".join(f.evidence) and "--verify" in (f.fix or "")


def test_path_only_call_is_uncertain_with_the_path_named() -> None:
    prog = elf("/usr/bin/app", imports=("foo_dgram_open",), needed=("libfoo.so.1", "libc.so.6"))
    r = judged(facts_of(prog, lib("pidfd_open"), *libc()), "/usr/bin/app", kernel="4.19")
    (f,) = [f for f in r.findings if f.rule == "syscalls-on-a-path"]
    assert f.severity is Severity.UNCERTAIN and "datagram I/O" in f.explanation
    assert r.verdict is Verdict.UNCERTAIN


def test_path_not_reached_without_its_imports() -> None:
    prog = elf("/usr/bin/app", imports=("puts",), needed=("libfoo.so.1", "libc.so.6"))
    r = judged(facts_of(prog, lib("pidfd_open"), *libc()), "/usr/bin/app", kernel="4.19")
    assert "syscalls-on-a-path" not in rules(r) and r.verdict is Verdict.NATIVE
    (f,) = [f for f in r.findings if f.rule == "syscalls-with-fallback"]
    assert "foo_dgram_open" in f.explanation


def test_start_up_call_fails_at_start() -> None:
    prog = elf("/usr/bin/vm", imports=("memfd_create",))
    r = judged(facts_of(prog, *libc()), "/usr/bin/vm")
    (f,) = [f for f in r.findings if f.rule == "syscall-required-at-start"]
    assert f.severity is Severity.FATAL and f.title.startswith("fails at start: memfd_create")
    assert r.verdict is Verdict.INCOMPATIBLE
    assert judged(facts_of(prog, *libc()), "/usr/bin/vm", kernel="3.17").verdict is Verdict.NATIVE


def test_multi_call_binary_judged_by_its_applet() -> None:
    """A static busybox-like binary: setns is only the nsenter applet's."""
    box = elf("/bin/box", interpreter=None, syscalls=("read", "write", "setns"),
              markers=("BoxBox v",))  # fmt: skip
    links = {"/bin/sh": "box", "/usr/bin/nsenter": "/bin/box"}
    facts = facts_of(box, links=links)
    sh = judged(facts, "/bin/sh", "-c", "true", kernel="2.6.32")
    assert "syscalls-on-a-path" not in rules(sh) and "syscalls-newer-than-kernel" not in rules(sh)
    ns = judged(facts, "/usr/bin/nsenter", kernel="2.6.32")
    assert "syscalls-on-a-path" in rules(ns, Severity.UNCERTAIN)


def test_old_runtime_rule_is_per_binary() -> None:
    """docker 20.10.7 answers clone3 with EPERM: a program that never creates threads or
    spawns is not hit, a static musl one never calls clone3, a runtime that starts
    threads at start-up fails there, and one that may create threads is uncertain."""
    plain = elf("/usr/bin/plain", imports=("puts",))
    threads = elf("/usr/bin/app", imports=("pthread_create",))
    vm = elf("/usr/bin/vm", imports=("pthread_create",))
    musl = elf("/usr/bin/m", interpreter=None, syscalls=("read", "write", "clone"), glibc="")
    facts = facts_of(plain, threads, vm, musl, *libc("2.36"))
    rt = "docker:20.10.7"
    assert "runtime-seccomp" not in rules(judged(facts, "/usr/bin/plain", kernel="5.10",
                                                  runtime=rt))  # fmt: skip
    assert "runtime-seccomp" not in rules(judged(facts, "/usr/bin/m", kernel="5.10", runtime=rt))
    app = judged(facts, "/usr/bin/app", kernel="5.10", runtime=rt)
    assert "runtime-seccomp" in rules(app, Severity.UNCERTAIN)
    vmr = judged(facts, "/usr/bin/vm", kernel="5.10", runtime=rt)
    (f,) = [f for f in vmr.findings if f.rule == "runtime-seccomp"]
    assert f.severity is Severity.FATAL and f.title.startswith("fails at start")
    fixed = judged(facts, "/usr/bin/vm", kernel="5.10", runtime="docker:20.10.9")
    assert "runtime-seccomp" not in rules(fixed)


def test_program_fact_decides_the_paths_through_its_libraries() -> None:
    """A `program` fact (the JVM, node) holds for every path of a program of its family:
    the threads its library starts at start-up fail there; the same library under
    another program leaves it uncertain, and ENOSYS is glibc's own fallback."""
    libjli = elf("/usr/lib/x86_64-linux-gnu/libjli.so", soname="libjli.so",
                 imports=("pthread_create",))
    java = elf("/usr/bin/jvm", imports=("puts",), needed=("libjli.so", "libc.so.6"))
    other = elf("/usr/bin/other", imports=("puts",), needed=("libjli.so", "libc.so.6"))
    facts = facts_of(libjli, java, other, *libc("2.36"))
    rt = "docker:20.10.7"
    (f,) = [f for f in judged(facts, "/usr/bin/jvm", kernel="5.10", runtime=rt).findings
            if f.rule == "runtime-seccomp"]  # fmt: skip
    assert f.severity is Severity.FATAL and "its library starts the threads" in f.explanation
    assert "runtime-seccomp" in rules(judged(facts, "/usr/bin/other", kernel="5.10", runtime=rt),
                                      Severity.UNCERTAIN)  # fmt: skip
    assert "syscall-required-at-start" not in rules(judged(facts, "/usr/bin/jvm", kernel="4.19"))
    with pytest.raises(ValueError, match="program is true or false"):
        fam_mod.load_families({"schema": 1, "families": [{"id": "x", "calls": [
            {"syscall": "clone3", "on_enosys": "fallback", "note": "n", "source": "s",
             "program": "yes"}]}]})  # fmt: skip


def test_emulated_binary_judged_by_the_host_table() -> None:
    """An arm64 program on an amd64 host runs under qemu-user, which makes the host's
    calls: arm64's table dates every call from 3.7 (the port), the host's does not."""
    from tests.memscan import ARM64

    prog = elf("/bin/tool", interpreter=None, syscalls=("read", "write", "openat"), arch=ARM64)
    facts = facts_of(prog)
    r = check(facts, config("/bin/tool", arch="arm64"), described("3.2", "amd64"), None)
    assert "syscalls-newer-than-kernel" not in rules(r), r.findings


def test_emulated_binary_under_an_old_runtime_depends_on_the_hosts_qemu() -> None:
    """qemu-user makes its threads with the host build's pthread_create: a profile that
    answers clone3 with EPERM leaves an emulated program uncertain (native ones are judged
    by their own C library only), and a runtime with the fix does not."""
    from tests.memscan import ARM64

    prog = elf("/bin/tool", interpreter=None, syscalls=("read", "write"), arch=ARM64, glibc="")
    native = elf("/bin/tool", interpreter=None, syscalls=("read", "write"), glibc="")
    emulated = check(facts_of(prog), config("/bin/tool", arch="arm64"),
                     described("5.10", "amd64", runtime="docker:20.10.7"), None)  # fmt: skip
    assert "emulator-seccomp" in rules(emulated, Severity.UNCERTAIN), emulated.findings
    fixed = check(facts_of(prog), config("/bin/tool", arch="arm64"),
                  described("5.10", "amd64", runtime="docker:20.10.9"), None)  # fmt: skip
    assert "emulator-seccomp" not in rules(fixed)
    here = check(facts_of(native), config("/bin/tool"),
                 described("5.10", "amd64", runtime="docker:20.10.7"), None)  # fmt: skip
    assert "emulator-seccomp" not in rules(here)


def test_families_table_is_validated() -> None:
    with pytest.raises(ValueError, match="path"):
        load_families({"schema": 1, "families": [{"id": "x", "calls": [
            {"syscall": "a", "on_enosys": "path", "note": "n", "source": "s"}]}]})  # fmt: skip
    with pytest.raises(ValueError):
        load_families({"schema": 1, "families": [{"id": "x", "calls": [
            {"syscall": "a", "on_enosys": "maybe", "note": "n", "source": "s"}]}]})  # fmt: skip
    with pytest.raises(ValueError, match="schema"):
        load_families({"schema": 2})


@pytest.mark.integration
def test_verify_runs_under_the_old_runtimes_profile(tmp_path: Any) -> None:
    """check --verify --runtime docker:20.10.7 runs the program with that profile's EPERM
    answers (clone3 here): a static glibc program that starts a thread fails there with
    the error docker users saw (moby#42680), and runs under a fixed docker."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc with static glibc (installed by ci/setup)")
    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "root" / "bin"
    root.mkdir(parents=True)
    subprocess.run(["gcc", "-static", "-pthread", "-O2", "-o", str(root / "thread"),
                    str(repo / "tests" / "fixtures" / "thread.c")], check=True)  # fmt: skip

    def verify(runtime: str) -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "kcompat", "check", "--kernel", "6.1", "--runtime", runtime,
             "--verify", "--format", "json", f"dir:{tmp_path / 'root'}", "--", "/bin/thread"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        doc: dict[str, Any] = json.loads(r.stdout)
        return doc

    old = verify("docker:20.10.7")["verify"]
    assert old["observed"]["outcome"] == "fails", old
    assert "Operation not permitted" in (old["observed"]["first_error"] or "")
    assert "EPERM for clone3" in old["observed"]["simulated"]
    new = verify("docker:20.10.24")["verify"]
    assert new["observed"]["outcome"] == "runs" and new["agreement"] == "agree", new


@pytest.mark.integration
def test_verify_does_not_blame_the_kernel_for_qemu_users_answers(tmp_path: Any) -> None:
    """A static program that probes getrandom as Rust's getrandom crate does: under
    `--kernel 3.10` qemu-user (the release faker) answers the NULL probe with EFAULT and
    the real call fails, though a real 3.10 answers ENOSYS and the program reads
    /dev/urandom. --verify runs it again without qemu-user: it runs, so the failure
    decides nothing (no settled verdict, no disagreement)."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("gcc") is None or shutil.which("qemu-x86_64-static") is None:
        pytest.skip("needs gcc with static glibc and qemu-user-static (installed by ci/setup)")
    if os.uname().machine != "x86_64":
        pytest.skip("the release faker is qemu-x86_64 on this test's arch only")
    repo = Path(__file__).resolve().parents[1]
    root = tmp_path / "root" / "bin"
    root.mkdir(parents=True)
    src = repo / "tests" / "fixtures" / "getrandom_probe.c"
    subprocess.run(["gcc", "-static", "-O2", "-o", str(root / "probe"), str(src)], check=True)
    r = subprocess.run(
        [sys.executable, "-m", "kcompat", "check", "--kernel", "3.10", "--verify", "--format",
         "json", f"dir:{tmp_path / 'root'}", "--", "/bin/probe"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    rep = json.loads(r.stdout)
    v = rep["verify"]
    assert v["observed"]["outcome"] == "fails", v  # the simulation's own failure
    assert "getrandom" in (v["observed"]["first_error"] or "")
    assert v["agreement"] == "uncertain" and "without qemu-user" in v["summary"], v
    assert rep.get("verdict_basis") != "observed" and rep["verdict"] != "incompatible", rep


# -- on real binaries from Debian packages -------------------------------------------------


def _kc_json(*args: str) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "kcompat", "check", "--format", "json", *args],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


@pytest.mark.integration
def test_start_up_check_fails_and_verify_agrees(tmp_path: Any, binaries: Any,
                                                images: Any) -> None:
    """Debian 11's busybox-static (glibc 2.31) carries glibc's kernel check: below its
    ABI tag it fails at start (observed: exit 134); Debian 12's (2.36) does not."""
    import shutil

    old = binaries.bin("busybox-bullseye-amd64")
    if not old.exists():
        pytest.skip(f"no bullseye busybox-static: {old.with_suffix('.missing')}")
    (tmp_path / "bin").mkdir()
    shutil.copy(old, tmp_path / "bin" / "busybox")
    rep = _kc_json("--kernel", "2.6.32", "--verify", f"dir:{tmp_path}", "--", "/bin/busybox",
                   "true")  # fmt: skip
    (f,) = [f for f in rep["findings"] if f["rule"] == "kernel-too-old"]
    assert f["severity"] == "fatal" and rep["verdict"] == "incompatible"
    assert rep["verify"]["agreement"] == "agree" and rep["verify"]["observed"]["exit_code"] == 134
    new = _kc_json("--kernel", "2.6.32", images.oci("busybox-amd64"), "--", "sh", "-c", "true")
    assert "kernel-too-old" not in {f["rule"] for f in new["findings"]}


@pytest.mark.integration
def test_fallback_runs_and_verify_agrees(binaries: Any) -> None:
    """bullseye's ls on Linux 4.4: statx (4.11) is missing, glibc falls back."""
    rep = _kc_json("--kernel", "4.4", "--verify", binaries.bullseye, "--", "ls", "-l", "/")
    assert rep["verdict"] == "native", rep["findings"]
    (f,) = [f for f in rep["findings"] if f["rule"] == "syscalls-with-fallback"]
    assert "statx" in f["explanation"]
    assert rep["verify"]["agreement"] == "agree"


@pytest.mark.integration
def test_path_only_call_is_uncertain_and_names_the_path(images: Any) -> None:
    """busybox's setns (Linux 3.0) is only its nsenter applet's: `busybox nsenter` is
    uncertain with that path named; `sh` never reaches it."""
    ns = _kc_json("--kernel", "2.6.32", images.oci("busybox-amd64"), "--", "busybox",
                  "nsenter", "--help")  # fmt: skip
    paths = [f for f in ns["findings"] if f["rule"] == "syscalls-on-a-path"]
    assert paths and "nsenter" in paths[0]["explanation"] and paths[0]["severity"] == "uncertain"
    sh = _kc_json("--kernel", "2.6.32", images.oci("busybox-amd64"), "--", "sh", "-c", "true")
    assert not any("setns" in " ".join(f["evidence"]) for f in sh["findings"]
                   if f["severity"] == "uncertain")  # fmt: skip


@pytest.mark.integration
def test_static_musl_is_not_hit_by_old_runtimes_clone3(tmp_path: Any) -> None:
    """A static musl program that starts a thread never calls clone3: docker 20.10.7's
    profile does not touch it (not flagged, and it runs under that profile)."""
    import shutil
    import subprocess
    from pathlib import Path

    if shutil.which("musl-gcc") is None:
        pytest.skip("needs musl-gcc (musl-tools, installed by ci/setup)")
    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "bin").mkdir()
    source = repo / "tests" / "fixtures" / "thread.c"
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(tmp_path / "bin" / "thread"),
                    str(source), "-lpthread"], check=True)  # fmt: skip
    rep = _kc_json("--kernel", "5.10", "--runtime", "docker:20.10.7", "--verify",
                   f"dir:{tmp_path}", "--", "/bin/thread")  # fmt: skip
    assert "runtime-seccomp" not in {f["rule"] for f in rep["findings"]}
    assert rep["verify"]["observed"]["outcome"] == "runs", rep["verify"]
