"""The processes inside a container: the keeper (C1) in the new namespaces, and PID 1
(C2), which builds the file systems (kcompat.mounts), sets up the pty, the loopback,
the credentials and the confinement, and execs the command; with --init (and always
under --kernel) kcompat's init stays PID 1, reaps and forwards signals.

Everything here runs after fork, before exec; after pivot_root only what is already
imported can run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct

from kcompat import linuxapi as L
from kcompat.formats import HEAD_SIZE, ShebangError, parse_shebang
from kcompat.mounts import (
    OLD_ROOT,
    StepFailed,
    bind,
    etc_copies,
    fail,
    mask_paths,
    mount_root,
    readonly_paths,
    register_binfmt,
    setup_dev,
    setup_sys,
    touch,
)
from kcompat.runspec import EXIT_CANNOT_INVOKE, EXIT_NOT_FOUND, EXIT_SETUP, RunSpec

_TIOCSCTTY = 0x540E
_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# The signals kcompat passes on to the container (the keeper ignores them).
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip


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
    """PID 1: build the root, then exec. Raises StepFailed on a failure to report."""
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
            private_binfmt = register_binfmt(spec.emulation, os.path.join(scratch, "binfmt"))
        step = "root file system"
        root = mount_root(spec, scratch, tree_fd)
        os.makedirs(root + OLD_ROOT, exist_ok=True)
        step = "pivot_root"
        os.chdir(root)
        L.pivot_root(".", "." + OLD_ROOT)
        os.chdir("/")
        step = "/proc"
        os.makedirs("/proc", exist_ok=True)
        L.mount("proc", "/proc", "proc", L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)
        step = "/dev"
        setup_dev()
        step = "/sys"
        setup_sys(spec.network == "none")
        if private_binfmt:  # the registrations live as long as the instance is mounted
            step = "binfmt_misc"
            L.mount("binfmt_misc", "/proc/sys/fs/binfmt_misc", "binfmt_misc",
                    L.MS_NOSUID | L.MS_NODEV | L.MS_NOEXEC)  # fmt: skip
        step = "/etc files"
        etc_copies(scratch, spec.hostname)
        step = "masked paths"
        mask_paths(spec.masked_paths)
        step = "read-only paths"
        readonly_paths(spec.readonly_paths)
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
                touch(vol.container)
            bind(host, vol.container, readonly=vol.readonly)
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
        raise fail(EXIT_SETUP, f"{step}: {e.strerror or e}{hint}") from None
    env = dict(spec.env)
    argv0 = spec.argv[0]
    qemu_args: list[str] = []
    if qemu_fd >= 0:
        path = argv0 if "/" in argv0 else _which(argv0, env.get("PATH", ""))
        if path is None:
            raise fail(EXIT_NOT_FOUND, f'exec: "{argv0}": executable file not found in $PATH')
        path, qemu_args = _script_hops(path)
    if spec.profile_program is not None and spec.no_new_privs:
        from kcompat.seccomp import install  # imported before fork by the caller

        try:  # before the init forks: PID 1 is filtered too, as docker-init under runc
            install(spec.profile_program)
        except OSError as e:
            raise fail(EXIT_SETUP, f"seccomp profile: {e.strerror or e}") from None
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
            raise fail(EXIT_NOT_FOUND, f'exec "{spec.argv[0]}": no such file or directory'
                        " (the file, or its ELF interpreter, is missing)") from None  # fmt: skip
        raise fail(
            EXIT_NOT_FOUND, f'exec: "{spec.argv[0]}": executable file not found in $PATH'
        ) from None
    except OSError as e:
        code = EXIT_CANNOT_INVOKE
        raise fail(code, f'exec "{spec.argv[0]}": {e.strerror}') from None


_INIT_FORWARDED = (*FORWARDED, signal.SIGWINCH, signal.SIGCONT, signal.SIGTSTP)


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
            raise fail(EXIT_CANNOT_INVOKE, f"exec {top}: too many levels of symbolic links")
        # qemu only reads the file: the kernel's exec permission check is made here
        if os.path.isdir(path) or (os.path.exists(path) and not os.access(path, os.X_OK)):
            raise fail(EXIT_CANNOT_INVOKE, f'exec "{path}": permission denied')
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
    except StepFailed as e:
        code, msg = e.code, str(e)
    except BaseException as e:  # a forked child must never unwind
        code, msg = EXIT_SETUP, f"internal error: {e!r}"
    with contextlib.suppress(OSError):
        os.write(errw, f"{code} {msg}".encode())
    os._exit(code)


def keeper_main(
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
        for sig in FORWARDED:
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
