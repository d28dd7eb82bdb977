"""An older kernel simulated on this one: the seccomp filter (kcompat.seccomp), `kcompat
run --kernel` (FATAL: kernel too old, an ENOSYS fallback that runs, an EPERM that
fails) and `check --verify`. Real filters, real runs."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from kcompat.seccomp import AUDIT_ARCH, assemble, install, simulation
from kcompat.syscalls import table
from tests.conftest import Binaries
from tests.test_run import kc, needs_userns

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "ci" / "report.schema.json").read_text())


def test_simulation_follows_the_tables() -> None:
    sim = simulation("x86_64", "3.10")
    names = set(sim.names)
    t = table("x86_64")
    assert {"getrandom", "statx", "clone3", "memfd_create"} <= names
    assert not {"read", "openat", "epoll_create1"} & names
    for nr, _name in sim.denied:
        since = t.by_nr[nr].since
        assert since is not None and tuple(map(int, since.split("."))) > (3, 10)
    assert simulation("x86_64", "6.18").denied == ()
    assert len(assemble(sim)) == 8 * (4 + 2 + 2 * len(sim.denied) + 1)
    assert set(AUDIT_ARCH) >= {"x86_64", "i386", "arm64", "arm", "s390x"}


def _child_errno(program: bytes, nr: int) -> int:
    """Install the filter in a child, make syscall `nr` with harmless arguments, return
    its errno (0 if it succeeded)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            install(program)
            ret = libc.syscall(nr, 0, 0, 0, 0, 0)
            os.write(w, str(ctypes.get_errno() if ret < 0 else 0).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = os.read(r, 64)
    os.close(r)
    os.waitpid(pid, 0)
    return int(out)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="numbers below are x86_64's")
def test_filter_answers_enosys_or_eperm() -> None:
    getrandom = table("x86_64").by_name["getrandom"].nr  # 3.17
    getpid = table("x86_64").by_name["getpid"].nr
    assert _child_errno(assemble(simulation("x86_64", "3.16")), getrandom) == errno.ENOSYS
    assert _child_errno(assemble(simulation("x86_64", "3.16", eperm=True)), getrandom) == (
        errno.EPERM
    )
    assert _child_errno(assemble(simulation("x86_64", "3.17")), getrandom) != errno.ENOSYS
    assert _child_errno(assemble(simulation("x86_64", "2.6.32")), getpid) == 0


@pytest.fixture(scope="module")
def thread_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding one static glibc program that starts a thread (clone3 on glibc
    2.34+), built from tests/fixtures/thread.c with this machine's gcc."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc with static glibc (libc6-dev)")
    root = tmp_path_factory.mktemp("thread-root")
    r = subprocess.run(["gcc", "-static", "-pthread", "-O2", "-o", str(root / "thread"),
                        str(REPO / "tests" / "fixtures" / "thread.c")],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot build the static thread program: {r.stderr[-200:]}")
    out = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout
    version = out.splitlines()[0].rsplit(" ", 1)[-1] if out else "0"
    if tuple(map(int, version.split(".")[:2])) < (2, 34):
        pytest.skip(f"glibc {version} does not use clone3")
    return root


@needs_userns
@pytest.mark.integration
def test_kernel_too_old_is_reproduced(binaries: Binaries) -> None:
    """Debian 11's glibc 2.31 checks the release at start-up: at 3.1 it aborts, at 3.2
    it runs: the release is faked (qemu-user -r) and the filter is in place."""
    if shutil.which("qemu-x86_64-static") is None:
        pytest.skip("needs qemu-x86_64-static (qemu-user-static) to fake the release")
    r = kc("run", "--kernel", "3.1", binaries.bullseye, "/bin/true")
    assert r.returncode == 127, r.stderr
    assert "FATAL: kernel too old" in r.stderr
    r = kc("run", "--kernel", "3.2", binaries.bullseye, "/bin/true")
    assert r.returncode == 0, r.stderr
    r = kc("run", "--kernel", "3.2", binaries.bullseye, "uname", "-r")
    assert (r.returncode, r.stdout) == (0, "3.2\n"), r.stderr
    # The documented limit: only the first process sees the faked release.
    r = kc("run", "--kernel", "3.2", binaries.bullseye, "sh", "-c", "uname -r")
    assert (r.returncode, r.stdout) == (0, os.uname().release + "\n"), r.stderr
    r = kc("run", "--kernel", "9.1", binaries.bullseye, "/bin/true")
    assert r.returncode == 2 and "newer than this host's" in r.stderr


@needs_userns
@pytest.mark.integration
def test_enosys_fallback_runs_and_eperm_fails(thread_root: Path) -> None:
    """clone3 is 5.3: at --kernel 5.2 glibc gets ENOSYS and falls back to clone, so the
    program runs; an old runtime's EPERM makes pthread_create fail (moby#42680)."""
    image = f"dir:{thread_root}"
    r = kc("run", image, "/thread")
    assert (r.returncode, r.stdout) == (0, "thread ok\n"), r.stderr
    r = kc("run", "--kernel", "5.2", image, "/thread")
    assert (r.returncode, r.stdout) == (0, "thread ok\n"), r.stderr
    r = kc("run", "--kernel", "5.2", "--seccomp-eperm", image, "/thread")
    assert r.returncode == 1
    assert "pthread_create: Operation not permitted" in r.stderr
    r = kc("run", "--kernel", "5.3", "--seccomp-eperm", image, "/thread")
    assert r.returncode == 0, r.stderr  # clone3 is not newer than 5.3: not filtered


@needs_userns
@pytest.mark.integration
def test_statx_fallback_in_debian_coreutils(binaries: Binaries) -> None:
    """Debian 11's stat uses statx (4.11) and falls back to fstatat on ENOSYS."""
    r = kc("run", "--kernel", "4.4", binaries.bullseye, "stat", "-c", "%n %F", "/etc")
    assert (r.returncode, r.stdout) == (0, "/etc directory\n"), r.stderr


def _verify(*args: str) -> tuple[int, dict[str, object]]:
    r = subprocess.run([sys.executable, "-m", "kcompat", "check", "--verify", "--format",
                        "json", *args], capture_output=True, text=True)  # fmt: skip
    assert r.stdout, r.stderr
    rep = json.loads(r.stdout)
    jsonschema.validate(rep, SCHEMA)
    return r.returncode, rep


@needs_userns
@pytest.mark.integration
def test_verify_agrees_and_disagrees(binaries: Binaries) -> None:
    if shutil.which("qemu-x86_64-static") is None:
        pytest.skip("needs qemu-x86_64-static (qemu-user-static) to fake the release")
    code, rep = _verify("--kernel", "3.1", binaries.bullseye, "--", "/bin/true")
    v = rep["verify"]
    assert (rep["verdict"], v["agreement"]) == ("incompatible", "agree")  # type: ignore[index]
    assert v["observed"]["first_error"] == "FATAL: kernel too old"  # type: ignore[index]
    assert code == 1  # --fail-on fatal still applies
    code, rep = _verify("--kernel", "4.19", binaries.bullseye, "--", "/bin/true")
    assert rep["verify"]["agreement"] == "agree" and code == 0  # type: ignore[index]
    # A smoke command that fails where nothing predicted a failure: shown (text), exit 11
    # and a verify-disagreement result (SARIF, which is made from the JSON report)
    r = subprocess.run([sys.executable, "-m", "kcompat", "check", "--verify", "--kernel", "4.19",
                        binaries.bullseye, "--", "ls", "/nonexistent"],
                       capture_output=True, text=True)  # fmt: skip
    assert "DISAGREEMENT" in r.stdout and "No such file or directory" in r.stdout
    assert r.returncode == 11
    r = subprocess.run([sys.executable, "-m", "kcompat", "check", "--verify", "--format", "sarif",
                        "--kernel", "4.19", binaries.bullseye, "--", "ls", "/nonexistent"],
                       capture_output=True, text=True)  # fmt: skip
    results = json.loads(r.stdout)["runs"][0]["results"]
    assert r.returncode == 11 and "verify-disagreement" in {x["ruleId"] for x in results}
