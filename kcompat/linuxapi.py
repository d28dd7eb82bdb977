"""The Linux system calls a container needs and Python's os module lacks, via ctypes.

Why ctypes and not util-linux's unshare(1)/nsenter(1): the order of the steps is the
whole point of a container start (namespaces, then the uid map written from outside,
then mounts, pivot_root, capabilities, no_new_privs, credentials, exec) and several of
them must happen in the process that finally execs the command, after the parent has
done its part. unshare(1) would fix that order for us and add a second program start
per run; calling the kernel directly keeps one fork chain whose every step we check.
Everything here raises OSError with the real errno, like the os module does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import re
import struct

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# statvfs f_flag bits (ST_*) and the MS_* flag each one has to be kept as on a remount
# inside a user namespace (the kernel refuses to drop a "locked" flag: mount(2) EPERM).
_ST_TO_MS = {
    1: MS_RDONLY,
    2: MS_NOSUID,
    4: MS_NODEV,
    8: MS_NOEXEC,
    1024: MS_NOATIME,
    2048: MS_NODIRATIME,
    4096: MS_RELATIME,
}

# Docker's default capability set (moby oci/caps/defaults.go), by number
# (include/uapi/linux/capability.h).
CAP_NUMBERS = {
    "CHOWN": 0,
    "DAC_OVERRIDE": 1,
    "FOWNER": 3,
    "FSETID": 4,
    "KILL": 5,
    "SETGID": 6,
    "SETUID": 7,
    "SETPCAP": 8,
    "NET_BIND_SERVICE": 10,
    "NET_RAW": 13,
    "SYS_CHROOT": 18,
    "MKNOD": 27,
    "AUDIT_WRITE": 29,
    "SETFCAP": 31,
}
DOCKER_DEFAULT_CAPS = frozenset(CAP_NUMBERS.values())
# Every capability (include/uapi/linux/capability.h), for --cap-add/--cap-drop.
ALL_CAPS = {
    **CAP_NUMBERS, "DAC_READ_SEARCH": 2, "LINUX_IMMUTABLE": 9, "NET_BROADCAST": 11,
    "NET_ADMIN": 12, "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17,
    "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23,
    "SYS_RESOURCE": 24, "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "LEASE": 28,
    "AUDIT_CONTROL": 30, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34,
    "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39,
    "CHECKPOINT_RESTORE": 40,
}  # fmt: skip
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4

# pivot_root has no glibc wrapper; its number per machine (arch/*/syscall tables).
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "i686": 217, "armv7l": 218, "s390x": 217,
               "ppc64le": 203, "riscv64": 41, "loongarch64": 41}  # fmt: skip
_CAPGET = {"x86_64": 125, "aarch64": 90, "i686": 184, "armv7l": 184, "s390x": 184,
           "ppc64le": 183, "riscv64": 90, "loongarch64": 90}  # fmt: skip
_CAPSET = {k: v + 1 for k, v in _CAPGET.items()}


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:  # fmt: skip
    ret = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def kept_flags(path: str) -> int:
    """The MS_* flags a remount of `path` must keep (statvfs tells what is set)."""
    f_flag = os.statvfs(path).f_flag
    out = 0
    for st, ms in _ST_TO_MS.items():
        if f_flag & st:
            out |= ms
    return out


def remount_readonly(path: str) -> None:
    mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept_flags(path))


def _machine() -> str:
    return os.uname().machine


def pivot_root(new_root: str, put_old: str) -> None:
    nr = _PIVOT_ROOT.get(_machine())
    if nr is None:
        raise OSError(38, f"pivot_root: unknown on {_machine()}")
    _check(_libc.syscall(nr, _b(new_root), _b(put_old)), "pivot_root")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> None:
    _check(_libc.prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


# Syscalls added after 5.0 have one number on every architecture (424 and up).
_CLOSE_RANGE = 436  # Linux 5.9; CLOSE_RANGE_CLOEXEC since 5.11
_MOUNT_SETATTR = 442  # Linux 5.12
CLOSE_RANGE_CLOEXEC = 4
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY = 0x1
_AT_FDCWD = -100


def mount_setattr_readonly(path: str, recursive: bool = True) -> None:
    """Make the mount at `path` (and, with `recursive`, every mount below it) read-only
    with mount_setattr(2), as docker 25+ does for read-only binds. OSError(ENOSYS) on a
    kernel before 5.12."""
    attr = struct.pack("=QQQQ", MOUNT_ATTR_RDONLY, 0, 0, 0)  # struct mount_attr
    buf = ctypes.create_string_buffer(attr, len(attr))
    flags = AT_RECURSIVE if recursive else 0
    ret = _libc.syscall(_MOUNT_SETATTR, _AT_FDCWD, _b(path), flags, buf, len(attr))
    _check(ret, f"mount_setattr {path}")


def submounts(path: str) -> list[str]:
    """The mount points at and below `path` (from /proc/self/mountinfo), outermost first."""
    out = []
    prefix = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == path or point.startswith(prefix):
                out.append(point)
    return sorted(set(out), key=len)


def readonly_recursive(path: str) -> None:
    """`path` and every mount below it read-only: mount_setattr(AT_RECURSIVE) where the
    kernel has it, else a read-only remount of each submount."""
    try:
        mount_setattr_readonly(path, recursive=True)
        return
    except OSError as e:
        if e.errno not in (38, 22):  # ENOSYS, EINVAL: an older kernel
            raise
    for point in submounts(path):
        with contextlib.suppress(FileNotFoundError):  # gone meanwhile; EPERM is an error
            remount_readonly(point)


_OPEN_TREE = 428  # Linux 5.2
_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_IDMAP = 0x00100000  # Linux 5.12
MOVE_MOUNT_F_EMPTY_PATH = 0x4


def idmapped_tree(path: str, userns_fd: int) -> int:
    """A detached recursive copy of the mount tree at `path` whose files appear with the
    ids of user namespace `userns_fd` (an idmapped mount, Linux 5.12+): a file owned by
    uid N on disk is owned by N inside that namespace. Returns the mount's fd."""
    fd = _libc.syscall(_OPEN_TREE, _AT_FDCWD, _b(path),
                       OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE)  # fmt: skip
    _check(fd, f"open_tree {path}")
    attr = struct.pack("=QQQQ", MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    buf = ctypes.create_string_buffer(attr, len(attr))
    ret = _libc.syscall(_MOUNT_SETATTR, fd, b"", AT_EMPTY_PATH | AT_RECURSIVE, buf, len(attr))
    if ret < 0:
        err = ctypes.get_errno()
        os.close(fd)
        raise OSError(err, f"idmapped mount of {path}: {os.strerror(err)}")
    return int(fd)


def attach(tree_fd: int, target: str) -> None:
    """Attach a detached mount (idmapped_tree) at `target` in this mount namespace."""
    ret = _libc.syscall(_MOVE_MOUNT, tree_fd, b"", _AT_FDCWD, _b(target),
                        MOVE_MOUNT_F_EMPTY_PATH)  # fmt: skip
    _check(ret, f"move_mount onto {target}")


def cloexec_from(low: int) -> None:
    """Mark every file descriptor >= `low` close-on-exec (close_range(2) with
    CLOSE_RANGE_CLOEXEC, or each one listed in /proc/self/fd)."""
    if _libc.syscall(_CLOSE_RANGE, ctypes.c_uint(low), ctypes.c_uint(0xFFFFFFFF),
                     ctypes.c_uint(CLOSE_RANGE_CLOEXEC)) == 0:  # fmt: skip
        return
    import fcntl

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd >= low:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)


def set_no_new_privs() -> None:
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


def limit_capabilities(keep: frozenset[int]) -> None:
    """Drop every capability outside `keep` from the bounding set, clear the ambient
    set, and make `keep` the permitted and effective sets."""
    for cap in range(last_cap() + 1):
        if cap not in keep:
            prctl(PR_CAPBSET_DROP, cap)
    # Ambient capabilities exist since 4.3; EINVAL before that is harmless.
    with contextlib.suppress(OSError):
        prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    low = sum(1 << c for c in keep if c < 32)
    high = sum(1 << (c - 32) for c in keep if c >= 32)
    header = struct.pack("Ii", _LINUX_CAPABILITY_VERSION_3, 0)
    # Per 32-bit word: effective, permitted, inheritable. Inheritable stays empty, as in
    # Docker since 20.10.14 (CVE-2022-24769).
    data = struct.pack("6I", low, low, 0, high, high, 0)
    nr = _CAPSET.get(_machine())
    if nr is None:
        raise OSError(38, f"capset: unknown on {_machine()}")
    hbuf = ctypes.create_string_buffer(header, len(header))
    dbuf = ctypes.create_string_buffer(data, len(data))
    _check(_libc.syscall(nr, hbuf, dbuf), "capset")


def capabilities(pid: int | str = "self") -> dict[str, int]:
    """CapInh/CapPrm/CapEff/CapBnd/CapAmb of a process, from /proc (for checks)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cap"):
                k, v = line.split(":", 1)
                out[k] = int(v.strip(), 16)
    return out
