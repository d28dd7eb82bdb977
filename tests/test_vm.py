"""`run --vm-kernel`: images run under Debian's real kernels booted in qemu (TCG, or KVM
where kcompat.vm's probe shows it works), through the core API (kcompat.vm) and, once
the lead wires it, the CLI.

Real parts only: Debian bullseye's linux-image-amd64 / -arm64 (fetched once from
deb.debian.org into .fixtures/vm), qemu-system-x86_64 / -aarch64, the fixture images
(busybox-static), static programs built here with gcc -static, a Debian 11 image made by
mmdebstrap with python3. A test skips, saying why, when a part cannot be had.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from kcompat import kernelimage, vm, vminit, vmkernel
from kcompat.errors import KcompatError, NetworkError, NotFoundError, UsageError
from kcompat.run import Prepared
from kcompat.runoptions import RunOptions
from tests.conftest import Fixtures

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("KCOMPAT_FIXTURES", REPO / ".fixtures")) / "vm"
MIRROR = "http://deb.debian.org/debian"


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (ci/setup installs them)")


def _kernel(spec: str) -> kernelimage.Kernel:
    try:
        return vmkernel.resolve(spec, FIXTURES)
    except NetworkError as e:
        pytest.skip(f"Debian's kernel package cannot be had: {e}")


@pytest.fixture(scope="session")
def vm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm-cache")


@pytest.fixture(autouse=True)
def _shared_cache(vm_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One cache for the VM tests (rootfs, init, initramfs, PVH vmlinux): each test's own
    would redo seconds of work for nothing."""
    monkeypatch.setenv("KCOMPAT_CACHE", str(vm_cache))


@pytest.fixture(scope="session")
def amd64_kernel() -> str:
    """Debian 11's amd64 kernel, as the directory its package lays out (a --vm-kernel
    path: the fleet's own files)."""
    _need("qemu-system-x86_64", "gcc")
    k = _kernel("debian:bullseye/amd64")
    return str(k.image.parent.parent)


@pytest.fixture(scope="session")
def arm64_kernel() -> str:
    _need("qemu-system-aarch64", "aarch64-linux-gnu-gcc")
    k = _kernel("debian:bullseye/arm64")
    return str(k.image.parent.parent)


def _static(root: Path, name: str, body: str) -> None:
    src = root.parent / f"{name}.c"
    src.write_text(body)
    out = root / "bin" / name
    out.parent.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["gcc", "-static", "-O2", "-o", str(out), str(src)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed: {r.stderr.decode()[:200]}")


@pytest.fixture(scope="session")
def vsyscall_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A root with static programs that call the vsyscall page (old glibc's time())."""
    _need("gcc")
    root = tmp_path_factory.mktemp("vsys") / "root"
    _static(root, "vcall", "typedef long (*f)(long *);\n"
            "int main(void) { return ((f)0xffffffffff600400UL)(0) > 0 ? 0 : 1; }\n")  # fmt: skip
    _static(root, "plain", "int main(void) { return 0; }\n")
    return f"dir:{root}"


@pytest.fixture(scope="session")
def bullseye_python() -> str:
    """Debian 11 (minbase and python3-minimal) by mmdebstrap, cached as a root directory."""
    _need("mmdebstrap")
    root = FIXTURES / "bullseye-python"
    done = FIXTURES / "bullseye-python.done"
    if not done.is_file():
        shutil.rmtree(root, ignore_errors=True)
        r = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase",
                            "--include=python3-minimal", "bullseye", str(root), MIRROR],
                           capture_output=True, text=True, timeout=1200)  # fmt: skip
        if r.returncode != 0:
            pytest.skip(f"mmdebstrap bullseye failed: {r.stderr.strip()[-300:]}")
        done.write_text("ok\n")
    return f"dir:{root}"


def prepared(reference: str, target_spec: str, *command: str, append: str = "",
             **opts: object) -> tuple[Prepared, object]:  # fmt: skip
    from kcompat.check import BestPlatform
    from kcompat.pull import open_image
    from kcompat.sources import Options
    from kcompat.store import BlobStore

    target = vm.target_for_kernel(target_spec, append)
    best = BestPlatform(target)
    with open_image(reference, replace(Options(), choose=best)) as opened:
        p = vm.prepare(opened, RunOptions(command=command, **opts),  # type: ignore[arg-type]
                       BlobStore(), target, best.why)  # fmt: skip
    return p, target


def vm_run(reference: str, kernel: str, *command: str, tmp_path: Path, append: str = "",
           **opts: object) -> tuple[int, str, str]:  # fmt: skip
    p, _ = prepared(reference, kernel, *command, append=append, **opts)
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "wb") as o, open(err, "wb") as e:
        r = vm.run_prepared(p.spec, vm.vm_options(vm.VmOptions(kernel, append=append), p.spec),
                            stdout=o.fileno(), stderr=e.fileno())  # fmt: skip
    return r.code, out.read_text(errors="replace"), err.read_text(errors="replace")


# -- the kernel as a target, without booting ------------------------------------------------


def test_debian_kernel_package_and_its_facts(amd64_kernel: str) -> None:
    k = _kernel("debian:bullseye")  # the host's arch: amd64
    assert k.arch == "amd64" and k.release.startswith("5.10.0-") and k.release.endswith("-amd64")
    assert "linux-image-5.10.0-" in k.source and "verified" in k.source
    # the release from the bzImage's own header, the same as the package's modules dir
    release, arch = kernelimage.image_facts(k.image)
    assert (release, arch) == (k.release, "amd64")
    assert k.modules is not None and k.modules.name == k.release
    order, missing = kernelimage.module_closure(k)
    names = [n for n, _ in order]
    assert missing == []
    # 9p's modules after the ones they depend on (modinfo depends=), virtio_pci loaded
    assert names.index("9pnet") < names.index("9pnet_virtio") < names.index("9p")
    assert {"overlay", "virtio_console", "virtio_pci"} <= set(names)


def test_ubuntu_kernel_comes_with_its_modules_package_and_boots(images: Fixtures) -> None:
    """ubuntu:SUITE: Ubuntu ships the modules (9p, overlay) apart from the image; both are
    fetched, checked against an InRelease verified with Ubuntu's keyring (taken from
    Debian's ubuntu-keyring package through Debian's checked chain), and the VM runs."""
    _need("qemu-system-x86_64", "gcc")
    k = _kernel("ubuntu:noble/amd64")
    assert k.release.endswith("-generic") and k.arch == "amd64"
    assert "linux-modules-" in k.source and "verified by gpgv" in k.source, k.source
    order, missing = kernelimage.module_closure(k)
    assert missing == [] and {"9pnet_virtio", "9p", "overlay"} <= {n for n, _ in order}
    root = str(k.image.parent.parent)  # as the packages lay it out (the cache has it)
    r = kc("run", "--vm-kernel", root, images.oci("busybox-amd64"), "uname", "-r")
    assert r.returncode == 0 and r.stdout.strip() == k.release, r.stderr


def test_target_for_kernel_reads_config_and_command_line(amd64_kernel: str) -> None:
    t = vm.target_for_kernel(amd64_kernel)
    assert t.kernel == "5.10.0" and t.platform.architecture == "amd64"
    # Debian 11 builds CONFIG_LEGACY_VSYSCALL_NONE=y: old static binaries crash there
    assert t.vsyscall == "none" and any("CONFIG_LEGACY_VSYSCALL_NONE" in n for n in t.notes)
    assert t.cgroup == "v2" and t.compat_arches == ("386",) and t.binfmt == ()
    assert vm.target_for_kernel(amd64_kernel, "quiet vsyscall=emulate").vsyscall == "emulate"
    hybrid = vm.target_for_kernel(amd64_kernel, "systemd.unified_cgroup_hierarchy=0")
    assert hybrid.cgroup == "hybrid"
    v1 = vm.target_for_kernel(amd64_kernel, "systemd.unified_cgroup_hierarchy=0 "
                              "systemd.legacy_systemd_cgroup_controller=1")  # fmt: skip
    assert v1.cgroup == "v1"


def test_bad_kernel_specs_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no such file"):
        vm.target_for_kernel(str(tmp_path / "vmlinuz-missing"))
    with pytest.raises(UsageError, match="debian:SUITE"):
        vm.target_for_kernel("debian:Bad!Suite")
    junk = tmp_path / "vmlinuz-junk"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(KcompatError, match=r"arch|release"):
        vm.target_for_kernel(str(junk))


def test_cpio_is_what_the_kernel_and_gnu_cpio_read(tmp_path: Path) -> None:
    _need("cpio")
    data = vminit.cpio([("d", 0o40755, b""), ("d/f", 0o100644, b"hello"), ("x", 0o100755, b"")])
    assert len(data) % 512 == 0
    r = subprocess.run(["cpio", "-idv", "--quiet"], input=data, cwd=tmp_path,
                       capture_output=True, check=True)  # fmt: skip
    assert (tmp_path / "d" / "f").read_bytes() == b"hello"
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o755, r.stderr


def test_options_a_vm_run_cannot_honour(amd64_kernel: str, images: Fixtures) -> None:
    with pytest.raises(UsageError, match=r"-i/-t"):
        prepared(images.oci("busybox-amd64"), amd64_kernel, "true", tty=True)
    with pytest.raises(UsageError, match="--kernel"):
        prepared(images.oci("busybox-amd64"), amd64_kernel, "true", kernel="4.19")
    with pytest.raises(UsageError, match=r"arm64.*amd64"):
        prepared(images.oci("busybox-arm64"), amd64_kernel, "uname")
    p, _ = prepared(images.oci("busybox-amd64"), amd64_kernel, "true", memory="64m")
    with pytest.raises(UsageError, match="at least"):
        vm.run_prepared(p.spec, vm.vm_options(vm.VmOptions(amd64_kernel), p.spec))


def test_kvm_probe_answers() -> None:
    ok, why = vm.kvm_usable()
    assert isinstance(ok, bool) and why
    if not os.path.exists("/dev/kvm"):
        assert not ok


# -- booted ----------------------------------------------------------------------------------


def test_status_stdout_stderr_pass_through(amd64_kernel: str, images: Fixtures,
                                           tmp_path: Path) -> None:  # fmt: skip
    code, out, err = vm_run(images.oci("busybox-amd64"), amd64_kernel, "sh", "-c",
                            "echo out; echo err >&2; uname -r; echo $$; exit 7",
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 7
    lines = out.splitlines()
    assert lines[0] == "out" and lines[1].startswith("5.10.0-"), out
    assert lines[2] == "1", "the command is PID 1 of its own PID namespace, as in a container"
    assert err == "err\n"


def test_signal_user_workdir_env_and_a_written_everywhere_rootfs(
    amd64_kernel: str, images: Fixtures, tmp_path: Path
) -> None:
    ref = images.oci("busybox-amd64")
    p, _ = prepared(ref, amd64_kernel, "true")
    rootfs = p.spec.rootfs

    def tree() -> str:
        h = hashlib.sha256()
        for dirpath, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in sorted(dirs + files):
                path = Path(dirpath, name)
                st = path.lstat()
                h.update(f"{path} {st.st_mode} {st.st_uid} {st.st_gid} {st.st_size} "
                         f"{st.st_mtime_ns}\n".encode())  # fmt: skip
                if stat.S_ISREG(st.st_mode):
                    h.update(path.read_bytes())
        return h.hexdigest()

    before = tree()
    script = ("for d in / /bin /etc /usr /root /tmp /var; do mkdir -p $d; echo x > $d/kc; "
              "chmod 777 $d; done; rm -rf /bin/sync; echo hacked > /etc/passwd; "
              "ls /bin/sync 2>/dev/null; id -u; id -g; pwd; echo $FOO; kill -KILL $$; exit 3")
    code, out, _ = vm_run(ref, amd64_kernel, "sh", "-c", script, tmp_path=tmp_path,
                          user="0:0", workdir="/work/dir", env=("FOO=bar",))  # fmt: skip
    # PID 1 of a PID namespace ignores a signal without a handler sent from inside it,
    # SIGKILL too (as the shell is under docker): the script goes on to exit 3
    assert code == 3
    assert out.splitlines() == ["0", "0", "/work/dir", "bar"]
    assert tree() == before, "the cached rootfs changed"
    code, out, _ = vm_run(ref, amd64_kernel, "sh", "-c", "id -u; id -g; id -G; pwd",
                          tmp_path=tmp_path, user="1000:1000", workdir="/tmp")  # fmt: skip
    assert (code, out.split()) == (0, ["1000", "1000", "1000", "/tmp"])


def test_volumes_tmpfs_read_only_root_and_vm_size(amd64_kernel: str, images: Fixtures,
                                                  tmp_path: Path) -> None:  # fmt: skip
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "given").write_text("from the host\n")
    script = ("echo written > /data/out; cat /ro/given; echo x > /ro/nope || echo ro-refused; "
              "echo t > /scratch/t && grep -q ' /scratch tmpfs ' /proc/mounts && echo tmpfs; "
              "touch /root-write || echo root-ro; nproc; grep MemTotal /proc/meminfo")
    code, out, _ = vm_run(images.oci("busybox-amd64"), amd64_kernel, "sh", "-c", script,
                          tmp_path=tmp_path, volumes=(f"{rw}:/data", f"{ro}:/ro:ro"),
                          tmpfs=("/scratch",), read_only=True, memory="300m",
                          cpus="2")  # fmt: skip
    assert code == 0
    lines = out.split("\n")
    assert lines[:5] == ["from the host", "ro-refused", "tmpfs", "root-ro", "2"], out
    total_kib = int(lines[5].split()[1])  # --memory 300m: the VM's RAM, less the kernel's
    assert 200 * 1024 < total_kib <= 300 * 1024, lines[5]
    assert (rw / "out").read_text() == "written\n" and not (ro / "nope").exists()


def test_sigterm_ends_the_vm(amd64_kernel: str, images: Fixtures, tmp_path: Path) -> None:
    """kcompat killed by SIGTERM mid-run ends qemu and leaves nothing behind."""
    import signal
    import time

    code = f"""
import sys
from dataclasses import replace
from kcompat import vm
from kcompat.check import BestPlatform
from kcompat.pull import open_image
from kcompat.runoptions import RunOptions
from kcompat.sources import Options
from kcompat.store import BlobStore
target = vm.target_for_kernel({amd64_kernel!r})
best = BestPlatform(target)
with open_image({images.oci("busybox-amd64")!r}, replace(Options(), choose=best)) as o:
    p = vm.prepare(o, RunOptions(command=("sleep", "600")), BlobStore(), target, best.why)
print("booting", flush=True)
sys.exit(vm.run_in_vm(p, vm.VmOptions({amd64_kernel!r})))
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "booting\n"
    time.sleep(3)
    qemus = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
    assert qemus.stdout.split(), "qemu is running"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    for pid in qemus.stdout.split():
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status")\
            .read_text().lower()


def test_vsyscall_none_segfaults_and_verify_agrees(amd64_kernel: str, vsyscall_root: str,
                                                   tmp_path: Path) -> None:  # fmt: skip
    from kcompat.verify import compare

    p, _ = prepared(vsyscall_root, amd64_kernel, "/bin/vcall", append="vsyscall=none",
                         force=True)  # fmt: skip
    assert p.prediction.verdict == "incompatible"
    fatal = next(f for f in p.prediction.findings if f["severity"] == "fatal")
    assert fatal["rule"] == "vsyscall" and fatal["exit_code"] == 139
    obs = vm.observe(p, vm.VmOptions(amd64_kernel, append="vsyscall=none"))
    assert (obs.outcome, obs.exit_code) == ("fails", 139)
    assert compare(p.prediction.verdict, obs).agreement == "agree"
    p, _ = prepared(vsyscall_root, amd64_kernel, "/bin/vcall", append="vsyscall=emulate")
    assert p.prediction.verdict == "native"
    obs = vm.observe(p, vm.VmOptions(amd64_kernel, append="vsyscall=emulate"))
    assert (obs.outcome, obs.exit_code) == ("runs", 0)
    assert compare(p.prediction.verdict, obs).agreement == "agree"


def test_debian11_true_and_python(amd64_kernel: str, bullseye_python: str,
                                  tmp_path: Path) -> None:  # fmt: skip
    code, out, err = vm_run(bullseye_python, amd64_kernel, "/bin/true", tmp_path=tmp_path)
    assert (code, out, err) == (0, "", "")
    code, out, err = vm_run(bullseye_python, amd64_kernel, "python3", "-c",
                            "import sys, platform; print(6 * 7, platform.release()); "
                            "sys.stderr.write('to stderr\\n'); sys.exit(5)",
                            tmp_path=tmp_path)  # fmt: skip
    assert code == 5 and out.split()[0] == "42" and out.split()[1].startswith("5.10.0-")
    assert err == "to stderr\n"


def test_cgroup_modes_and_a_user_initrd(amd64_kernel: str, images: Fixtures,
                                       tmp_path: Path) -> None:  # fmt: skip
    """systemd's words on --vm-append choose the cgroup layout init mounts; a
    --vm-initrd (gzip'd, as distributions ship theirs) goes first, kcompat's after it."""
    import gzip

    user_initrd = tmp_path / "initrd.gz"
    archive = vminit.cpio([("etc", 0o40755, b""), ("etc/from-user", 0o100644, b"x")])
    user_initrd.write_bytes(gzip.compress(archive))
    probe = ("test -e /sys/fs/cgroup/cgroup.controllers && echo v2; "
             "test -d /sys/fs/cgroup/unified && echo hybrid; "
             "test -d /sys/fs/cgroup/memory && echo v1-memory; true")
    append = "systemd.unified_cgroup_hierarchy=0"
    p, _ = prepared(images.oci("busybox-amd64"), amd64_kernel, "sh", "-c", probe, append=append)
    out = tmp_path / "out"
    opts = vm.VmOptions(amd64_kernel, initrd=user_initrd, append=append)
    with open(out, "wb") as o:
        r = vm.run_prepared(p.spec, opts, stdout=o.fileno(), stderr=None)
    assert r.code == 0 and out.read_text().split() == ["hybrid", "v1-memory"]


def test_arm64_busybox_under_an_arm64_kernel(arm64_kernel: str, images: Fixtures,
                                             tmp_path: Path) -> None:  # fmt: skip
    code, out, _ = vm_run(images.oci("busybox-arm64"), arm64_kernel, "uname", "-m",
                          tmp_path=tmp_path)  # fmt: skip
    assert (code, out) == (0, "aarch64\n")


# -- the CLI (enabled once `kcompat run --vm-kernel` is wired) ------------------------------


def _wired() -> bool:
    r = subprocess.run([sys.executable, "-m", "kcompat", "run", "--help"], capture_output=True,
                       text=True, check=False)  # fmt: skip
    return "--vm-kernel" in r.stdout


cli = pytest.mark.skipif(not _wired(), reason="CLI wiring pending")


def kc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kcompat", *args], capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip


@cli
def test_cli_run_vm_kernel(amd64_kernel: str, images: Fixtures) -> None:
    r = kc("run", "--vm-kernel", amd64_kernel, images.oci("busybox-amd64"), "sh", "-c",
           "echo out; echo err >&2; exit 7")  # fmt: skip
    assert r.returncode == 7 and r.stdout == "out\n" and "err" in r.stderr, r.stderr


@cli
def test_cli_check_verify_vm_kernel(amd64_kernel: str, vsyscall_root: str) -> None:
    r = kc("check", "--verify", "--vm-kernel", amd64_kernel, "--vm-append", "vsyscall=none",
           "--fail-on", "never", vsyscall_root, "--", "/bin/vcall")  # fmt: skip
    assert r.returncode == 0 and "AGREE" in r.stdout and "139" in r.stdout, r.stdout + r.stderr


@cli
def test_cli_bad_vm_kernel(images: Fixtures, tmp_path: Path) -> None:
    r = kc("run", "--vm-kernel", str(tmp_path / "nope"), images.oci("busybox-amd64"), "true")
    assert r.returncode == 3 and r.stderr.startswith("kcompat: error: --vm-kernel")


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test's runs keep their temporary files in a directory of its own, which
    must be empty after (this process and the kcompat processes it starts)."""
    import tempfile

    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.setenv("TMPDIR", str(tmp))
    yield
    left = list(tmp.glob("kcompat-vm-*"))
    assert not left, f"temporary VM directories left behind: {left}"


def test_init_source_reaches_the_wheel(tmp_path: Path) -> None:
    """kcompat builds its VM init from the source it ships: the wheel must carry it."""
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"pip wheel failed: {r.stderr.strip()[-200:]}")
    wheel = next(tmp_path.glob("kcompat-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "kcompat/data/vminit/init.c" in names
    assert "kcompat/vm.py" in names and "kcompat/vmkernel.py" in names
