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

This module is the host side; what a run is, is kcompat.runspec; the keeper and PID 1
are kcompat.pid1, the file systems PID 1 builds kcompat.mounts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import selectors
import signal
import socket
import struct
import sys
import termios
import tty as ttymod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kcompat import linuxapi as L
from kcompat.cgroups import CgroupLimits
from kcompat.errors import ContainerError, LocalIOError
from kcompat.pid1 import FORWARDED, keeper_main
from kcompat.runspec import EXIT_SETUP, Emulation, RunSpec, Volume

__all__ = ["AUTO_BASE", "Emulation", "IdMap", "RunSpec", "Volume", "auto_base", "id_map", "run"]


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


# -- the run: the keeper forked, its ids mapped, signals and the pty relayed ---------


@dataclass
class _Forwarder:
    """Installed before the container may start: a signal that comes before the keeper
    has said which process is PID 1 waits for it, and is delivered then (else a SIGTERM
    sent once the container had printed something could find no handler yet)."""

    pid: int = 0  # PID 1's, once known
    count: int = 0
    pending: list[int] = field(default_factory=list)

    def __call__(self, sig: int, _frame: object) -> None:
        if sig in (signal.SIGINT, signal.SIGTERM):
            self.count += 1
        if not self.pid:
            if self.count >= 2:  # a second interrupt while PID 1 is not known: give up
                raise KeyboardInterrupt
            self.pending.append(sig)
            return
        self._send(sig)

    def _send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            # The second interrupt stops the container for good, as `docker stop`
            # does after its grace period: PID 1 ignores signals it has no handler for.
            os.kill(self.pid, signal.SIGKILL if self.count >= 2 else sig)

    def attach(self, pid: int) -> None:
        self.pid = pid
        waiting, self.pending = self.pending, []
        for sig in waiting:
            self._send(sig)


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
        keeper_main(spec, flags, parent, fds, sock_child, tree_child)
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
        forward = _Forwarder()
        for sig in FORWARDED:  # before the container may run (and print, and be signalled)
            handlers[sig] = signal.signal(sig, forward)
        os.write(go_w, b"G")
        if tree_parent is not None:
            _send_idmapped_root(spec, keeper, tree_parent)
        raw = _read_exact(status_r, 4)
        if len(raw) != 4:
            raise ContainerError("the container's init process could not be started")
        forward.attach(struct.unpack("=i", raw)[0])
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
