"""Run a command in a container: Linux namespaces isolate, the image is the root.

Three processes, so that every step happens where it must:

  kcompat (host)        writes the child's uid/gid maps (only a process outside the new
  |                     user namespace may map more than its own id), puts it in the
  |                     cgroup, forwards signals, relays the pty, cleans up, returns the
  |                     container's exit status
  +- keeper (C1)        unshare(user, mount, uts, ipc, pid[, net]); forks PID 1, waits
     |                  for it and sends its wait status up
     +- PID 1 (C2)      mounts the root (overlay over the cached rootfs, on a tmpfs that
                        exists only in this mount namespace), /proc, /dev, /sys, volumes,
                        the private binfmt_misc for emulation; pivot_root; capabilities,
                        no_new_privs, credentials; exec

Each child gets PR_SET_PDEATHSIG(SIGKILL): if kcompat dies, even by SIGKILL, the keeper
dies, PID 1 dies, the kernel kills the rest of the PID namespace, and the mount namespace
with every mount and the tmpfs holding the writable layer goes with it. Nothing of a
run is written to the host's file systems unless --keep asks for the writable layer.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob as globmod
import os
import secrets
import selectors
import signal
import socket
import stat
import struct
import sys
import termios
import tty as ttymod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcompat import linuxapi as L
from kcompat.cgroups import CgroupLimits, Limits
from kcompat.errors import ContainerError, ExitCode, LocalIOError
from kcompat.formats import HEAD_SIZE, ShebangError, parse_shebang

OLD_ROOT = "/.kcompat-oldroot"
_TIOCSCTTY = 0x540E
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
              signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip

# Exit statuses with docker's meanings, for failures after the container was created.
EXIT_SETUP: int = ExitCode.CONTAINER_SETUP
EXIT_CANNOT_INVOKE: int = ExitCode.CANNOT_INVOKE
EXIT_NOT_FOUND: int = ExitCode.COMMAND_NOT_FOUND


@dataclass(frozen=True)
class Volume:
    host: str  # absolute, existing
    container: str  # absolute
    readonly: bool


@dataclass(frozen=True)
class Emulation:
    """How foreign binaries run: a binfmt_misc line to register privately (flag F, the
    host path of a static qemu-user), and whether a host entry may serve instead."""

    arch: str
    interpreter: str
    register_line: str | None
    host_entry: str | None


@dataclass(frozen=True)
class RunSpec:
    rootfs: Path
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    workdir: str = "/"
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    hostname: str = field(default_factory=lambda: secrets.token_hex(6))
    volumes: tuple[Volume, ...] = ()
    network: str = "host"  # host | none
    interactive: bool = False
    tty: bool = False
    read_only: bool = False
    scratch: Path = Path("/nonexistent")  # an existing directory a tmpfs is mounted on
    keep_dir: Path | None = None  # where the writable layer goes when kept
    emulation: Emulation | None = None
    limits: Limits = field(default_factory=Limits)
    rootfs_mode: str = "auto"  # auto | overlay | copy
    capabilities: frozenset[int] = L.DOCKER_DEFAULT_CAPS
    # A simulated older kernel (kcompat.seccomp): the BPF program installed just before
    # exec, and the release the first process sees, through a same-arch qemu-user -r
    # (host path of its static interpreter).
    seccomp_program: bytes | None = None
    fake_release: str | None = None
    release_interpreter: str | None = None
    # Confinement (kcompat.confine): docker's default seccomp profile (or the user's, or
    # None for unconfined), masked and read-only paths, no_new_privs, tmpfs mounts.
    profile_program: bytes | None = None
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    no_new_privs: bool = True
    tmpfs: tuple[tuple[str, int, str], ...] = ()  # (container path, MS_* flags, options)
    init: bool = False  # PID 1 is kcompat's init: reaps, forwards signals, passes status
    userns: str = "host"  # host: root maps to itself | auto: to an unprivileged range


@dataclass(frozen=True)
class IdMap:
    uid_lines: str
    gid_lines: str
    setgroups_allowed: bool
    helper: bool  # written by newuidmap/newgidmap


def _subids(path: str, user: str, uid: int) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)):
                    return int(parts[1]), int(parts[2])
    except (OSError, ValueError):
        return None
    return None


AUTO_BASE = 1879048192  # above systemd's container range (524288-1879048191), below 2^31


def auto_base(ids: str = "/etc/subuid") -> int:
    """Where `--userns auto` maps container root (or, from /etc/subgid, its group): the
    range the file gives the user "containers" (podman's convention) or "root", else
    AUTO_BASE. Every such container shares the range."""
    for user in ("containers", "root"):
        sub = _subids(ids, user, -1)
        if sub and sub[1] >= 65536:
            return sub[0]
    return AUTO_BASE


def id_map(userns: str = "host") -> IdMap:
    """Root maps ids 0-65535 to themselves (the cached rootfs belongs to them), or with
    `--userns auto` to an unprivileged range (the rootfs is then seen through an
    idmapped mount); any other user maps to root inside, plus its subordinate ids when
    newuidmap and /etc/subuid allow it, so that -u works; otherwise only root exists."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0 and userns == "auto":
        base, gbase = auto_base(), auto_base("/etc/subgid")
        return IdMap(f"0 {base} 65536\n", f"0 {gbase} 65536\n", True, False)
    if uid == 0:
        return IdMap("0 0 65536\n", "0 0 65536\n", True, False)
    import pwd
    import shutil

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    sub_u = _subids("/etc/subuid", user, uid)
    sub_g = _subids("/etc/subgid", user, uid)
    if sub_u and sub_g and shutil.which("newuidmap") and shutil.which("newgidmap"):
        return IdMap(
            f"0 {uid} 1 1 {sub_u[0]} {min(sub_u[1], 65535)}",
            f"0 {gid} 1 1 {sub_g[0]} {min(sub_g[1], 65535)}",
            True,
            True,
        )
    return IdMap(f"0 {uid} 1\n", f"0 {gid} 1\n", False, False)


def _write_maps(pid: int, m: IdMap) -> None:
    import subprocess

    if m.helper:
        for tool, lines in (("newuidmap", m.uid_lines), ("newgidmap", m.gid_lines)):
            r = subprocess.run([tool, str(pid), *lines.split()], capture_output=True, text=True)
            if r.returncode != 0:
                raise ContainerError(
                    f"{tool} failed: {r.stderr.strip() or r.returncode}",
                    hint="check /etc/subuid and /etc/subgid for your user",
                )
        return
    try:
        if not m.setgroups_allowed:
            Path(f"/proc/{pid}/setgroups").write_text("deny")
        Path(f"/proc/{pid}/uid_map").write_text(m.uid_lines)
        Path(f"/proc/{pid}/gid_map").write_text(m.gid_lines)
    except OSError as e:
        raise ContainerError(
            f"cannot write the user namespace id maps: {e.strerror}",
            hint="user namespaces may be disabled (sysctl user.max_user_namespaces)",
        ) from None


# -- the child side: everything below runs after fork, before exec -----------------------


class _Step(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _fail(code: int, message: str) -> _Step:
    return _Step(code, message)


def _touch(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def _bind(source: str, target: str, readonly: bool = False, rec: bool = True) -> None:
    L.mount(source, target, None, L.MS_BIND | (L.MS_REC if rec else 0))
    if readonly and rec:
        L.readonly_recursive(target)  # submounts too, as docker 25+ (mount_setattr)
    elif readonly:
        L.remount_readonly(target)


def _copy_tree(src: str, dst: str) -> None:
    """The copy fallback where overlayfs cannot be mounted: files copied, links kept,
    special files skipped (a container's /dev is made separately)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = os.path.join(dst, rel) if rel != "." else dst
        st = os.lstat(dirpath)
        os.makedirs(out, exist_ok=True)
        os.chmod(out, stat.S_IMODE(st.st_mode) | 0o200)
        for name in dirnames + filenames:
            s = os.path.join(dirpath, name)
            d = os.path.join(out, name)
            lst = os.lstat(s)
            if stat.S_ISLNK(lst.st_mode):
                os.symlink(os.readlink(s), d)
                if name in dirnames:
                    dirnames.remove(name)
            elif stat.S_ISREG(lst.st_mode):
                with open(s, "rb") as fi, open(d, "wb") as fo:
                    while chunk := fi.read(1 << 20):
                        fo.write(chunk)
                os.chmod(d, stat.S_IMODE(lst.st_mode))


def _mount_root(spec: RunSpec, scratch: str, tree_fd: int = -1) -> str:
    root = os.path.join(scratch, "root")
    os.mkdir(root)
    if tree_fd >= 0:  # --userns auto: the rootfs through an idmapped mount
        lower_dir = os.path.join(scratch, "lower")
        os.mkdir(lower_dir)
        L.attach(tree_fd, lower_dir)
        os.close(tree_fd)
        spec = _with_rootfs(spec, lower_dir)
    layer = str(spec.keep_dir) if spec.keep_dir else scratch
    upper, work = os.path.join(layer, "upper"), os.path.join(layer, "work")
    os.makedirs(upper, exist_ok=True)
    os.makedirs(work, exist_ok=True)
    errors = []
    if spec.rootfs_mode in ("auto", "overlay"):
        lower = str(spec.rootfs).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")
        base = f"lowerdir={lower},upperdir={upper},workdir={work}"
        for opts in (base + ",userxattr", base):
            try:
                L.mount("overlay", root, "overlay", 0, opts)
                return root
            except OSError as e:
                errors.append(e.strerror or str(e))
    if spec.rootfs_mode == "overlay":
        raise _fail(EXIT_SETUP, f"overlayfs over {spec.rootfs} failed: {errors[-1]}")
    _copy_tree(str(spec.rootfs), root)
    _bind(root, root)
    return root


def _with_rootfs(spec: RunSpec, rootfs: str) -> RunSpec:
    from dataclasses import replace

    return replace(spec, rootfs=Path(rootfs))


def _setup_dev() -> None:
    os.makedirs("/dev", exist_ok=True)
    L.mount("tmpfs", "/dev", "tmpfs", L.MS_NOSUID | L.MS_STRICTATIME, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        _touch(f"/dev/{name}")
        _bind(f"{OLD_ROOT}/dev/{name}", f"/dev/{name}", rec=False)
    os.mkdir("/dev/pts")
    L.mount("devpts", "/dev/pts", "devpts", L.MS_NOSUID | L.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
    os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    L.mount("shm", "/dev/shm", "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "mode=1777")
    os.symlink("/proc/self/fd", "/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")


def _setup_sys(new_net: bool) -> None:
    """/sys read-only, cgroupfs included: a fresh sysfs (only the owner of a network
    namespace may mount one), else the host's, bound read-only with every submount."""
    os.makedirs("/sys", exist_ok=True)
    flags = L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
    if new_net:
        L.mount("sysfs", "/sys", "sysfs", flags)
        return
    _bind(f"{OLD_ROOT}/sys", "/sys", readonly=True)


def _mask(paths: tuple[str, ...]) -> None:
    """docker's masked paths: /dev/null over a file, an empty read-only tmpfs over a
    directory (runc's maskPath); a path the kernel lacks is skipped."""
    for path in (p for pattern in paths for p in sorted(globmod.glob(pattern))):
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            L.mount("tmpfs", path, "tmpfs", L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC,
                    "size=0,mode=0555")  # fmt: skip
        else:
            L.mount("/dev/null", path, None, L.MS_BIND)


def _readonly(paths: tuple[str, ...]) -> None:
    """docker's read-only paths: bound on themselves, read-only with their submounts."""
    for path in paths:
        if os.path.lexists(path):
            _bind(path, path, readonly=True)


def _etc_copies(scratch: str, hostname: str) -> None:
    """/etc/resolv.conf, /etc/hosts and /etc/hostname: copies of the host's on the run's
    tmpfs, writable inside and gone after; never the host's files themselves. Runs after
    pivot_root: the tmpfs is reached through the old root."""
    scratch = OLD_ROOT + scratch
    for name, source in (("resolv.conf", "/etc/resolv.conf"), ("hosts", "/etc/hosts")):
        try:
            with open(OLD_ROOT + source, "rb") as f:
                data = f.read(1 << 20)
        except OSError:
            continue
        copy = os.path.join(scratch, name)
        with open(copy, "wb") as f:
            f.write(data)
        _touch(f"/etc/{name}")
        _bind(copy, f"/etc/{name}", rec=False)
    _touch("/etc/hostname")
    _bind(os.path.join(scratch, "hostname"), "/etc/hostname", rec=False)


def _register_binfmt(emu: Emulation, mnt: str) -> bool:
    """Register qemu-user in the run's own binfmt_misc (Linux 6.7+), mounted at `mnt`
    before pivot_root: with flag F the kernel opens the interpreter now, by its host
    path, and that path is what a process list shows for an emulated program. False
    when there is no private instance and the host's entry serves instead."""
    os.makedirs(mnt, exist_ok=True)
    try:
        L.mount("binfmt_misc", mnt, "binfmt_misc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
    except OSError as e:
        if emu.host_entry:
            return False  # no private instance: the host's entry (flag F, static) serves
        raise _fail(
            EXIT_SETUP,
            f"cannot mount a private binfmt_misc for {emu.arch} ({e.strerror}; needs Linux 6.7+)",
        ) from None
    assert emu.register_line is not None
    try:
        with open(f"{mnt}/register", "w") as f:
            f.write(emu.register_line)
    except OSError as e:
        raise _fail(EXIT_SETUP, f"registering {emu.interpreter} failed: {e.strerror}") from None
    return True  # stays mounted until /proc/sys/fs/binfmt_misc holds the instance


def _lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(s, _SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | _IFF_UP))


def _open_pty() -> tuple[int, int]:
    master = os.open("/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
    n = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, struct.pack("I", 0)))[0]
    slave = os.open(f"/dev/pts/{n}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def _container_init(
    spec: RunSpec, ptysock: socket.socket | None, errw: int = -1, tree_fd: int = -1
) -> None:
    """PID 1: build the root, then exec. Raises _Step on a failure to report."""
    step = "mount namespace"
    try:
        if spec.userns == "auto":  # host root is not mapped: become the namespace's root
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        # A cgroup namespace, made now that the keeper is in the run's cgroup (the
        # parent attached it before "go"): the container sees its own cgroup as "/".
        with contextlib.suppress(OSError):  # EINVAL: a kernel before 4.6 has none
            L.unshare(L.CLONE_NEWCGROUP)
        os.setsid()
        devnull = os.open("/dev/null", os.O_RDWR)
        L.mount(None, "/", None, L.MS_REC | L.MS_PRIVATE)
        scratch = str(spec.scratch)
        step = f"tmpfs on {scratch}"
        L.mount("tmpfs", scratch, "tmpfs", L.MS_NOSUID | L.MS_NODEV, "mode=0755")
        with open(os.path.join(scratch, "hostname"), "w") as f:
            f.write(spec.hostname + "\n")
        qemu_fd = -1
        if spec.fake_release and spec.release_interpreter:
            step = f"open {spec.release_interpreter}"
            qemu_fd = os.open(spec.release_interpreter, os.O_RDONLY | os.O_CLOEXEC)
        private_binfmt = False
        if spec.emulation is not None:
            step = "binfmt_misc"
            private_binfmt = _register_binfmt(spec.emulation, os.path.join(scratch, "binfmt"))
        step = "root file system"
        root = _mount_root(spec, scratch, tree_fd)
        os.makedirs(root + OLD_ROOT, exist_ok=True)
        step = "pivot_root"
        os.chdir(root)
        L.pivot_root(".", "." + OLD_ROOT)
        os.chdir("/")
        step = "/proc"
        os.makedirs("/proc", exist_ok=True)
        L.mount("proc", "/proc", "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
        step = "/dev"
        _setup_dev()
        step = "/sys"
        _setup_sys(spec.network == "none")
        if private_binfmt:  # the registrations live as long as the instance is mounted
            step = "binfmt_misc"
            L.mount("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc",
                    L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)  # fmt: skip
        step = "/etc files"
        _etc_copies(scratch, spec.hostname)
        step = "masked paths"
        _mask(spec.masked_paths)
        step = "read-only paths"
        _readonly(spec.readonly_paths)
        for point, flags, opts in spec.tmpfs:
            step = f"tmpfs {point}"
            os.makedirs(point, exist_ok=True)
            L.mount("tmpfs", point, "tmpfs", flags, opts or None)
        for vol in spec.volumes:
            step = f"volume {vol.host}:{vol.container}"
            host = OLD_ROOT + vol.host
            if os.path.isdir(host):
                os.makedirs(vol.container, exist_ok=True)
            else:
                _touch(vol.container)
            _bind(host, vol.container, readonly=vol.readonly)
        step = f"workdir {spec.workdir}"
        os.makedirs(spec.workdir, exist_ok=True)
        master = slave = -1
        if spec.tty:
            step = "pty"
            master, slave = _open_pty()
            assert ptysock is not None
            socket.send_fds(ptysock, [b"m"], [master])
            os.close(master)
            ptysock.close()
        step = "old root"
        L.umount(OLD_ROOT, L.MNT_DETACH)
        os.rmdir(OLD_ROOT)
        if spec.read_only:
            step = "read-only root"
            L.remount_readonly("/")
        step = "hostname"
        socket.sethostname(spec.hostname)
        if spec.network == "none":
            step = "loopback"
            _lo_up()
        step = "stdio"
        if spec.tty:
            fcntl.ioctl(slave, _TIOCSCTTY, 0)
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.close(slave)
        elif not spec.interactive:
            os.dup2(devnull, 0)
        os.close(devnull)
        step = "credentials"
        if spec.groups or spec.gid:
            with contextlib.suppress(PermissionError):  # denied when only root is mapped
                os.setgroups(list(spec.groups))
        os.setresgid(spec.gid, spec.gid, spec.gid)
        if spec.profile_program is not None and not spec.no_new_privs:
            from kcompat.seccomp import install  # imported before fork by the caller

            step = "seccomp profile"
            install(spec.profile_program)  # still with CAP_SYS_ADMIN, as runc does
        L.limit_capabilities(spec.capabilities)
        if spec.no_new_privs:
            L.set_no_new_privs()
        os.setresuid(spec.uid, spec.uid, spec.uid)
        os.chdir(spec.workdir)
        step = "file descriptors"
        L.cloexec_from(3)  # only 0, 1, 2 reach the command: nothing of the caller's
    except OSError as e:
        hint = ""
        if e.errno in (errno.EPERM, errno.EINVAL) and step in ("credentials",):
            hint = (
                " (only root is mapped in this user namespace: run as root, or add your user"
                " to /etc/subuid and /etc/subgid)"
            )
        raise _fail(EXIT_SETUP, f"{step}: {e.strerror or e}{hint}") from None
    env = dict(spec.env)
    argv0 = spec.argv[0]
    qemu_args: list[str] = []
    if qemu_fd >= 0:
        path = argv0 if "/" in argv0 else _which(argv0, env.get("PATH", ""))
        if path is None:
            raise _fail(EXIT_NOT_FOUND, f'exec: "{argv0}": executable file not found in $PATH')
        path, qemu_args = _script_hops(path)
    if spec.profile_program is not None and spec.no_new_privs:
        from kcompat.seccomp import install  # imported before fork by the caller

        try:  # before the init forks: PID 1 is filtered too, as docker-init under runc
            install(spec.profile_program)
        except OSError as e:
            raise _fail(EXIT_SETUP, f"seccomp profile: {e.strerror or e}") from None
    if spec.init:
        L.set_pdeathsig(signal.SIGKILL)
        child = os.fork()
        if child != 0:
            # init never execs: nothing of the caller's may stay open in it (the
            # command could reach it through /proc/1/fd), and nobody may ptrace it
            os.closerange(3, os.sysconf("SC_OPEN_MAX") if os.sysconf("SC_OPEN_MAX") > 0
                          else 65536)  # fmt: skip
            L.prctl(L.PR_SET_DUMPABLE, 0)
            _init(child)  # never returns
    for sig in range(1, signal.NSIG):
        with contextlib.suppress(OSError, ValueError, RuntimeError):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    L.set_pdeathsig(signal.SIGKILL)
    try:
        if spec.seccomp_program is not None:
            from kcompat.seccomp import install

            if not spec.no_new_privs:  # the simulation's filter needs it (no CAP_SYS_ADMIN)
                L.set_no_new_privs()
            install(spec.seccomp_program)
        if qemu_fd >= 0:
            # qemu-user runs the program with the faked release (-r); -0 keeps argv[0].
            # (after #! hops the kernel makes the interpreter's name argv[0])
            name0 = str(path) if qemu_args else argv0
            qargv = ["qemu", "-r", str(spec.fake_release), "-0", name0, str(path),
                     *qemu_args, *spec.argv[1:]]  # fmt: skip
            os.execve(qemu_fd, qargv, env)
        os.execvpe(argv0, list(spec.argv), env)
    except FileNotFoundError:
        if "/" in spec.argv[0]:
            raise _fail(EXIT_NOT_FOUND, f'exec "{spec.argv[0]}": no such file or directory'
                        " (the file, or its ELF interpreter, is missing)") from None  # fmt: skip
        raise _fail(
            EXIT_NOT_FOUND, f'exec: "{spec.argv[0]}": executable file not found in $PATH'
        ) from None
    except OSError as e:
        code = EXIT_CANNOT_INVOKE
        raise _fail(code, f'exec "{spec.argv[0]}": {e.strerror}') from None


_INIT_FORWARDED = (*_FORWARDED, signal.SIGWINCH, signal.SIGCONT, signal.SIGTSTP)


def _init(child: int) -> None:
    """kcompat's init as PID 1 (--init, and always under --kernel, where qemu-user would
    otherwise be PID 1 and could not die by its guest's signal): forwards signals to
    the command, reaps every orphan, and exits with the command's status (128+N when
    signal N ended it). Runs after pivot_root: only what is already imported."""

    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)

    for sig in _INIT_FORWARDED:
        signal.signal(sig, forward)
    code = EXIT_SETUP
    try:
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid == child:
                code = (
                    128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
                )
                break
    finally:
        os._exit(code)


def _script_hops(path: str) -> tuple[str, list[str]]:
    """qemu-user runs only ELF files: for a `#!` script (and a script's script), the
    ELF interpreter the kernel would end at, and the arguments it would get before the
    original ones (interpreter argument, script path), as fs/binfmt_script.c builds them."""
    args: list[str] = []
    top = path
    for hop in range(7):
        if hop == 6:  # six scripts deep: past the kernel's limit (fs/exec.c: depth > 5)
            raise _fail(EXIT_CANNOT_INVOKE, f"exec {top}: too many levels of symbolic links")
        # qemu only reads the file: the kernel's exec permission check is made here
        if os.path.isdir(path) or (os.path.exists(path) and not os.access(path, os.X_OK)):
            raise _fail(EXIT_CANNOT_INVOKE, f'exec "{path}": permission denied')
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD_SIZE)
        except OSError:
            break
        if not head.startswith(b"#!"):
            break
        try:
            interp, arg = parse_shebang(head)
        except ShebangError:
            break
        args = [*([arg] if arg else []), path, *args]
        path = interp
    return path, args


def _which(name: str, path: str) -> str | None:
    for d in path.split(":"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def _child_main(spec: RunSpec, errw: int, ptysock: socket.socket | None, tree_fd: int = -1) -> None:
    try:
        _container_init(spec, ptysock, errw, tree_fd)
        code, msg = EXIT_SETUP, "exec returned"
    except _Step as e:
        code, msg = e.code, str(e)
    except BaseException as e:  # a forked child must never unwind
        code, msg = EXIT_SETUP, f"internal error: {e!r}"
    with contextlib.suppress(OSError):
        os.write(errw, f"{code} {msg}".encode())
    os._exit(code)


def _keeper(
    spec: RunSpec,
    flags: int,
    parent: int,
    fds: dict[str, int],
    ptysock: socket.socket | None,
    treesock: socket.socket | None = None,
) -> None:
    """C1: in the new namespaces, forks PID 1 and reports its wait status."""
    code = EXIT_SETUP
    try:
        L.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(EXIT_SETUP)
        for sig in _FORWARDED:
            signal.signal(sig, signal.SIG_IGN)
        try:
            L.unshare(flags)
        except OSError as e:
            os.write(fds["status_w"], f"E{e.strerror}".encode())
            os._exit(EXIT_SETUP)
        os.write(fds["status_w"], b"U")
        if os.read(fds["go_r"], 1) != b"G":
            os._exit(EXIT_SETUP)
        tree_fd = -1
        if treesock is not None:  # --userns auto: the idmapped rootfs, made by the host side
            _msg, got, _flags, _addr = socket.recv_fds(treesock, 1, 1)
            treesock.close()
            if not got:
                os._exit(EXIT_SETUP)
            tree_fd = got[0]
        pid = os.fork()
        if pid == 0:
            os.close(fds["status_w"])
            _child_main(spec, fds["err_w"], ptysock, tree_fd)
        os.close(fds["err_w"])
        if ptysock is not None:
            ptysock.close()
        os.write(fds["status_w"], struct.pack("=i", pid))
        _, status = os.waitpid(pid, 0)
        os.write(fds["status_w"], struct.pack("=i", status))
        code = 0
    except BaseException:  # a forked child must never unwind
        code = EXIT_SETUP
    os._exit(code)


# -- the host side -----------------------------------------------------------------------


@dataclass
class _Forwarder:
    pid: int
    count: int = 0

    def __call__(self, sig: int, _frame: object) -> None:
        if sig in (signal.SIGINT, signal.SIGTERM):
            self.count += 1
        with contextlib.suppress(ProcessLookupError):
            # The second interrupt stops the container for good, as `docker stop`
            # does after its grace period: PID 1 ignores signals it has no handler for.
            os.kill(self.pid, signal.SIGKILL if self.count >= 2 else sig)


@contextlib.contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    ttymod.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _copy_winsize(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


def _relay(master: int, interactive: bool) -> None:
    """Copy stdin to the pty and the pty to stdout until the container closes it."""
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ)
    stdin_open = interactive
    if stdin_open:
        sel.register(0, selectors.EVENT_READ)
    with _raw_terminal(0) if interactive else contextlib.nullcontext():
        while True:
            for key, _ in sel.select():
                if key.fd == master:
                    try:
                        data = os.read(master, 65536)
                    except OSError:  # EIO: every slave fd is closed
                        data = b""
                    if not data:
                        return
                    os.write(1, data)
                else:
                    data = os.read(0, 65536)
                    if not data:
                        sel.unregister(0)
                        os.write(master, b"\x04")  # EOF to the line discipline
                        continue
                    os.write(master, data)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_exact(fd: int, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _send_idmapped_root(spec: RunSpec, keeper: int, sock: socket.socket) -> None:
    """--userns auto: the cached rootfs (owned by host ids 0-65535) as an idmapped
    mount for the container's user namespace, so container root owns it while being an
    unprivileged host uid. Detached: it never appears in the host's mount table."""
    ns = os.open(f"/proc/{keeper}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    try:
        tree = L.idmapped_tree(str(spec.rootfs), ns)
    except OSError as e:
        raise ContainerError(
            f"--userns auto: cannot make an idmapped mount of {spec.rootfs}: {e.strerror}",
            hint="needs Linux 5.12+ and a file system with idmapped mounts (ext4, xfs, btrfs)",
        ) from None
    finally:
        os.close(ns)
    try:
        socket.send_fds(sock, [b"t"], [tree])
    finally:
        os.close(tree)
        sock.close()


def run(spec: RunSpec) -> int:
    """Run the container; return its exit status (128+N when killed by signal N)."""
    if spec.seccomp_program is not None or spec.profile_program is not None:
        import kcompat.seccomp  # noqa: F401  (the child must not import after pivot_root)
    flags = L.CLONE_NEWUSER | L.CLONE_NEWNS | L.CLONE_NEWUTS | L.CLONE_NEWIPC | L.CLONE_NEWPID
    if spec.network == "none":
        flags |= L.CLONE_NEWNET
    idmap = id_map(spec.userns)
    tree_parent = tree_child = None
    auto_scratch = None
    try:
        if spec.userns == "auto":
            # Container root is an unprivileged host uid here: its tmpfs needs a mount
            # point that uid can reach (the cache may be below a 0700 home). An empty
            # directory in /tmp, owned by that uid, removed after the run.
            import tempfile
            from dataclasses import replace

            auto_scratch = tempfile.mkdtemp(prefix="kcompat-userns-", dir="/tmp")
            base, gbase = int(idmap.uid_lines.split()[1]), int(idmap.gid_lines.split()[1])
            os.chown(auto_scratch, base, gbase)
            spec = replace(spec, scratch=Path(auto_scratch))
            tree_parent, tree_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            spec.scratch.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LocalIOError(f"cannot create {spec.scratch}: {e.strerror}") from None
    try:
        return _run(spec, flags, idmap, tree_parent, tree_child)
    finally:
        if auto_scratch is not None:
            with contextlib.suppress(OSError):
                os.rmdir(auto_scratch)


def _run(
    spec: RunSpec,
    flags: int,
    idmap: IdMap,
    tree_parent: socket.socket | None,
    tree_child: socket.socket | None,
) -> int:
    cgroup = CgroupLimits.create(spec.limits)
    status_r, status_w = os.pipe()
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    sock_parent = sock_child = None
    if spec.tty:
        sock_parent, sock_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fds = {"status_w": status_w, "go_r": go_r, "err_w": err_w}
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    keeper = os.fork()
    if keeper == 0:
        os.close(status_r)
        os.close(go_w)
        os.close(err_r)
        if sock_parent is not None:
            sock_parent.close()
        if tree_parent is not None:
            tree_parent.close()
        _keeper(spec, flags, parent, fds, sock_child, tree_child)
    for fd in (status_w, go_r, err_w):
        os.close(fd)
    if sock_child is not None:
        sock_child.close()
    if tree_child is not None:
        tree_child.close()
    handlers: dict[int, Any] = {}
    reaped = False
    try:
        first = os.read(status_r, 256)
        if first[:1] != b"U":
            raise ContainerError(
                f"cannot create the container's namespaces: {first[1:].decode() or 'failed'}",
                hint="unprivileged user namespaces may be disabled "
                "(sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)",
            )
        _write_maps(keeper, idmap)
        cgroup.attach(keeper)
        os.write(go_w, b"G")
        if tree_parent is not None:
            _send_idmapped_root(spec, keeper, tree_parent)
        raw = _read_exact(status_r, 4)
        if len(raw) != 4:
            raise ContainerError("the container's init process could not be started")
        pid1 = struct.unpack("=i", raw)[0]
        forward = _Forwarder(pid1)
        for sig in _FORWARDED:
            handlers[sig] = signal.signal(sig, forward)
        master = -1
        if sock_parent is not None:
            _msg, got, _flags, _addr = socket.recv_fds(sock_parent, 1, 1)
            if got:
                master = got[0]
                _copy_winsize(0, master)
                handlers[signal.SIGWINCH] = signal.signal(
                    signal.SIGWINCH, lambda *_: _copy_winsize(0, master)
                )
        err = _read_all(err_r).decode(errors="replace")
        if master >= 0:
            if not err:
                _relay(master, spec.interactive)
            os.close(master)
        raw = _read_exact(status_r, 4)
        os.waitpid(keeper, 0)
        reaped = True
        if err:
            code_s, _, text = err.partition(" ")
            code = int(code_s) if code_s.isdigit() else EXIT_SETUP
            raise ContainerError(text, exit_code=code)
        if len(raw) != 4:
            return 128 + int(signal.SIGKILL)
        status = struct.unpack("=i", raw)[0]
        if os.WIFSIGNALED(status):
            return 128 + os.WTERMSIG(status)
        return os.WEXITSTATUS(status)
    finally:
        for signum, old in handlers.items():
            signal.signal(signum, old)
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(keeper, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(keeper, 0)
        for fd in (status_r, go_w, err_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        if sock_parent is not None:
            sock_parent.close()
        if tree_parent is not None:
            tree_parent.close()
        cgroup.remove()
