"""`kcompat run`'s docker-style options, and those validated before anything is pulled.

`RunOptions` is what the command line gave; `validate` judges every option that needs
no image (volumes, limits, environment lines, tmpfs mounts, capabilities, seccomp and
no-new-privileges, network, user and namespace words) into `Checked`, so that a bad one
fails before any download or unpack.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kcompat import linuxapi as L
from kcompat.cgroups import Limits, parse_cpus, parse_memory, parse_pids
from kcompat.errors import NotFoundError, UsageError
from kcompat.runspec import Volume


@dataclass(frozen=True)
class RunOptions:
    command: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    env_files: tuple[Path, ...] = ()
    workdir: str | None = None
    user: str | None = None
    volumes: tuple[str, ...] = ()
    entrypoint: str | None = None
    hostname: str | None = None
    network: str = "host"
    interactive: bool = False
    tty: bool = False
    read_only: bool = False
    keep: bool = False
    force: bool = False
    memory: str | None = None
    cpus: str | None = None
    pids_limit: int | None = None
    rootfs_mode: str = "auto"
    kernel: str | None = None  # simulate this older kernel (kcompat.seccomp, qemu-user -r)
    seccomp_eperm: bool = False
    predict: bool = True  # judge the image for this host first
    init: bool = False  # kcompat's init as PID 1 (always under --kernel)
    tmpfs: tuple[str, ...] = ()  # PATH[:OPTIONS]
    security_opts: tuple[str, ...] = ()  # seccomp=unconfined|FILE, no-new-privileges[=B]
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    privileged: bool = False
    userns: str = "host"  # host | auto (root: container root is an unprivileged host uid)


def read_env_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFoundError(
            f"--env-file {path}: no such file", hint="give an existing file"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(
            f"--env-file {path}: {getattr(e, 'strerror', None) or 'not text'}"
        ) from None
    return [
        line.rstrip("\n")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def parse_volume(text: str) -> Volume:
    parts = text.split(":")
    mode = "rw"
    if len(parts) == 3:
        host, ctr, mode = parts
    elif len(parts) == 2:
        host, ctr = parts
    else:
        raise UsageError(f"-v {text!r}: not HOST:CONTAINER[:ro]", hint="e.g. -v /data:/data:ro")
    if mode not in ("ro", "rw"):
        raise UsageError(f"-v {text!r}: mode {mode!r} is not ro or rw")
    if not host.startswith(("/", ".")):
        raise UsageError(
            f"-v {text!r}: named volumes are not supported",
            hint="give an absolute host path",
        )
    if not ctr.startswith("/") or ".." in ctr.split("/"):
        raise UsageError(f"-v {text!r}: the container path must be absolute, without '..'")
    real = os.path.realpath(host)
    if not os.path.exists(real):
        raise NotFoundError(f"-v {text!r}: the host path {host} does not exist")
    return Volume(real, os.path.normpath(ctr), mode == "ro")


@dataclass(frozen=True)
class Checked:
    """The run options that need no image, validated before anything is pulled."""

    volumes: tuple[Volume, ...]
    limits: Limits
    env_lines: tuple[str, ...]
    tmpfs: tuple[tuple[str, int, str], ...] = ()
    capabilities: frozenset[int] = frozenset()
    seccomp: str = "default"  # default | unconfined | a profile file's path
    no_new_privs: bool = True


_TMPFS_DEFAULT = "rw,noexec,nosuid,size=65536k"  # docker's --tmpfs default options


_TMPFS_FLAGS = {  # mount(8) words -> (MS_* flag, set or clear)
    "ro": (L.MS_RDONLY, True), "rw": (L.MS_RDONLY, False),
    "nosuid": (L.MS_NOSUID, True), "suid": (L.MS_NOSUID, False),
    "nodev": (L.MS_NODEV, True), "dev": (L.MS_NODEV, False),
    "noexec": (L.MS_NOEXEC, True), "exec": (L.MS_NOEXEC, False),
}  # fmt: skip


def _tmpfs(text: str) -> tuple[str, int, str]:
    """--tmpfs PATH[:OPTS] as docker takes it: flags (ro, noexec, nosuid, nodev and
    their opposites; nosuid and nodev unless undone) and tmpfs options."""
    path, _, opts = text.partition(":")
    if not path.startswith("/") or ".." in path.split("/"):
        raise UsageError(f"--tmpfs {text!r}: the path must be absolute, without '..'",
                         hint="e.g. --tmpfs /run:size=64m")  # fmt: skip
    words = [w for w in (opts or _TMPFS_DEFAULT).split(",") if w]
    flags = L.MS_NOSUID | L.MS_NODEV
    data = []
    for w in words:
        if w in _TMPFS_FLAGS:
            bit, on = _TMPFS_FLAGS[w]
            flags = flags | bit if on else flags & ~bit
            continue
        key = w.partition("=")[0]
        if key not in ("size", "mode", "nr_inodes", "uid", "gid"):
            raise UsageError(f"--tmpfs {text!r}: option {w!r} is not a tmpfs option")
        data.append(w)
    return os.path.normpath(path), flags, ",".join(data)


def _capabilities(opts: RunOptions) -> frozenset[int]:
    from kcompat.linuxapi import ALL_CAPS, DOCKER_DEFAULT_CAPS

    def num(name: str, flag: str) -> int | None:
        key = name.upper().removeprefix("CAP_")
        if key == "ALL":
            return None
        if key not in ALL_CAPS:
            raise UsageError(f"{flag} {name!r} is not a capability", hint="e.g. NET_ADMIN")
        return ALL_CAPS[key]

    caps = set(ALL_CAPS.values()) if opts.privileged else set(DOCKER_DEFAULT_CAPS)
    for name in opts.cap_add:
        n = num(name, "--cap-add")
        caps |= set(ALL_CAPS.values()) if n is None else {n}
    for name in opts.cap_drop:
        n = num(name, "--cap-drop")
        caps -= set(ALL_CAPS.values()) if n is None else {n}
    return frozenset(caps)


def _security(opts: RunOptions) -> tuple[str, bool]:
    seccomp, nnp = ("unconfined" if opts.privileged else "default"), True
    for opt in opts.security_opts:
        key, sep, value = opt.replace(":", "=", 1).partition("=")
        if key == "seccomp" and sep and value:
            if value != "unconfined" and not Path(value).is_file():
                raise NotFoundError(
                    f"--security-opt {opt}: no such file",
                    hint="give a seccomp profile in docker's JSON format",
                )
            seccomp = value
        elif key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise UsageError(f"--security-opt {opt}: give true or false")
            nnp = value != "false"
        else:
            raise UsageError(
                f"--security-opt {opt!r} is not supported",
                hint="seccomp=unconfined|PROFILE.json, no-new-privileges[=false]",
            )
    return seccomp, nnp


def validate(opts: RunOptions) -> Checked:
    """Every option that can be judged without the image: a bad one fails before any
    download or unpack."""
    if opts.network not in ("host", "none"):
        raise UsageError(
            f"--network {opts.network!r} is not supported", hint="use --network host or none"
        )
    if opts.hostname is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}",
                                                      opts.hostname):  # fmt: skip
        raise UsageError(f"--hostname {opts.hostname!r} is not a valid host name")
    if opts.workdir is not None and not opts.workdir.startswith("/"):
        raise UsageError(f"--workdir {opts.workdir!r} is not an absolute path")
    if opts.rootfs_mode not in ("auto", "overlay", "copy"):
        raise UsageError(f"--rootfs-mode {opts.rootfs_mode!r} is not auto, overlay or copy")
    if opts.seccomp_eperm and not opts.kernel:
        raise UsageError("--seccomp-eperm needs --kernel")
    if opts.kernel:
        from kcompat.target import parse_release

        parse_release(opts.kernel)
    if opts.user is not None and not re.fullmatch(r"[^:\s]+(:[^:\s]+)?", opts.user):
        raise UsageError(f"-u {opts.user!r} is not UID[:GID] or NAME[:GROUP]")
    env_lines = tuple(line for f in opts.env_files for line in read_env_file(f)) + opts.env
    for item in env_lines:
        k = item.partition("=")[0]
        if not k or any(c.isspace() for c in k):
            raise UsageError(f"-e {item!r}: not VAR=value or VAR", hint="e.g. -e LANG=C.UTF-8")
    volumes = tuple(parse_volume(v) for v in opts.volumes)
    limits = Limits(
        memory=parse_memory(opts.memory) if opts.memory else None,
        cpus=parse_cpus(opts.cpus) if opts.cpus else None,
        pids=parse_pids(opts.pids_limit),
    )
    if opts.userns not in ("host", "auto"):
        raise UsageError(f"--userns {opts.userns!r} is not host or auto")
    if opts.userns == "auto" and opts.keep:
        raise UsageError(
            "--keep and --userns auto cannot be combined: the kept layer lives in the "
            "cache, which the container's unprivileged root cannot reach",
            hint="drop --keep, or run with --userns host",
        )
    if opts.userns == "auto" and os.geteuid() != 0:
        raise UsageError(
            "--userns auto is for root: run by another user, container root already is "
            "that user (and its /etc/subuid range)"
        )
    seccomp, nnp = _security(opts)
    tmpfs = tuple(_tmpfs(t) for t in opts.tmpfs)
    return Checked(volumes, limits, env_lines, tmpfs, _capabilities(opts), seccomp, nnp)
