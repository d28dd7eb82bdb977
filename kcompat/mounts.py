"""The container's file systems, built by its PID 1 (kcompat.pid1) in its own mount
namespace: the root (overlayfs over the cached rootfs, or a copy), /dev, /sys, docker's
masked and read-only paths, copies of /etc files, the private binfmt_misc for emulation.

Everything here runs in a forked child, after fork and before exec: a failure is a
`StepFailed` with the exit status to report, never an exception that unwinds.
"""

from __future__ import annotations

import glob as globmod
import os
import stat
from pathlib import Path

from kcompat import linuxapi as L
from kcompat.runspec import EXIT_SETUP, Emulation, RunSpec

OLD_ROOT = "/.kcompat-oldroot"


class StepFailed(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def fail(code: int, message: str) -> StepFailed:
    return StepFailed(code, message)


def touch(path: str) -> None:
    if os.path.islink(path):
        os.unlink(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))


def bind(source: str, target: str, readonly: bool = False, rec: bool = True) -> None:
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


def mount_root(spec: RunSpec, scratch: str, tree_fd: int = -1) -> str:
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
        raise fail(EXIT_SETUP, f"overlayfs over {spec.rootfs} failed: {errors[-1]}")
    _copy_tree(str(spec.rootfs), root)
    bind(root, root)
    return root


def _with_rootfs(spec: RunSpec, rootfs: str) -> RunSpec:
    from dataclasses import replace

    return replace(spec, rootfs=Path(rootfs))


def setup_dev() -> None:
    os.makedirs("/dev", exist_ok=True)
    L.mount("tmpfs", "/dev", "tmpfs", L.MS_NOSUID | L.MS_STRICTATIME, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        touch(f"/dev/{name}")
        bind(f"{OLD_ROOT}/dev/{name}", f"/dev/{name}", rec=False)
    os.mkdir("/dev/pts")
    L.mount("devpts", "/dev/pts", "devpts", L.MS_NOSUID | L.MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620")  # fmt: skip
    os.symlink("pts/ptmx", "/dev/ptmx")
    os.mkdir("/dev/shm")
    L.mount("shm", "/dev/shm", "tmpfs", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC, "mode=1777")
    os.symlink("/proc/self/fd", "/dev/fd")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")


def setup_sys(new_net: bool) -> None:
    """/sys read-only, cgroupfs included: a fresh sysfs (only the owner of a network
    namespace may mount one), else the host's, bound read-only with every submount."""
    os.makedirs("/sys", exist_ok=True)
    flags = L.MS_RDONLY | L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC
    if new_net:
        L.mount("sysfs", "/sys", "sysfs", flags)
        return
    bind(f"{OLD_ROOT}/sys", "/sys", readonly=True)


def mask_paths(paths: tuple[str, ...]) -> None:
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


def readonly_paths(paths: tuple[str, ...]) -> None:
    """docker's read-only paths: bound on themselves, read-only with their submounts."""
    for path in paths:
        if os.path.lexists(path):
            bind(path, path, readonly=True)


def etc_copies(scratch: str, hostname: str) -> None:
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
        touch(f"/etc/{name}")
        bind(copy, f"/etc/{name}", rec=False)
    touch("/etc/hostname")
    bind(os.path.join(scratch, "hostname"), "/etc/hostname", rec=False)


def register_binfmt(emu: Emulation, mnt: str) -> bool:
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
        raise fail(
            EXIT_SETUP,
            f"cannot mount a private binfmt_misc for {emu.arch} ({e.strerror}; needs Linux 6.7+)",
        ) from None
    assert emu.register_line is not None
    try:
        with open(f"{mnt}/register", "w") as f:
            f.write(emu.register_line)
    except OSError as e:
        raise fail(EXIT_SETUP, f"registering {emu.interpreter} failed: {e.strerror}") from None
    return True  # stays mounted until /proc/sys/fs/binfmt_misc holds the instance
