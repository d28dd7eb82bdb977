"""What one container run is: the root, the command, its ids, mounts, limits and
confinement (`RunSpec`, made by kcompat.run, run by kcompat.container), and the exit
statuses, with docker's meanings, of a run that fails after the container was created."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from kcompat import linuxapi as L
from kcompat.cgroups import Limits
from kcompat.errors import ExitCode

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
