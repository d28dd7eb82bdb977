"""`kcompat run` confines a container at least as docker does by default, and leaves the
host unchanged: the escapes a hostile image would try, each asserted refused. Real
containers, real namespaces, a real seccomp filter."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Fixtures
from tests.test_run import busybox, kc, needs_userns

pytestmark = [pytest.mark.integration, needs_userns]

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <sys/mount.h>
#include <sys/personality.h>
#include <sys/syscall.h>
#include <unistd.h>
static void report(const char *name, long ret) { printf("%s=%d\n", name, ret < 0 ? errno : 0); }
int main(void) {
    report("add_key", syscall(SYS_add_key, "user", "kcompat", "x", 1, -2));
    report("keyctl", syscall(SYS_keyctl, 0, -2, 0));
    report("unshare_user", unshare(CLONE_NEWUSER));
    report("unshare_mnt", unshare(CLONE_NEWNS));
    report("clone_newuser", syscall(SYS_clone, CLONE_NEWUSER | 17, 0, 0, 0, 0));
    report("clone3", syscall(SYS_clone3, 0, 0));
    report("mount", mount("none", "/tmp", "tmpfs", 0, 0));
    report("setns", syscall(SYS_setns, 0, 0));
    report("bpf", syscall(SYS_bpf, 0, 0, 0));
    report("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    report("personality_bad", personality(0x0400000));
    report("personality_query", personality(0xffffffff));
    report("socket_vsock", syscall(SYS_socket, 40, 1, 0));
    report("socket_vsock_high_bits", syscall(SYS_socket, 0x100000028L, 1, 0));
    report("getpid", getpid());
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root filesystem with a static probe of the syscalls docker's profile denies."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc with static glibc (ci/setup installs gcc, libc6-dev)")
    work = tmp_path_factory.mktemp("probe")
    (work / "root" / "bin").mkdir(parents=True)
    (work / "probe.c").write_text(PROBE_C)
    r = subprocess.run(["gcc", "-static", "-O1", "-o", str(work / "root" / "bin" / "probe"),
                        str(work / "probe.c")], capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed: {r.stderr[:300]}")
    return f"dir:{work / 'root'}"


def _probe(root: str, *opts: str) -> dict[str, int]:
    r = kc("run", *opts, root, "/bin/probe")
    assert r.returncode == 0, r.stderr
    return {k: int(v) for k, v in (line.split("=") for line in r.stdout.split())}


EPERM, ENOSYS = 1, 38
DENIED = ("add_key", "keyctl", "unshare_user", "unshare_mnt", "clone_newuser", "mount", "setns",
          "bpf", "perf_event_open", "personality_bad", "socket_vsock",
          "socket_vsock_high_bits")  # fmt: skip


def test_default_seccomp_profile_denies_what_docker_denies(probe_root: str) -> None:
    for opts in ((), ("--init",)):  # the init as PID 1 changes nothing
        got = _probe(probe_root, *opts)
        for name in DENIED:
            assert got[name] == EPERM, (opts, name, got)
    assert got["clone3"] == ENOSYS  # so glibc falls back to clone, as under docker
    assert got["personality_query"] == 0 and got["getpid"] == 0
    # unconfined: the same calls reach the kernel (its own answer, not seccomp's EPERM)
    free = _probe(probe_root, "--security-opt", "seccomp=unconfined")
    assert free["keyctl"] != EPERM or free["add_key"] != EPERM
    assert free["clone3"] != ENOSYS


def test_a_docker_format_profile_is_obeyed(images: Fixtures, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(
        '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": '
        '["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]}'
    )
    r = kc("run", "--security-opt", f"seccomp={profile}", busybox(images), "mkdir", "/newdir")
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert kc("run", busybox(images), "mkdir", "/newdir").returncode == 0
    bad = tmp_path / "bad.json"
    bad.write_text('{"syscalls": []}')
    r = kc("run", "--security-opt", f"seccomp={bad}", busybox(images), "true")
    assert r.returncode == 2 and "defaultAction" in r.stderr


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_proc_sys_and_host_files_are_not_writable(images: Fixtures) -> None:
    before = {p: _sha(p) for p in ("/etc/hosts", "/etc/resolv.conf") if os.path.exists(p)}
    script = (
        "for f in /proc/sys/kernel/core_pattern /proc/sys/vm/drop_caches /proc/sysrq-trigger; do"
        "  [ -e $f ] && { echo x > $f 2>/dev/null && echo WROTE $f; }; done;"
        "echo 1.2.3.4 evil >> /etc/hosts && echo nameserver 9.9.9.9 >> /etc/resolv.conf;"
        "grep -q evil /etc/hosts && echo hosts-copy-writable;"
        "mkdir /sys/fs/cgroup/kcompat-probe 2>/dev/null && echo CGROUP;"
        "for d in /sys/fs/cgroup/*/; do mkdir $d/kcompat-probe 2>/dev/null && echo CGROUP $d; done;"
        "wc -c < /proc/keys; wc -c < /proc/timer_list; ls /sys/firmware | wc -l"
    )
    r = kc("run", busybox(images), "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert "WROTE" not in r.stdout and "CGROUP" not in r.stdout, r.stdout
    assert "hosts-copy-writable" in lines
    assert lines[-3:] == ["0", "0", "0"]  # /proc/keys, /proc/timer_list, /sys/firmware masked
    after = {p: _sha(p) for p in before}
    assert after == before  # the host's files are byte-identical
    assert not any(Path("/sys/fs/cgroup").rglob("kcompat-probe"))


def test_dash_sees_proc_sys_read_only(images: Fixtures, binaries: object) -> None:
    from tests.conftest import Binaries

    assert isinstance(binaries, Binaries)
    r = kc("run", binaries.bullseye, "sh", "-c",
           "test -w /proc/sys/kernel/core_pattern && echo writable || echo read-only")  # fmt: skip
    assert r.stdout.strip() == "read-only", r.stderr


def test_only_stdio_reaches_the_container(images: Fixtures, tmp_path: Path) -> None:
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "kcompat", "run", busybox(images), "sh", "-c",
             f"ls /proc/self/fd/{fd}/ 2>&1 && echo LEAK; ls /proc/self/fd"],
            capture_output=True, text=True, pass_fds=(fd,), timeout=120,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert r.returncode == 0 and "LEAK" not in r.stdout, r.stdout
    assert set(r.stdout.split()[-4:]) <= {"0", "1", "2", "3", "No", "such"}, r.stdout


def test_read_only_volumes_are_read_only_below_their_top(images: Fixtures) -> None:
    marker = f"kcompat-probe-{os.getpid()}"
    r = kc("run", "-v", "/dev:/hdev:ro", busybox(images), "sh", "-c",
           f"touch /hdev/shm/{marker} 2>/dev/null && echo WROTE; touch /hdev/{marker} 2>/dev/null"
           " && echo WROTE-TOP; true")  # fmt: skip
    try:
        assert "WROTE" not in r.stdout, r.stdout
    finally:
        Path(f"/dev/shm/{marker}").unlink(missing_ok=True)


def test_escapes_are_refused(images: Fixtures, tmp_path: Path) -> None:
    """Host PIDs, /proc/1/root, device nodes, mounting, the host's loopback under
    --network none, nested user namespaces."""
    marker = tmp_path / "host-secret"
    marker.write_text("secret")
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(30)
    port = server.getsockname()[1]

    def answer() -> None:  # accept and hang up, twice at most: the probe can finish
        for _ in range(2):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    # the control: with the host's network the same probe does reach the host
    reach = f"echo x | nc -w 2 127.0.0.1 {port} >/dev/null 2>&1 && echo REACHED-HOST"
    control = kc("run", busybox(images), "sh", "-c", reach, timeout=60)
    assert "REACHED-HOST" in control.stdout, (control.stdout, control.stderr)
    try:
        script = (
            f"cat {marker} 2>/dev/null && echo READ-HOST;"
            f"cat /proc/1/root{marker} 2>/dev/null && echo PROC1-ROOT;"
            f"kill -0 {os.getpid()} 2>/dev/null && echo SEES-HOST-PID;"
            "ls /proc | grep -c '^[0-9]' ;"
            "mount -t tmpfs none /mnt 2>/dev/null && echo MOUNTED;"
            "mkdir -p /tmp/d && mount --bind /tmp/d /mnt 2>/dev/null && echo BOUND;"
            f"{reach};"
            "ip link 2>/dev/null | grep -c '^[0-9]';"
            "true"
        )
        r = kc("run", "--network", "none", busybox(images), "sh", "-c", script)
    finally:
        server.close()
    out = r.stdout.split()
    for leak in ("READ-HOST", "PROC1-ROOT", "SEES-HOST-PID", "MOUNTED", "BOUND", "REACHED-HOST"):
        assert leak not in out, (leak, r.stdout)
    assert int(out[0]) < 10  # only the container's own processes
    assert out[-1] == "1"  # only lo


def test_read_only_root_leaves_volumes_and_tmpfs_writable(images: Fixtures,
                                                         tmp_path: Path) -> None:  # fmt: skip
    r = kc("run", "--read-only", "--tmpfs", "/scratch", "-v", f"{tmp_path}:/out",
           busybox(images), "sh", "-c",
           "touch /x 2>/dev/null && echo ROOT; touch /tmp/x 2>/dev/null && echo TMP;"
           "touch /scratch/x && echo tmpfs-ok; touch /out/x && echo volume-ok")  # fmt: skip
    assert r.stdout.split() == ["tmpfs-ok", "volume-ok"], (r.stdout, r.stderr)
    assert (tmp_path / "x").exists()


def test_signal_death_ends_a_simulated_run_quickly(images: Fixtures) -> None:
    if shutil.which("qemu-x86_64-static") is None:
        pytest.skip("needs qemu-x86_64-static")
    t0 = time.monotonic()
    r = kc("run", "--kernel", "4.4", busybox(images), "sh", "-c", "kill -SEGV $$", timeout=60)
    assert r.returncode == 139, r.stderr
    assert time.monotonic() - t0 < 30
    r = kc("run", "--init", busybox(images), "sh", "-c", "sleep 5 & sleep 5 & exit 3")
    assert r.returncode == 3


def test_run_input_checks_speak_docker(images: Fixtures) -> None:
    r = kc("run", "-it", busybox(images), "true")  # stdin is not a terminal here
    assert r.returncode == 1 and "the input device is not a TTY" in r.stderr
    r = kc("run", "--pids-limit", "-5", busybox(images), "true")
    assert r.returncode == 2
    assert kc("run", "--pids-limit", "-1", busybox(images), "true").returncode == 0
    r = kc("run", "--cpus", "999", busybox(images), "true")
    assert r.returncode == 2 and "range of CPUs is from 0.01 to" in r.stderr
    r = kc("run", "-u", "nosuchuser", busybox(images), "true")
    assert r.returncode == 125 and "unable to find user nosuchuser" in r.stderr
    r = kc("run", "--cap-add", "NOPE", busybox(images), "true")
    assert r.returncode == 2


def test_kept_layers_are_per_image(images: Fixtures, tmp_path: Path) -> None:
    cache = Path(os.environ["KCOMPAT_CACHE"])
    for img in (busybox(images), images.oci("shapes-amd64")):  # other layers, other image
        r = kc("run", "--keep", "--hostname", "same", "--entrypoint", "touch", img, "/kept")
        assert r.returncode == 0, r.stderr
    kept = sorted(cache.glob("containers/*/same/upper/kept"))
    assert len(kept) == 2


def test_capabilities_follow_cap_add_and_drop(images: Fixtures) -> None:
    def eff(*opts: str) -> int:
        r = kc("run", *opts, busybox(images), "sh", "-c", "grep CapEff /proc/self/status")
        return int(r.stdout.split()[-1], 16)

    default = eff()
    assert eff("--cap-drop", "NET_RAW") == default & ~(1 << 13)
    assert eff("--cap-add", "SYS_PTRACE") == default | (1 << 19)
    assert eff("--cap-drop", "ALL") == 0


def test_userns_auto_maps_root_to_an_unprivileged_host_uid(images: Fixtures,
                                                            tmp_path: Path) -> None:  # fmt: skip
    if os.geteuid() != 0:
        r = kc("run", "--userns", "auto", busybox(images), "true")
        assert r.returncode == 2
        pytest.skip("--userns auto is for root")
    import tempfile

    from kcompat.container import auto_base

    out = Path(tempfile.mkdtemp(dir="/tmp"))  # a volume the mapped uid can reach
    out.chmod(0o777)
    r = kc("run", "--userns", "auto", "-v", f"{out}:/out", busybox(images), "sh", "-c",
           "cat /proc/self/uid_map; touch /rootfs-owned && ls -ln /bin/busybox; touch /out/f;"
           "echo x > /proc/sys/vm/drop_caches 2>/dev/null && echo WROTE; id -u")  # fmt: skip
    assert r.returncode == 0, r.stderr
    first = r.stdout.split()
    assert first[:3] == ["0", str(auto_base()), "65536"]
    assert "WROTE" not in first and first[-1] == "0"
    assert " 0 " in r.stdout.splitlines()[1]  # the image's files still belong to root inside
    try:
        assert (out / "f").stat().st_uid == auto_base()  # on the host: an unprivileged uid
        r = kc("run", "--userns", "auto", "--keep", busybox(images), "true")
        assert r.returncode == 2 and "--keep" in r.stderr
    finally:
        shutil.rmtree(out)
    assert not list(Path("/tmp").glob("kcompat-userns-*"))


def test_the_init_holds_nothing_of_the_caller_and_is_filtered(images: Fixtures,
                                                              tmp_path: Path) -> None:  # fmt: skip
    """--init (always under --kernel) never execs: it must close what it inherited, be
    undumpable (no ptrace, no /proc/1/fd) and run under the container's profile."""
    fd = os.open(str(tmp_path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "kcompat", "run", "--init", busybox(images), "sh", "-c",
             f"ls /proc/1/fd/ 2>&1; ls /proc/1/fd/{fd}/ 2>/dev/null && echo LEAK;"
             "grep -E '^Seccomp:' /proc/1/status"],
            capture_output=True, text=True, pass_fds=(fd,), timeout=120,
        )  # fmt: skip
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    assert "LEAK" not in r.stdout
    assert r.stdout.split()[-1] == "2", r.stdout  # seccomp mode 2 (filter) for PID 1 too


def test_tmpfs_flags_are_obeyed(images: Fixtures) -> None:
    r = kc("run", "--tmpfs", "/t1", "--tmpfs", "/t2:ro", "--tmpfs", "/t3:exec,size=8m",
           busybox(images), "sh", "-c",
           "touch /t2/x 2>/dev/null && echo WROTE-RO; cp /bin/busybox /t1/echo;"
           "/t1/echo RAN-NOEXEC 2>/dev/null; cp /bin/busybox /t3/echo &&"
           "/t3/echo ran-exec")  # fmt: skip
    assert r.stdout.split() == ["ran-exec"], (r.stdout, r.stderr)


def test_cgroup_namespace_root_is_the_containers_own(images: Fixtures) -> None:
    r = kc("run", "--pids-limit", "100", busybox(images), "cat", "/proc/self/cgroup")
    assert r.returncode == 0, r.stderr
    assert all(line.rsplit(":", 1)[-1] == "/" for line in r.stdout.splitlines()), r.stdout
