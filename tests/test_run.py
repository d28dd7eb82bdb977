"""`kcompat run`: real containers from the fixture images, natively in namespaces and
through qemu-user in a private binfmt_misc. Every test starts real processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kcompat.errors import NotFoundError, UsageError
from kcompat.execve import container_argv
from kcompat.image import ImageConfig
from kcompat.platform import Platform
from kcompat.run import container_env
from kcompat.runoptions import RunOptions, parse_volume
from kcompat.users import UnknownUser, resolve_user
from tests.conftest import Fixtures

pytestmark = pytest.mark.integration

DOCKER_DEFAULT_CAPS = 0xA80425FB  # docker's default set: CapEff of root in a container


def _userns_ok() -> bool:
    r = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    return r.returncode == 0


needs_userns = pytest.mark.skipif(
    shutil.which("unshare") is None or not _userns_ok(),
    reason="user namespaces are not available here",
)


def kc(*args: str, input: str | None = None, env: dict[str, str] | None = None,
       timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "kcompat", *args],
        capture_output=True, text=True, input=input, env=env, timeout=timeout, check=False,
    )  # fmt: skip


def busybox(images: Fixtures, arch: str = "amd64") -> str:
    return images.oci(f"busybox-{arch}")


def _mounts() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def _binfmt_state() -> tuple[list[str], list[tuple[str, str]]]:
    d = Path("/proc/sys/fs/binfmt_misc")
    mounts = [m for m in _mounts() if "binfmt_misc" in m]
    try:
        entries = sorted((p.name, p.read_text()) for p in d.iterdir())
    except OSError:
        entries = []
    return mounts, entries


# -- unit: docker's resolution rules ----------------------------------------------------


def _config(**kw: object) -> ImageConfig:
    base: dict[str, object] = dict(
        platform=Platform("linux", "amd64"), entrypoint=None, cmd=("/bin/sh",),
        env=("PATH=/bin", "A=image"), workdir=None, user=None, diff_ids=(),
    )  # fmt: skip
    base.update(kw)
    return ImageConfig(**base)  # type: ignore[arg-type]


def test_argv_follows_docker() -> None:
    entry, cmd = ("/entry",), ("a", "b")
    assert container_argv(entry, cmd) == ("/entry", "a", "b")
    assert container_argv(entry, cmd, ("x",)) == ("/entry", "x")  # args replace Cmd
    # --entrypoint drops the image's CMD; --entrypoint '' clears the Entrypoint
    assert container_argv(entry, cmd, (), "/bin/sh") == ("/bin/sh",)
    assert container_argv(entry, cmd, ("ls",), "") == ("ls",)
    assert container_argv(None, None) == ()


def test_env_order_and_passthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "env"
    f.write_text("# comment\nB=file\nA=file\n")
    monkeypatch.setenv("FROM_HOST", "yes")
    env = dict(container_env(_config(), RunOptions(env=("A=flag", "FROM_HOST", "UNSET_X"),
                                                  env_files=(f,)), "/root", "h"))  # fmt: skip
    assert env["A"] == "flag" and env["B"] == "file" and env["FROM_HOST"] == "yes"
    assert env["PATH"] == "/bin" and env["HOME"] == "/root" and env["HOSTNAME"] == "h"
    assert "UNSET_X" not in env
    with pytest.raises(UsageError):
        container_env(_config(), RunOptions(env=("BAD KEY=1",)), "/", "h")


def test_user_lookup(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("app:x:1001:\nextra:x:2000:app\n")
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    u = resolve_user("app", passwd, group)
    assert (u.uid, u.gid, u.home, u.groups) == (1000, 1001, "/home/app", (1001, 2000))
    assert resolve_user("1000:extra", passwd, group).gid == 2000
    assert resolve_user("4242", passwd, group).uid == 4242
    assert resolve_user(None, passwd, group).uid == 0
    with pytest.raises(UnknownUser, match="unable to find user nobody"):
        resolve_user("nobody", passwd, group)


def test_volume_syntax(tmp_path: Path) -> None:
    v = parse_volume(f"{tmp_path}:/data:ro")
    assert (v.host, v.container, v.readonly) == (str(tmp_path), "/data", True)
    for bad in ("/x", f"{tmp_path}:rel", f"{tmp_path}:/d:rx", "name:/data", f"{tmp_path}:/a/../b"):
        with pytest.raises(UsageError):
            parse_volume(bad)
    with pytest.raises(NotFoundError):
        parse_volume(f"{tmp_path}/missing:/data")


# -- native runs ----------------------------------------------------------------------


@needs_userns
def test_echo_exit_code_and_pid1(images: Fixtures) -> None:
    r = kc("run", busybox(images), "sh", "-c", "echo hello; echo pid=$$; exit 42")
    assert r.returncode == 42, r.stderr
    assert r.stdout.splitlines() == ["hello", "pid=1"]


@needs_userns
def test_double_dash_and_default_cmd(images: Fixtures) -> None:
    r = kc("run", busybox(images), "--", "echo", "via", "--")
    assert (r.returncode, r.stdout) == (0, "via --\n"), r.stderr
    r = kc("run", busybox(images), input="echo from-stdin\n")  # CMD /bin/sh, no -i
    assert (r.returncode, r.stdout) == (0, ""), r.stderr
    r = kc("run", "-i", busybox(images), input="echo from-stdin; exit 3\n")
    assert (r.returncode, r.stdout) == (3, "from-stdin\n"), r.stderr


@needs_userns
def test_hostname_env_workdir_user(images: Fixtures, tmp_path: Path) -> None:
    envf = tmp_path / "env"
    envf.write_text("FROM_FILE=1\n")
    r = kc(
        "run", "--hostname", "box1", "-e", "GREETING=hi there", "--env-file", str(envf),
        "-w", "/work/dir", busybox(images),
        "sh", "-c", 'hostname; echo "$GREETING|$FROM_FILE|$PATH|$HOME"; pwd; cat /etc/hostname',
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["box1", "hi there|1|/bin|/root", "/work/dir", "box1"]
    r = kc("run", "-u", "1000:1000", busybox(images), "id")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("uid=1000 gid=1000"), r.stdout


@needs_userns
def test_capabilities_and_no_new_privs(images: Fixtures) -> None:
    r = kc("run", busybox(images), "cat", "/proc/self/status")
    assert r.returncode == 0, r.stderr
    status = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert int(status["CapEff"], 16) == DOCKER_DEFAULT_CAPS
    assert int(status["CapBnd"], 16) == DOCKER_DEFAULT_CAPS
    assert int(status["CapInh"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    r = kc("run", "-u", "1000", busybox(images), "cat", "/proc/self/status")
    status = dict(line.split(":", 1) for line in r.stdout.splitlines() if ":" in line)
    assert int(status["CapEff"], 16) == 0


@needs_userns
def test_volumes_and_read_only(images: Fixtures, tmp_path: Path) -> None:
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (ro / "f").write_text("data\n")
    r = kc(
        "run", "-v", f"{ro}:/ro:ro", "-v", f"{rw}:/rw", busybox(images), "sh", "-c",
        "cat /ro/f; echo x > /ro/g || echo ro-refused; echo y > /rw/out && echo rw-ok",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["data", "ro-refused", "rw-ok"]
    assert "Read-only file system" in r.stderr
    assert not (ro / "g").exists() and (rw / "out").read_text() == "y\n"
    r = kc("run", "--read-only", busybox(images), "sh", "-c", "touch /etc/x || echo refused")
    assert r.stdout == "refused\n", r.stderr


@needs_userns
@pytest.mark.parametrize("mode", ["overlay", "copy"])
def test_writes_vanish_after_the_run(images: Fixtures, mode: str) -> None:
    r = kc("run", "--rootfs-mode", mode, busybox(images), "sh", "-c",
           "echo x > /etc/marker && rm /bin/ls && echo wrote")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "wrote\n"), r.stderr
    r = kc("run", "--rootfs-mode", mode, busybox(images), "sh", "-c",
           "test -e /etc/marker || test ! -e /bin/ls || echo clean")  # fmt: skip
    assert (r.returncode, r.stdout) == (0, "clean\n"), r.stderr


@needs_userns
def test_keep_keeps_the_writable_layer(images: Fixtures, _private_cache: Path) -> None:
    r = kc("run", "--keep", "--hostname", "kept1", busybox(images), "sh", "-c",
           "echo x > /etc/marker")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (upper,) = _private_cache.glob("containers/*/kept1/upper")  # per image and hostname
    assert (upper / "etc" / "marker").read_text() == "x\n"
    assert str(upper) in r.stderr


@needs_userns
def test_network_none_has_only_lo(images: Fixtures) -> None:
    r = kc("run", "--network", "none", busybox(images), "sh", "-c",
           "ls /sys/class/net; ip -o link | wc -l; ip -o addr show lo | grep -c 127.0.0.1",
           )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lo", "1", "1"]
    host = kc("run", busybox(images), "ls", "/sys/class/net")
    assert len(host.stdout.split()) == len(os.listdir("/sys/class/net"))


@needs_userns
def test_tty_is_a_real_pty(images: Fixtures) -> None:
    r = kc("run", "-t", busybox(images), "sh", "-c", "test -t 0 && test -t 1 && echo tty; tty")
    assert r.returncode == 0, r.stderr
    assert r.stdout.replace("\r", "").splitlines() == ["tty", "/dev/pts/0"]
    r = kc("run", busybox(images), "sh", "-c", "test -t 1 || echo not-a-tty")
    assert r.stdout == "not-a-tty\n"


@needs_userns
def test_cannot_reach_outside_the_rootfs(images: Fixtures, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret"
    secret.write_text("host\n")
    script = (
        f"cat {secret} || echo no-host-path; "
        "ls -a / | grep -c kcompat-oldroot; "
        "echo 1 > /sys/kernel/profiling || echo sys-ro; "
        "echo $(ls /dev); "
        f"echo pwned > {secret} || echo no-write"
    )
    r = kc("run", busybox(images), "sh", "-c", script)
    lines = r.stdout.splitlines()
    assert lines[:3] + lines[4:] == ["no-host-path", "0", "sys-ro", "no-write"], r.stderr
    # a minimal /dev: no host disks, no /dev/mem
    assert lines[3].split() == ["fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr",
                                "stdin", "stdout", "tty", "urandom", "zero"]  # fmt: skip
    assert secret.read_text() == "host\n"


@needs_userns
def test_unknown_command_and_incompatible_image(images: Fixtures, tmp_path: Path) -> None:
    # a command the runtime cannot find: docker's status (127) and runc's words, before
    # anything is pulled or flattened
    r = kc("run", busybox(images), "no-such-cmd")
    assert r.returncode == 127, r.stderr
    assert 'exec: "no-such-cmd": executable file not found in $PATH' in r.stderr
    r = kc("run", "--force", busybox(images), "no-such-cmd")
    assert r.returncode == 127
    assert 'exec: "no-such-cmd": executable file not found in $PATH' in r.stderr
    r = kc("run", images.relabelled(tmp_path, "--os", "windows"), "true")
    assert r.returncode == 10
    assert 'image operating system "windows" cannot be used' in r.stderr
    r = kc("run", "-v", "/no/such/dir:/x", busybox(images), "true")
    assert r.returncode == 3 and "/no/such/dir" in r.stderr


# -- signals, limits, cleanup -----------------------------------------------------------


def _start(images: Fixtures, *args: str) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [sys.executable, "-m", "kcompat", "run", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")
    return p


def _gone(pattern: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["pgrep", "-f", pattern], capture_output=True)
        if r.returncode != 0:
            return True
        time.sleep(0.1)
    return False


@needs_userns
def test_sigterm_reaches_pid1(images: Fixtures) -> None:
    p = _start(images, busybox(images), "sh", "-c",
               "trap 'echo got-term; exit 3' TERM; echo ready; sleep 1001 & wait")  # fmt: skip
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert (p.returncode, out) == (3, "got-term\n"), err
    assert _gone("sleep 1001")


@needs_userns
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM twice"])
def test_nothing_left_after_kcompat_is_killed(
    images: Fixtures, _private_cache: Path, how: str
) -> None:
    kc("run", busybox(images), "true")  # pull and flatten first

    def ours() -> list[str]:  # other programs may mount meanwhile: look at kcompat's own
        return [m for m in _mounts() if str(_private_cache) in m or "kcompat" in m]

    mounts_before = ours()
    tmp_before = set(os.listdir("/tmp"))
    cache_before = sorted(p.name for p in _private_cache.iterdir())
    p = _start(images, busybox(images), "sh", "-c", "echo ready; sleep 1002")
    if how == "SIGKILL":
        p.kill()
    else:
        p.terminate()  # sh as PID 1 ignores it (no handler), as in docker
        time.sleep(0.3)
        assert p.poll() is None
        p.terminate()  # the second one kills the container
    p.communicate(timeout=30)
    assert _gone("sleep 1002"), "the container outlived kcompat"
    assert ours() == mounts_before
    assert set(os.listdir("/tmp")) - tmp_before == set()
    assert sorted(p.name for p in _private_cache.iterdir()) == cache_before
    assert list((_private_cache / "run").iterdir()) == []


@needs_userns
@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup limits need root here (no delegation)")
def test_limits_apply_and_are_removed(images: Fixtures) -> None:
    r = kc("run", "--pids-limit", "4", busybox(images), "sh", "-c",
           "for i in 1 2 3 4 5 6; do sleep 2 & done; wait; echo done")  # fmt: skip
    assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr, r.stderr
    r = kc("run", "--memory", "16m", busybox(images), "busybox", "dd", "if=/dev/zero",
           "of=/dev/null", "bs=64M", "count=1")  # fmt: skip
    assert r.returncode == 137, (r.returncode, r.stderr)
    r = kc("run", "--memory", "64m", "--cpus", "0.5", busybox(images), "busybox", "dd",
           "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for base in Path("/sys/fs/cgroup").glob("**/kcompat"):
        assert [d for d in base.iterdir() if d.is_dir()] == [], base
    r = kc("run", "--memory", "lots", busybox(images), "true")
    assert r.returncode == 2 and "--memory 'lots'" in r.stderr


# -- emulated runs ----------------------------------------------------------------------


@needs_userns
@pytest.mark.parametrize(
    ("image", "machine"),
    [("busybox-arm64", "aarch64"), ("busybox-armhf", "armv7l"), ("busybox-s390x", "s390x")],
)
def test_emulated_busybox(images: Fixtures, image: str, machine: str) -> None:
    before = _binfmt_state()
    r = kc("run", images.oci(image), "sh", "-c", "uname -m; echo a b | wc -w; uname -m | cat")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [machine, "2", machine]
    assert _binfmt_state() == before


@needs_userns
def test_emulated_dynamic_glibc(images: Fixtures) -> None:
    """Debian's arm64 dash with its glibc: the loader and libc run under qemu too, and
    the children (uname, libc.so.6) are emulated: flag F works inside the rootfs."""
    before = _binfmt_state()
    r = kc("run", images.oci("dash-arm64"), "/bin/dash", "-c",
           "uname -m | cat; /lib/aarch64-linux-gnu/libc.so.6 | busybox head -1")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "aarch64"
    assert lines[1].startswith("GNU C Library (Debian GLIBC 2.36")
    assert _binfmt_state() == before


@needs_userns
def test_platform_from_multi_arch_index(images: Fixtures) -> None:
    r = kc("run", "--platform", "arm64", images.oci("busybox-multi"), "--", "uname", "-m")
    assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr
    r = kc("run", images.oci("busybox-multi"), "uname", "-m")  # the host's own entry
    assert (r.returncode, r.stdout) == (0, "x86_64\n"), r.stderr


@needs_userns
def test_missing_qemu_names_the_package(images: Fixtures, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))
    r = kc("run", "--force", images.oci("busybox-arm64"), "true", env=env)
    assert r.returncode == 8, r.stderr
    assert "apt-get install -y qemu-user-static" in r.stderr


@needs_userns
def test_binfmt_commands_in_a_private_namespace(images: Fixtures) -> None:
    """install/list/remove for real, in a user namespace's own binfmt_misc (6.7+), so
    the host's registrations are never touched by the test."""
    before = _binfmt_state()
    py = sys.executable
    script = (
        f"{py} -m kcompat binfmt install arm64 s390x && {py} -m kcompat binfmt list && "
        f"{py} -m kcompat binfmt remove arm64 && {py} -m kcompat binfmt list"
    )
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    if "cannot mount binfmt_misc" in r.stderr:
        pytest.skip("no private binfmt_misc on this kernel (needs 6.7+)")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith("registered qemu-aarch64: ")
    listed = [line for line in out if line.startswith("qemu-")]
    assert any(line.startswith("qemu-aarch64: enabled flags=") and "usable in containers" in line
               and "not usable" not in line for line in listed)  # fmt: skip
    assert "removed qemu-aarch64" in out
    after_remove = out[out.index("removed qemu-aarch64") + 1 :]
    assert [line.split(":")[0] for line in after_remove] == ["qemu-s390x"]
    assert _binfmt_state() == before


# -- rootless ---------------------------------------------------------------------------


@needs_userns
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                    reason="creating a test user needs root and useradd")  # fmt: skip
def test_rootless_run_as_a_new_user(images: Fixtures, tmp_path: Path) -> None:
    user = "kcompat-test"
    if subprocess.run(["id", user], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", user], check=True)
    home = Path(f"/tmp/{user}-{os.getpid()}")
    home.mkdir()
    try:
        shutil.chown(home, user)
        layout = home / "layout"
        shutil.copytree(images.layout, layout)
        subprocess.run(["chown", "-R", user, str(home)], check=True)
        # The venv's interpreter may live under /root; the user runs the same code with
        # an interpreter it can reach and the venv's site-packages (with the editable
        # install's finder) added as a site dir.
        site = [p for p in sys.path if p.endswith("site-packages")]
        py = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
        boot = (f"import site, sys; [site.addsitedir(p) for p in {site!r}]; "
                "sys.argv[0] = 'kcompat'; from kcompat.cli import main; main()")  # fmt: skip
        env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KCOMPAT_CACHE": str(home / "cache")}
        runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
        probe = subprocess.run([runuser, "-u", user, "--", py, "-c", boot, "binfmt", "list"],
                               capture_output=True, text=True, env=env)  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"the test user cannot import kcompat: {probe.stderr.strip()[-200:]}")
        r = subprocess.run(
            [runuser, "-u", user, "--", py, "-c", boot, "run", f"oci:{layout}:busybox-amd64",
             "sh", "-c", "id -u; echo x > /etc/f && echo wrote; echo $$"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["0", "wrote", "1"]
        r = subprocess.run(
            [runuser, "-u", user, "--", py, "-c", boot, "run",
             f"oci:{layout}:busybox-arm64", "uname", "-m"],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert (r.returncode, r.stdout) == (0, "aarch64\n"), r.stderr
    finally:
        shutil.rmtree(home, ignore_errors=True)
