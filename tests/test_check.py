"""`kcompat check` and `kcompat host`: verdicts on real images against described,
saved and probed targets, the JSON report against ci/report.schema.json, SARIF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from kcompat.analysis import scan_image
from kcompat.facts import ImageFacts
from kcompat.pull import open_image
from kcompat.rules import Severity, Verdict, check
from kcompat.scan import Scan
from kcompat.target import described, probe_host
from tests import inproc
from tests.conftest import Binaries, Fixtures

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "ci" / "report.schema.json").read_text())


def kcompat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kcompat", *args], capture_output=True, text=True, check=False
    )


def check_json(*args: str) -> tuple[int, dict[str, Any]]:
    """`kcompat check --format json ARGS` (in this process: tests/inproc.py), its status
    and its report, validated against the checked-in schema."""
    r = inproc.kcompat("check", "--format", "json", *args)
    assert r.stdout, r.stderr
    rep = json.loads(r.stdout)
    jsonschema.validate(rep, SCHEMA)
    return r.returncode, rep


def judge(scan: Scan, config: Any, target: Any, command: list[str] | None) -> Any:
    """The rules on `scan`'s facts, drawn now (some tests change the scan in between)."""
    return check(ImageFacts.of(scan), config, target, command)


def rules(rep: dict[str, Any], severity: str | None = None) -> set[str]:
    return {f["rule"] for f in rep["findings"] if severity is None or f["severity"] == severity}


@pytest.fixture(scope="module")
def bullseye(binaries: Binaries) -> tuple[Scan, Any]:
    with open_image(binaries.bullseye) as opened:
        return scan_image(opened), opened.image.config


@pytest.mark.integration
def test_kernel_too_old_below_glibc_minimum(bullseye: tuple[Scan, Any]) -> None:
    """compat-facts: Debian 11 (glibc 2.31) at 3.1 prints FATAL: kernel too old; at 3.2 runs."""
    scan, config = bullseye
    old = judge(scan, config, described("3.1"), ["/bin/true"])
    assert old.verdict is Verdict.INCOMPATIBLE
    fatal = [f for f in old.findings if f.severity is Severity.FATAL]
    assert [f.rule for f in fatal] == ["kernel-too-old"]
    assert "FATAL: kernel too old" in fatal[0].explanation
    assert any(".note.ABI-tag 3.2.0" in e for e in fatal[0].evidence)
    assert judge(scan, config, described("3.2"), ["/bin/true"]).verdict is Verdict.NATIVE
    assert judge(scan, config, described("3.2.0"), ["/bin/true"]).verdict is Verdict.NATIVE


@pytest.mark.integration
def test_fallbacks_are_not_failures(bullseye: tuple[Scan, Any]) -> None:
    """ls imports statx (4.11): glibc 2.28+ falls back, so on 3.10 it is compatible."""
    scan, config = bullseye
    r = judge(scan, config, described("3.10"), ["ls", "-l"])
    assert r.verdict is Verdict.NATIVE
    handled = next(f for f in r.findings if f.rule == "syscalls-with-fallback")
    assert any(
        e.startswith("statx (Linux 4.11) via imports statx@GLIBC_2.28") for e in handled.evidence
    )


@pytest.mark.integration
def test_missing_syscall_without_fallback_is_uncertain(bullseye: tuple[Scan, Any]) -> None:
    """getrandom (3.17) from a program with no known fallback: uncertain, never 'fails'."""
    scan, config = bullseye
    users = [
        f.path
        for f in scan.files.values()
        if f.elf and f.executable and any(s.name == "getrandom" for s in f.elf.undefined)
        and f.path.rsplit("/", 1)[-1] not in ("bash",)
    ]  # fmt: skip
    assert users, "bullseye has programs importing getrandom"
    r = judge(scan, config, described("3.10"), [users[0]])
    assert r.verdict is Verdict.UNCERTAIN
    (finding,) = [f for f in r.findings if f.rule == "syscalls-newer-than-kernel"]
    assert any(e.startswith("getrandom (Linux 3.17)") for e in finding.evidence)


@pytest.mark.integration
def test_entrypoint_problems(bullseye: tuple[Scan, Any]) -> None:
    scan, config = bullseye
    r = judge(scan, config, described("6.1"), ["no-such-program"])
    assert r.verdict is Verdict.INCOMPATIBLE and rules_of(r) == {"entrypoint-missing"}
    ls = scan.files["/bin/ls"]
    lib = scan.find_library("libselinux.so.1", ls, musl=False)
    assert lib is not None
    saved = scan.files.pop(lib.path)
    try:
        r = judge(scan, config, described("6.1"), ["ls"])
        assert "library-missing" in rules_of(r) and r.verdict is Verdict.INCOMPATIBLE
        (f,) = [f for f in r.findings if f.rule == "library-missing"]
        assert "error while loading shared libraries: libselinux.so.1" in f.explanation
    finally:
        scan.files[lib.path] = saved


def rules_of(r: Any) -> set[str]:
    return {f.rule for f in r.findings}


@pytest.mark.integration
def test_vsyscall_none_only_hits_old_glibc(bullseye: tuple[Scan, Any]) -> None:
    scan, config = bullseye
    r = judge(scan, config, described("5.10", vsyscall="none"), ["/bin/true"])
    assert "vsyscall" not in rules_of(r)  # glibc 2.31 >= 2.14


@pytest.mark.integration
def test_cli_described_targets_and_exit_codes(images: Fixtures, binaries: Binaries) -> None:
    code, rep = check_json("--kernel", "3.1", binaries.bullseye, "--", "/bin/true")
    assert (code, rep["verdict"]) == (1, "incompatible")
    assert rep["target"]["kernel"] == "3.1" and rep["entrypoint"]["binary"] == "/bin/true"
    code, rep = check_json("--kernel", "3.2", binaries.bullseye)
    assert (code, rep["verdict"]) == (0, "native")
    assert rep["image_summary"]["libc"][0]["version"] == "2.31"
    # arm64 busybox on an amd64 host without handlers: exec format error
    code, rep = check_json(
        "--kernel", "6.1", "--arch", "amd64", "--no-binfmt", images.oci("busybox-arm64")
    )
    assert (code, rep["verdict"]) == (1, "incompatible")
    (arch,) = [f for f in rep["findings"] if f["rule"] == "arch"]
    assert "exec format error" in arch["explanation"] and "qemu-user-static" in arch["fix"]
    # the same with the default described target: qemu handlers assumed
    code, rep = check_json("--kernel", "6.1", "--arch", "amd64", images.oci("busybox-arm64"))
    assert (code, rep["verdict"]) == (0, "emulated") and "emulated" in rules(rep, "info")
    # bookworm's static busybox: its own facts decide sh on 3.10 (native); its nsenter
    # applet on 2.6.32 needs setns only there (uncertain, the path named), which exits 0
    # by default and 1 with --fail-on error
    code, rep = check_json("--kernel", "3.10", images.oci("glibc-amd64"))
    assert (code, rep["verdict"]) == (0, "native")
    nsenter = ("--", "busybox", "nsenter", "--help")
    code, rep = check_json("--kernel", "2.6.32", images.oci("glibc-amd64"), *nsenter)
    assert (code, rep["verdict"]) == (0, "uncertain")
    r = kcompat("check", "--kernel", "2.6.32", "--fail-on", "error", images.oci("glibc-amd64"),
                *nsenter)  # fmt: skip
    assert r.returncode == 1 and "Verdict: UNCERTAIN" in r.stdout


@pytest.mark.integration
def test_runtime_seccomp_rule(images: Fixtures) -> None:
    """glibc 2.36 (bookworm's static busybox) under docker 20.10.7's profile (clone3 ->
    EPERM), per binary and path: sh forks without clone3 (not hit); awk's system() goes
    through posix_spawn, which tries clone3 (uncertain, the path named); docker 24 is
    not hit at all."""
    image = images.oci("glibc-amd64")
    awk = ("--", "busybox", "awk", 'BEGIN { system("true") }')
    code, rep = check_json("--kernel", "5.10", "--runtime", "docker:20.10.7", image)
    assert code == 0 and "runtime-seccomp" not in rules(rep)
    code, rep = check_json("--kernel", "5.10", "--runtime", "docker:20.10.7", image, *awk)
    assert code == 0 and "runtime-seccomp" in rules(rep, "uncertain")
    code, rep = check_json("--kernel", "5.10", "--runtime", "docker:24.0.5", image, *awk)
    assert code == 0 and "runtime-seccomp" not in rules(rep)


@pytest.mark.integration
def test_saved_host_profile_round_trip(tmp_path: Path, images: Fixtures) -> None:
    profile = tmp_path / "host.json"
    r = kcompat("host", "--save", str(profile))
    assert r.returncode == 0, r.stderr
    saved = json.loads(profile.read_text())
    live = probe_host()
    assert saved["kernel"] == live.kernel and saved["platform"] == str(live.platform)
    assert "Kernel:" in r.stdout
    code, rep = check_json("--target", str(profile), images.oci("busybox-amd64"))
    assert code == 0 and rep["target"]["source"] == f"file:{profile}" and rep["verdict"] == "native"
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = kcompat("check", "--target", str(bad), images.oci("busybox-amd64"))
    assert r.returncode == 2 and "not JSON" in r.stderr and "kcompat host --save" in r.stderr


def test_host_probe_is_total() -> None:
    t = probe_host()
    assert t.kernel is not None and t.platform.os == "linux"
    assert t.vsyscall in ("emulate", "xonly", "none", None)
    assert t.cgroup in ("v1", "v2", "hybrid", None)
    for entry in t.binfmt:
        assert entry.name and entry.flags is not None


def test_usage_errors() -> None:
    for args in (
        ["--kernel", "three"],
        ["--arch", "amd64"],
        ["--vsyscall", "sometimes", "--kernel", "5.4"],
    ):
        r = kcompat("check", *args, "oci:/nonexistent:x")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("kcompat: error:")


SARIF_SCHEMA = json.loads((REPO / "tests" / "data" / "sarif-2.1.0.schema.json").read_text())


def _valid_sarif(text: str) -> dict[str, Any]:
    """SARIF 2.1.0 by the OASIS schema (tests/data/SOURCES.md), and GitHub's rule that
    every result has a location."""
    doc: dict[str, Any] = json.loads(text)
    jsonschema.Draft4Validator(SARIF_SCHEMA).validate(doc)
    run = doc["runs"][0]
    for result in run["results"]:
        loc = result["locations"][0]["physicalLocation"]["artifactLocation"]
        assert loc["uri"] and loc["uriBaseId"] in run["originalUriBaseIds"]
    for rule in run["tool"]["driver"]["rules"]:
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
        assert rule["help"]["text"] and rule["helpUri"].startswith("https://")
    return doc


@pytest.mark.integration
def test_sarif(binaries: Binaries, images: Fixtures) -> None:
    r = kcompat("check", "--format", "sarif", "--kernel", "3.1", binaries.bullseye)
    doc = _valid_sarif(r.stdout)
    assert doc["version"] == "2.1.0"
    results = doc["runs"][0]["results"]
    assert any(x["ruleId"] == "kernel-too-old" and x["level"] == "error" for x in results)
    assert doc["runs"][0]["properties"]["verdict"] == "incompatible"
    # an image-level finding (the OS of a Windows image) is located at the image's root
    r = kcompat("check", "--format", "sarif", images.oci("windows-amd64"))
    doc = _valid_sarif(r.stdout)
    (os_result,) = [x for x in doc["runs"][0]["results"] if x["ruleId"] == "os"]
    assert os_result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "."
    # an error is a valid SARIF document too
    r = kcompat("check", "--format", "sarif", "--platform", "linux/s390x",
                images.oci("windows-amd64"))  # fmt: skip
    assert r.returncode == 3
    _valid_sarif(r.stdout)


@pytest.mark.integration
def test_probed_syscalls_decide(tmp_path: Path, binaries: Binaries) -> None:
    """A saved profile's probe results beat the version tables: an EPERM'd statx makes
    ls uncertain (no fallback on EPERM); an ENOSYS'd statx is handled by glibc."""
    profile = tmp_path / "host.json"
    assert kcompat("host", "--save", str(profile)).returncode == 0
    raw = json.loads(profile.read_text())
    assert raw["absent_syscalls"] is not None  # the host was probed
    raw["blocked_syscalls"] = ["statx"]
    profile.write_text(json.dumps(raw))
    code, rep = check_json("--target", str(profile), binaries.bullseye, "--", "ls")
    assert (code, rep["verdict"]) == (0, "uncertain")
    assert {"syscalls-blocked", "syscalls-on-a-path"} & rules(rep, "uncertain")
    raw["blocked_syscalls"] = []
    raw["absent_syscalls"] = [*raw["absent_syscalls"], "statx"]
    profile.write_text(json.dumps(raw))
    code, rep = check_json("--target", str(profile), binaries.bullseye, "--", "ls")
    assert rep["verdict"] == "native" and "syscalls-with-fallback" in rules(rep)


@pytest.mark.integration
def test_musl_on_old_docker(tmp_path: Path, binaries: Binaries) -> None:
    """docker 19.03's profile answers faccessat2 with EPERM, which musl >= 1.2.2 tries in
    faccessat: judged per binary. A program that never calls faccessat is not hit; one
    that does is uncertain (the path is named); a newer docker hits neither."""
    import shutil

    from kcompat.image import ImageConfig
    from kcompat.platform import Platform
    from kcompat.scan import scan_path

    if shutil.which("musl-gcc") is None:
        pytest.skip("needs musl-gcc (musl-tools, installed by ci/setup)")
    root = tmp_path / "root"
    shutil.copytree(binaries.root / "musl-root", root, symlinks=True)
    src = tmp_path / "eaccess.c"
    src.write_text("#include <fcntl.h>\n#include <unistd.h>\n"
                   "int main(void) { return faccessat(AT_FDCWD, \"/\", R_OK, AT_EACCESS); }\n")
    subprocess.run(["musl-gcc", "-O2", "-o", str(root / "bin" / "eaccess"), str(src)], check=True)
    scan = scan_path(root)

    def judged(program: str, runtime: str) -> Any:
        config = ImageConfig(Platform("linux", "amd64"), None, (program,), (), None, None, ())
        return judge(scan, config, described("5.10", runtime=runtime), None)

    hello = judged("/bin/hello", "docker:19.03.15")
    assert hello.verdict is Verdict.NATIVE
    assert "runtime-seccomp" not in {f.rule for f in hello.findings}
    old = judged("/bin/eaccess", "docker:19.03.15")
    (f,) = [f for f in old.findings if f.rule == "runtime-seccomp"]
    assert "faccessat2" in f.title and "musl 1.2.3" in f.evidence
    assert any("faccessat" in e for e in f.evidence)  # the import that reaches it
    assert old.verdict is Verdict.UNCERTAIN
    assert judged("/bin/eaccess", "docker:20.10.24").verdict is Verdict.NATIVE


@pytest.mark.integration
def test_multi_arch_image_judged_for_the_target(images: Fixtures) -> None:
    """Without --platform: the target's own arch from the index, else an emulated one."""
    _, rep = check_json("--kernel", "6.1", "--arch", "arm64", images.oci("busybox-multi"))
    assert rep["image"]["platform"].startswith("linux/arm64") and rep["verdict"] == "native"
    assert "platform-choice" in rules(rep)
    _, rep = check_json("--kernel", "6.1", "--arch", "s390x", images.oci("busybox-multi"))
    assert rep["image"]["platform"] == "linux/s390x"
    _, rep = check_json("--kernel", "6.1", "--arch", "riscv64", images.oci("busybox-multi"))
    assert rep["verdict"] == "emulated" and "emulated" in rules(rep)


@pytest.mark.integration
def test_windows_image_is_incompatible(tmp_path: Path, images: Fixtures) -> None:
    code, rep = check_json("--kernel", "6.1", images.relabelled(tmp_path, "--os", "windows"))
    assert (code, rep["verdict"]) == (1, "incompatible")
    (f,) = [f for f in rep["findings"] if f["rule"] == "os"]
    assert 'image operating system "windows" cannot be used on this platform' in f["explanation"]


@pytest.mark.integration
def test_vsyscall_none_with_old_glibc(bullseye: tuple[Scan, Any]) -> None:
    """glibc 2.12-era libc (CentOS 6) on vsyscall=none: fatal. The libc's version is
    crafted here (the scan's record of libc.so.6's banner); no such image is built."""
    scan, config = bullseye
    (libc,) = scan.libc()
    real = scan.banners[libc.path]
    scan.banners[libc.path] = "2.12"
    try:
        r = judge(scan, config, described("4.19", vsyscall="none"), ["/bin/true"])
        assert r.verdict is Verdict.INCOMPATIBLE and "vsyscall" in rules_of(r)
        ok = judge(scan, config, described("4.19", vsyscall="emulate"), ["/bin/true"])
        assert "vsyscall" not in rules_of(ok)
    finally:
        scan.banners[libc.path] = real


@pytest.mark.integration
def test_bookworm_glibc_on_2_6_32_lists_syscalls(images: Fixtures) -> None:
    """Debian 12's glibc 2.36 has no kernel check: on 2.6.32 it is not fatal, and the
    syscalls newer than the kernel are listed (libc.so.6 run as a program)."""
    code, rep = check_json(
        "--kernel", "2.6.32", images.oci("glibc-amd64"), "--", "/lib/x86_64-linux-gnu/libc.so.6"
    )
    assert rep["verdict"] != "incompatible" and code == 0
    assert "kernel-too-old" not in rules(rep) and "abi-tag" in rules(rep, "info")
    listed = [e for f in rep["findings"] if f["rule"].startswith("syscalls") for e in f["evidence"]]
    assert any(e.startswith("rseq (Linux 4.18)") for e in listed)


@pytest.mark.integration
def test_done_when_through_the_registry(registry: Any, binaries: Binaries) -> None:
    """The issue's acceptance: bullseye from a docker-registry, at 3.1 and 3.2."""
    registry.push(binaries.bullseye, "debian:bullseye")
    ref = f"docker://{registry.host}/debian:bullseye"
    code, rep = check_json("--kernel", "3.1", ref)
    assert (code, rep["verdict"]) == (1, "incompatible")
    (f,) = [f for f in rep["findings"] if f["rule"] == "kernel-too-old"]
    assert "FATAL: kernel too old" in f["explanation"]
    assert any("libc-2.31.so: .note.ABI-tag 3.2.0" in e for e in f["evidence"])
    code, rep = check_json("--kernel", "3.2", ref)
    assert (code, rep["verdict"]) == (0, "native")


@pytest.mark.integration
def test_arm64_on_this_host_is_emulated(images: Fixtures) -> None:
    """The issue's acceptance on this x86_64 host: emulated, with the handler named."""
    host = probe_host()
    if host.platform.architecture != "amd64" or not (
        host.handler_for("arm64") or (host.private_binfmt and "arm64" in host.qemu)
    ):
        pytest.skip("needs an arm64 binfmt handler, or Linux 6.7+ with qemu-aarch64-static")
    code, rep = check_json("--host", images.oci("busybox-arm64"))
    assert (code, rep["verdict"]) == (0, "emulated")
    (f,) = [f for f in rep["findings"] if f["rule"] == "emulated"]
    assert "qemu-aarch64" in " ".join([f["title"], f["explanation"], *f["evidence"]])


@pytest.mark.integration
def test_mislabelled_image(tmp_path: Path, images: Fixtures) -> None:
    """An index/config saying arm64 over amd64 binaries: judged by the ELF header."""
    image = images.relabelled(tmp_path, "--architecture", "arm64")
    _, rep = check_json("--kernel", "6.1", "--arch", "amd64", "--no-binfmt",
                        "--platform", "linux/arm64", image)  # fmt: skip
    assert "mislabelled" in rules(rep, "warning") and rep["verdict"] == "native"


@pytest.mark.integration
def test_go_minimum_kernel(binaries: Binaries) -> None:
    """fzf (Go 1.19.8): Go documents 2.6.32 as its minimum; below it, uncertain."""
    from kcompat.image import ImageConfig
    from kcompat.platform import Platform
    from kcompat.scan import scan_path

    scan = scan_path(binaries.root / "bin")
    config = ImageConfig(Platform("linux", "amd64"), None, ("/fzf-amd64",), (), None, None, ())
    r = judge(scan, config, described("2.6.30"), None)
    (f,) = [f for f in r.findings if f.rule == "go-min-kernel"]
    assert f.severity is Severity.UNCERTAIN and "go1.19.8" in f.title
    assert not [f for f in judge(scan, config, described("3.10"), None).findings
                if f.rule == "go-min-kernel"]  # fmt: skip


@pytest.mark.integration
def test_systemd_on_cgroup_v2(binaries: Binaries) -> None:
    """Debian 12's systemd 252 as PID 1 on a cgroup v2 host is fine; the same file with
    its libsystemd-shared name crafted to CentOS 7's 219 is fatal (podman#6183)."""
    from dataclasses import replace

    from kcompat.image import ImageConfig
    from kcompat.platform import Platform
    from kcompat.scan import scan_path

    scan = scan_path(binaries.root / "bin")
    config = ImageConfig(Platform("linux", "amd64"), None, ("/systemd-amd64",), (), None, None, ())
    real = scan.files["/systemd-amd64"]
    assert real.elf is not None and any(
        n.startswith("libsystemd-shared-252") for n in real.elf.needed
    )
    ok = judge(scan, config, described("5.10", cgroup="v2"), ["/systemd-amd64"])
    assert "cgroup-v2-systemd" not in rules_of(ok)
    old_needed = tuple(n.replace("252", "219") for n in real.elf.needed)
    scan.files["/systemd-amd64"] = replace(real, elf=replace(real.elf, needed=old_needed))
    bad = judge(scan, config, described("5.10", cgroup="v2"), ["/systemd-amd64"])
    (f,) = [f for f in bad.findings if f.rule == "cgroup-v2-systemd"]
    assert f.severity is Severity.FATAL and "systemd 219" in f.title
    v1 = judge(scan, config, described("5.10", cgroup="v1"), ["/systemd-amd64"])
    assert "cgroup-v2-systemd" not in rules_of(v1)
