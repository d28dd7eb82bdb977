"""`run --vm-kernel`: run an image's command under a real kernel booted in qemu.

The same Prepared run as `kcompat run` (kcompat.run.prepare: the verdict, argv, env,
user, workdir, volumes, tmpfs, limits) is carried out in a VM instead of namespaces:

- qemu-system-x86_64 (or qemu-system-aarch64 `-M virt -cpu max` for an arm64 kernel)
  boots the kernel (kcompat.vmkernel: Debian's package, or the fleet's own files) with
  an initramfs kcompat writes itself (kcompat.vminit: newc cpio, in Python): kcompat's own init
  (kcompat/data/vminit/init.c, built static with gcc and cached), the kernel's own
  modules that the run needs when they are modules (9p, 9pnet_virtio, overlay,
  virtio_console, virtio_pci and what they depend on, from the package, unpacked when
  xz/zstd/gzip), and the run's configuration. A `--vm-initrd` is put before it (the
  kernel unpacks concatenated archives in order: kcompat's /init wins);
- the cached rootfs reaches the guest read-only (`-fsdev local,readonly=on`, 9p) under
  an overlay whose upper layer is a tmpfs in the guest: nothing is written to the
  host's copy. Volumes (directories) are 9p shares of their own, tmpfs mounts tmpfs;
- the command runs as PID 1 of a new PID namespace with a minimal /dev, /sys read-only,
  cgroups as the kernel command line asks (systemd's words: v2 unless
  `systemd.unified_cgroup_hierarchy=0`), the image's user, groups, workdir and
  environment; its stdout and stderr are two virtio-serial ports (`ioeventfd=off`: the
  guest's write returns once qemu has written the bytes, so nothing is lost at power
  off) that qemu writes to files kcompat relays as they grow; init writes the exit
  status (128+N for signal N) to a third port and reboots, which with `-no-reboot`
  ends qemu. The kernel's console goes to a file shown only with `verbose` or when the
  VM ended without a status.

Not carried into the VM: docker's confinement (capabilities, seccomp, masked paths: the
VM is the boundary), `-i`/`-t` (no stdin: /dev/null), `--keep`, file volumes, and the
network (only `lo`); signals do not reach the guest (SIGTERM/SIGHUP end the VM, exit
128+N; SIGINT is the CLI's 130). The command is PID 1 of its PID namespace, as under
docker: a signal without a handler sent to it from inside is ignored. KVM is used when
the guest is the host's arch and a probe shows qemu's KVM runs a guest (kvm_usable);
otherwise TCG.

An x86-64 kernel built with CONFIG_PVH (Debian's are) is booted as its uncompressed
vmlinux through PVH (kcompat.boot_image): no firmware, no decompressor, which
under TCG saves more than the rest of the boot costs (bench/vm_boot.py times both).

virtme-ng (PyPI; 1.42 measured here with Debian 11's kernel and a busybox image's
rootfs as `--root`) is not used: its guest boots with `init=/bin/sh -- -c "mount -t
tmpfs run /run; ...; exec /run/virtme/guesttools/bin/virtme-ng-init"`, so the image
must bring a shell, `mount` and a /run directory (a distroless or scratch image has
none: with busybox's read-only root it panicked, "can't create directory '/run/'"); it
takes the kernel's modules from the root (`virtme_root_mods`) or from an initramfs it
builds with the host's busybox and depmod (kmod); it does not apply the image's user,
environment, workdir or cgroup layout; and its machine (q35, 1 GiB, 2 vCPUs, six
virtio-serial-pci devices, a watchdog) reached its switch to the root at 12.1 s of
guest time where kcompat's init has the root ready at about 5.5 s, with the same
kernel under TCG. A direct qemu command line with a small init of kcompat's own is what
a VM run of an image needs.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform as _platform
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcompat.binfmt import BINFMT
from kcompat.errors import ContainerError, LocalIOError, NotFoundError, UnsupportedError, UsageError
from kcompat.kernelimage import Kernel, boot_image
from kcompat.platform import Platform
from kcompat.store import default_cache_dir
from kcompat.target import Target, parse_release
from kcompat.versions import version_key
from kcompat.vminit import HOST_ARCH, base_initramfs, cpio, run_config
from kcompat.vmkernel import resolve as resolve_kernel

if TYPE_CHECKING:
    from kcompat.container import RunSpec
    from kcompat.image import ImageConfig
    from kcompat.pull import OpenImage
    from kcompat.run import Prepared
    from kcompat.runoptions import Checked, RunOptions
    from kcompat.store import BlobStore
    from kcompat.verify import Observation

DEFAULT_MEMORY = 512 << 20
MIN_MEMORY = 128 << 20
_QEMU = {"amd64": "qemu-system-x86_64", "arm64": "qemu-system-aarch64"}
_CONSOLE = {"amd64": "ttyS0", "arm64": "ttyAMA0"}
_PORTS = ("kcompat.stdout", "kcompat.stderr", "kcompat.status")


@dataclass(frozen=True)
class VmOptions:
    kernel: str  # --vm-kernel: debian:/ubuntu:SUITE[/ARCH], a .deb, an image file, a root dir
    initrd: Path | None = None  # --vm-initrd: put before kcompat's initramfs
    append: str = ""  # --vm-append: more kernel command line
    memory: int | None = None  # bytes (--memory); DEFAULT_MEMORY when None
    cpus: float | None = None  # --cpus: the VM's vCPUs, rounded up
    verbose: bool = False  # the kernel's console and init's timings on stderr
    accel: str = "auto"  # auto (KVM when it works) | kvm | tcg
    timeout: float | None = None  # seconds; None waits for the command


# -- the kernel as a judged target --------------------------------------------------------


def _words(append: str) -> dict[str, str]:
    """The kernel command line's key=value words (the last one of a key wins)."""
    out: dict[str, str] = {}
    for word in append.split():
        k, _, v = word.partition("=")
        out[k] = v
    return out


def _false(v: str | None) -> bool:
    return v is not None and v.lower() in ("0", "false", "no", "off", "n")


def _true(v: str | None) -> bool:
    return v is not None and v.lower() in ("", "1", "true", "yes", "on", "y")


def cgroup_mode(kernel: Kernel, append: str) -> str:
    """What kcompat's init mounts, with systemd's kernel command line words: cgroup v2
    (unified) by default, hybrid with `systemd.unified_cgroup_hierarchy=0`, v1 when
    `systemd.legacy_systemd_cgroup_controller` is also set; v1 before Linux 4.5 (no
    cgroup2)."""
    w = _words(append)
    version = parse_release(kernel.release)[0]
    if version_key(version) < (4, 5):
        return "v1"
    if _false(w.get("systemd.unified_cgroup_hierarchy")):
        return "v1" if _true(w.get("systemd.legacy_systemd_cgroup_controller")) else "hybrid"
    return "v2"


def vsyscall_mode(kernel: Kernel, append: str) -> tuple[str | None, str]:
    """The guest's vsyscall mode and where it comes from, in words (x86-64 only)."""
    if kernel.arch != "amd64":
        return None, "no vsyscall page on this arch"
    given = _words(append).get("vsyscall")
    if given in ("emulate", "xonly", "none"):
        return given, f"vsyscall={given} on the kernel command line"
    for mode in ("emulate", "xonly", "none"):
        if kernel.config_value(f"CONFIG_LEGACY_VSYSCALL_{mode.upper()}") == "y":
            return mode, f"CONFIG_LEGACY_VSYSCALL_{mode.upper()}=y in {kernel.config.name}"  # type: ignore[union-attr]
    version = parse_release(kernel.release)[0]
    mode = "xonly" if version_key(version) >= (5, 3) else "emulate"
    return mode, "no config file: the upstream default for this version"


def target_for_kernel(spec: str, append: str = "", cache: Path | None = None) -> Target:
    """The target a VM run of that kernel is: its release, arch, vsyscall mode (the
    command line, else the config), cgroup mode (what kcompat's init mounts), compat
    arches (IA32_EMULATION / COMPAT in its config); no binfmt handlers inside."""
    kernel = resolve_kernel(spec, cache or default_cache_dir())
    version, suffix = parse_release(kernel.release)
    vsys, vsys_why = vsyscall_mode(kernel, append)
    cgroup = cgroup_mode(kernel, append)
    compat: tuple[str, ...] = ()
    if kernel.arch == "amd64" and kernel.config_value("CONFIG_IA32_EMULATION") == "y":
        compat = ("386",)
    elif kernel.arch == "arm64" and kernel.config_value("CONFIG_COMPAT") == "y":
        compat = ("arm",)  # qemu's -cpu max runs AArch32 at EL0
    notes = [
        f"a VM booting {kernel.source}: Linux {kernel.release}",
        f"vsyscall: {vsys_why}" if vsys else "",
        f"cgroup {cgroup}: what kcompat's init mounts for this command line",
        "syscalls judged by the kernel version tables (a distribution kernel may carry "
        "backports)" if suffix else "syscalls judged by the kernel version tables",
    ]
    return Target(
        source=f"vm:{spec}",
        kernel=version,
        platform=Platform("linux", kernel.arch, "v8" if kernel.arch == "arm64" else None),
        compat_arches=compat,
        binfmt=(),
        binfmt_assumed=False,
        private_binfmt=False,
        qemu={},
        vsyscall=vsys,
        cgroup=cgroup,
        seccomp="disabled",
        userns=kernel.config_value("CONFIG_USER_NS") == "y" if kernel.config else None,
        notes=tuple(n for n in notes if n),
    )


# -- options a VM run cannot honour ------------------------------------------------------


def check_options(opts: RunOptions, config: ImageConfig, target: Target) -> None:
    """Refuse, before anything is pulled or booted, what a VM run does not do."""
    refused = [
        (opts.tty or opts.interactive, "-i/-t (the VM's command has no stdin)"),
        (opts.keep, "--keep (the writable layer is a tmpfs in the guest)"),
        (bool(opts.kernel), "--kernel (the VM boots a real kernel: give --vm-kernel alone)"),
        (opts.userns != "host", "--userns"),
        (opts.network not in ("host", "none"), f"--network {opts.network}"),
    ]
    for bad, what in refused:
        if bad:
            raise UsageError(f"{what} cannot be combined with --vm-kernel")
    arch = config.platform.architecture
    if arch in BINFMT and not target.runs_natively(arch) and not config.foreign_os:
        _foreign(arch, target)


def _foreign(arch: str, target: Target) -> None:
    raise UsageError(
        f"the image is {arch} and the VM's kernel is {target.platform.architecture}",
        hint=f"give a {arch} kernel, e.g. --vm-kernel debian:bookworm/{arch}",
    )


def prepare(
    opened: OpenImage,
    opts: RunOptions,
    store: BlobStore,
    target: Target,
    chosen_because: str | None = None,
    checked: Checked | None = None,
) -> Prepared:
    """kcompat.run.prepare for a VM target (from target_for_kernel), after the checks a
    VM run needs: the image's arch must be the kernel's, and no option it ignores."""
    from kcompat.run import prepare as run_prepare

    check_options(opts, opened.image.config, target)
    try:
        prepared = run_prepare(opened, opts, store, target, chosen_because, checked)
    except UnsupportedError as e:  # an ELF of another arch: qemu-user is no help in a VM
        m = re.match(r"the image is (\S+) and", e.message)
        if m:
            _foreign(m.group(1), target)
        raise
    if prepared.spec.emulation is not None:
        _foreign(prepared.spec.emulation.arch, target)
    return prepared


# -- acceleration --------------------------------------------------------------------------

_PROBE_EXIT = 3  # isa-debug-exit: (value << 1) | 1 for the value 1 the probe writes


def kvm_usable() -> tuple[bool, str]:
    """Whether qemu's KVM really runs a guest here (x86-64 hosts): /dev/kvm can exist,
    and even run a bare vCPU, where qemu's KVM set-up fails (this machine's does, on its
    MSRs). The probe boots a 64 KiB firmware of two instructions, `out` of 1 to an
    isa-debug-exit port then `hlt`, and wants qemu's exit status 3 back."""
    if _platform.machine() != "x86_64":
        return False, "the KVM probe is written for x86-64 hosts"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    qemu = shutil.which(_QEMU["amd64"])
    if qemu is None:
        return False, f"no {_QEMU['amd64']}"
    bios = bytearray(b"\xf4" * 0x10000)
    bios[0xFFF0:0xFFF5] = b"\xb0\x01\xe6\xf4\xf4"  # mov al,1; out 0xf4,al; hlt
    with tempfile.NamedTemporaryFile(prefix="kcompat-kvm-probe-") as f:
        f.write(bios)
        f.flush()
        try:
            r = subprocess.run(
                [qemu, "-accel", "kvm", "-M", "pc", "-cpu", "host", "-nodefaults",
                 "-no-user-config", "-display", "none", "-m", "16M", "-no-reboot",
                 "-bios", f.name, "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                capture_output=True, timeout=20, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            return False, "KVM probe: qemu did not end within 20 s"
    if r.returncode == _PROBE_EXIT:
        return True, "KVM (a probe guest ran)"
    last = (r.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
    return False, f"KVM does not work here (probe: qemu exit {r.returncode}: {last[:160]})"


def _kvm_cached(cache: Path) -> tuple[bool, str]:
    """kvm_usable, probed once per boot of this host (keyed by its boot_id)."""
    import json

    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return kvm_usable()
    path = cache / "vminit" / f"kvm-{boot}.json"
    with contextlib.suppress(OSError, ValueError):
        ok, why = json.loads(path.read_text())
        return bool(ok), str(why)
    ok, why = kvm_usable()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps([ok, why]))
        os.replace(tmp, path)
    return ok, why


def _accel(opts: VmOptions, arch: str, cache: Path) -> tuple[str, str]:
    native = HOST_ARCH.get(_platform.machine()) == arch
    if opts.accel == "tcg":
        return "tcg", "TCG (asked)"
    if opts.accel not in ("auto", "kvm"):
        raise UsageError(f"accel {opts.accel!r} is not auto, kvm or tcg")
    ok, why = (_kvm_cached(cache) if native
               else (False, f"a {arch} guest on a {_platform.machine()} host"))  # fmt: skip
    if opts.accel == "kvm" and not ok:
        raise UnsupportedError(f"KVM cannot be used: {why}", hint="use TCG (the default)")
    return ("kvm", why) if ok else ("tcg", f"TCG: {why}")


# -- the qemu command line ------------------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    initrd: Path
    console: Path
    stdout: Path
    stderr: Path
    status: Path


def _qarg(path: Path | str) -> str:
    """A path as one qemu option value (qemu splits values at commas: doubled)."""
    return str(path).replace(",", ",,")


def qemu_command(
    kernel: Kernel, files: _Files, rootfs: Path, spec: RunSpec | None,
    opts: VmOptions, accel: str, append: str, cache: Path,
) -> list[str]:  # fmt: skip
    qemu = shutil.which(_QEMU[kernel.arch])
    if qemu is None:
        pkg = "qemu-system-x86" if kernel.arch == "amd64" else "qemu-system-arm"
        raise UnsupportedError(f"a VM run of a {kernel.arch} kernel needs {_QEMU[kernel.arch]}",
                               hint=f"apt-get install -y {pkg}")  # fmt: skip
    memory = opts.memory or DEFAULT_MEMORY
    cpus = max(1, math.ceil(opts.cpus)) if opts.cpus else 1
    cmd = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-monitor", "none", "-m", f"{memory >> 20}M", "-smp", str(cpus)]  # fmt: skip
    if kernel.arch == "arm64":
        cpu = "host" if accel == "kvm" else "max,pauth-impdef=on"
        cmd += ["-M", "virt", "-cpu", cpu]
    else:
        cmd += ["-M", "pc", "-cpu", "host" if accel == "kvm" else "max"]
    cmd += ["-accel", accel]
    boot, _how = boot_image(kernel, cache)
    cmd += ["-kernel", _qarg(boot), "-initrd", _qarg(files.initrd), "-append", append]
    cmd += ["-serial", f"file:{files.console}"]
    cmd += ["-fsdev", f"local,id=kcrootfs,path={_qarg(rootfs)},security_model=none,readonly=on",
            "-device", "virtio-9p-pci,fsdev=kcrootfs,mount_tag=kcrootfs"]  # fmt: skip
    for i, vol in enumerate(spec.volumes if spec else ()):
        ro = ",readonly=on" if vol.readonly else ""
        cmd += ["-fsdev", f"local,id=kcvol{i},path={_qarg(vol.host)},security_model=none{ro}",
                "-device", f"virtio-9p-pci,fsdev=kcvol{i},mount_tag=kcvol{i}"]  # fmt: skip
    cmd += ["-device", "virtio-serial-pci,ioeventfd=off,max_ports=4"]
    for nr, (name, path) in enumerate(zip(_PORTS, (files.stdout, files.stderr, files.status)), 1):
        cmd += ["-chardev", f"file,id=kcport{nr},path={_qarg(path)}",
                "-device", f"virtserialport,chardev=kcport{nr},name={name},nr={nr}"]  # fmt: skip
    return cmd


def kernel_append(kernel: Kernel, opts: VmOptions) -> str:
    """The command line: kcompat's console and panic words first, the user's last (the
    kernel takes the last of a repeated word)."""
    quiet = "" if opts.verbose else " quiet"
    return f"console={_CONSOLE[kernel.arch]} panic=-1 rdinit=/init{quiet} {opts.append}".strip()


# -- relaying the command's output ----------------------------------------------------------


class _Tail(threading.Thread):
    """Copies a file qemu writes to an fd as it grows, to the end once told qemu ended."""

    def __init__(self, path: Path, fd: int | None) -> None:
        super().__init__(daemon=True)
        self.path, self.fd = path, fd
        self.done = threading.Event()

    def run(self) -> None:
        src = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            while True:
                ended = self.done.is_set()
                data = os.read(src, 1 << 16)
                if data:
                    self._write(data)
                    continue
                if ended:
                    return
                self.done.wait(0.005)
        finally:
            os.close(src)

    def _write(self, data: bytes) -> None:
        if self.fd is None:
            return
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except BrokenPipeError:  # the reader went away: the rest is dropped
            self.fd = None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass(frozen=True)
class VmResult:
    code: int
    accel: str


def run_prepared(
    spec: RunSpec, opts: VmOptions, stdout: int | None = 1, stderr: int | None = 2,
    diag: int | None = 2, cache: Path | None = None,
) -> VmResult:  # fmt: skip
    """Boot the kernel, run the prepared command in it, return its status. The
    command's stdout and stderr go to the given fds as they come (None: dropped); the
    kernel's console and init's timings go to `diag` with opts.verbose."""
    start = time.monotonic()
    cache = cache or default_cache_dir()
    kernel = resolve_kernel(opts.kernel, cache)
    memory = opts.memory or DEFAULT_MEMORY
    if memory < MIN_MEMORY:
        raise UsageError(f"--memory {memory >> 20}m is too little for a VM",
                         hint=f"give at least {MIN_MEMORY >> 20}m")  # fmt: skip
    if opts.initrd is not None and not opts.initrd.is_file():
        raise NotFoundError(f"--vm-initrd {opts.initrd}: no such file")
    for vol in spec.volumes:
        if not os.path.isdir(vol.host):
            raise UnsupportedError(f"-v {vol.host}:{vol.container}: a VM run shares "
                                   "directories only",
                                   hint="mount its directory instead")  # fmt: skip
    base, modules = base_initramfs(kernel, cache)
    accel, accel_why = _accel(opts, kernel.arch, cache)
    append = kernel_append(kernel, opts)
    conf = run_config(spec, modules, cgroup_mode(kernel, opts.append), opts.verbose)
    try:
        work = Path(tempfile.mkdtemp(prefix="kcompat-vm-"))
    except OSError as e:
        raise LocalIOError(f"cannot create a temporary directory: {e.strerror}") from None
    files = _Files(work / "initrd", work / "console", work / "stdout", work / "stderr",
                   work / "status")  # fmt: skip
    try:
        with open(files.initrd, "wb") as f:
            if opts.initrd is not None:
                with open(opts.initrd, "rb") as user:
                    shutil.copyfileobj(user, f, 1 << 20)
                f.write(b"\0" * (-f.tell() % 512))
            with open(base, "rb") as b:
                shutil.copyfileobj(b, f, 1 << 20)
            f.write(cpio([("kcompat.conf", 0o100600, conf)]))
        for p in (files.console, files.stdout, files.stderr, files.status):
            p.touch()
        cmd = qemu_command(kernel, files, spec.rootfs, spec, opts, accel, append, cache)
        if opts.verbose and diag is not None:
            os.write(diag, f"kcompat: qemu starts {time.monotonic() - start:.2f} s into the "
                           f"run; {accel_why}; {' '.join(cmd)}\n".encode())  # fmt: skip
        tails = [_Tail(files.stdout, stdout), _Tail(files.stderr, stderr)]
        if opts.verbose:
            tails.append(_Tail(files.console, diag))
        for t in tails:
            t.start()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, preexec_fn=_pdeathsig)  # fmt: skip
        ended_by: list[int] = []
        old = _on_signals(proc, ended_by)
        try:
            _, qerr = proc.communicate(timeout=opts.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            raise ContainerError(f"the VM run did not end within {opts.timeout:.0f} s",
                                 exit_code=125) from None  # fmt: skip
        finally:
            for signum, handler in old.items():
                signal.signal(signum, handler)
            _stop(proc)
            for t in tails:
                t.done.set()
            for t in tails:
                t.join()
        if ended_by:  # SIGTERM/SIGHUP ended the VM: kcompat's status says which
            return VmResult(128 + ended_by[0], accel)
        status = files.status.read_text(errors="replace").strip()
        m = re.fullmatch(r"(\d+)(?: (.*))?", status, re.S)
        if m is None:
            tail = _console_tail(files.console)
            why = qerr.decode(errors="replace").strip().splitlines()[-1:] or [tail]
            raise ContainerError(
                f"the VM ended without the command's status (qemu exit {proc.returncode}): "
                f"{why[0] or 'no message'}",
                hint="run with verbose to see the kernel's console",
            )
        code = int(m.group(1))
        if m.group(2):
            raise ContainerError(f"VM init: {m.group(2).strip()}", exit_code=code)
        return VmResult(code, accel)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _on_signals(proc: subprocess.Popen[bytes], ended_by: list[int]) -> dict[int, Any]:
    """SIGTERM and SIGHUP end the VM (qemu is killed; the guest has no way to take them:
    there is no signal channel into it); SIGINT stays the CLI's (exit 130)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def end(signum: int, _frame: object) -> None:
        ended_by.append(signum)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    return {s: signal.signal(s, end) for s in (signal.SIGTERM, signal.SIGHUP)}


def _pdeathsig() -> None:
    from kcompat import linuxapi

    linuxapi.set_pdeathsig(signal.SIGKILL)  # qemu dies with kcompat, even by SIGKILL


def _console_tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-3:])[:400]


def vm_options(opts: VmOptions, spec: RunSpec) -> VmOptions:
    """--memory and --cpus (already validated into the spec's limits) size the VM."""
    return replace(opts, memory=opts.memory or spec.limits.memory,
                   cpus=opts.cpus or spec.limits.cpus)  # fmt: skip


def run_in_vm(prepared: Prepared, opts: VmOptions) -> int:
    """`kcompat run --vm-kernel`: the prepared run in a VM; its exit status."""
    spec = prepared.spec
    return run_prepared(spec, vm_options(opts, spec)).code


def observe(prepared: Prepared, opts: VmOptions, timeout: float = 600.0) -> Observation:
    """`check --verify --vm-kernel`: run what was judged in the VM and say what happened
    (the command's stderr kept for its first line), for kcompat.verify.compare."""
    from kcompat.verify import Observation, first_error

    spec = prepared.spec
    with tempfile.TemporaryFile() as err:
        try:
            r = run_prepared(spec, replace(vm_options(opts, spec), timeout=timeout),
                             stdout=None, stderr=err.fileno())  # fmt: skip
        except ContainerError as e:
            return Observation("not-run", int(e.exit_code), str(e), spec.argv,
                               f"a VM booting {opts.kernel}")  # fmt: skip
        err.seek(0)
        first = first_error(err.read().decode(errors="replace"))
    outcome = "runs" if r.code == 0 else "fails"
    return Observation(outcome, r.code, first, spec.argv, f"a VM booting {opts.kernel} ({r.accel})")
