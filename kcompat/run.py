"""`kcompat run`: from docker-style options and an image to a checked RunSpec.

The options are validated first (kcompat.runoptions). The image is pulled and flattened
(cached per chain of layers), judged for this host by the same rules as `check` (an
`incompatible` verdict stops the run unless forced), and the container's argv,
environment, user, workdir, volumes and emulation are resolved the way docker resolves
them.
"""

from __future__ import annotations

import errno
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcompat.binfmt import BINFMT, private_binfmt_possible, probe_binfmt
from kcompat.confine import DEFAULTS
from kcompat.container import Emulation, RunSpec
from kcompat.errors import (
    ContainerError,
    IncompatibleError,
    UnsupportedError,
    UsageError,
)
from kcompat.execve import Command, container_argv
from kcompat.image import DEFAULT_PATH, ImageConfig
from kcompat.pull import OpenImage, pull, unpack
from kcompat.runoptions import Checked, RunOptions, read_env_file, validate
from kcompat.store import BlobStore
from kcompat.target import Target, probe_host
from kcompat.users import UnknownUser, resolve_user
from kcompat.versions import version_key

if TYPE_CHECKING:
    from kcompat.seccomp import Simulation


@dataclass(frozen=True)
class Prediction:
    """`check`'s report for this host (the same pipeline, cache and JSON)."""

    verdict: str
    findings: tuple[dict[str, Any], ...]
    arch: str | None = None  # of the ELF file the entrypoint finally runs
    report: dict[str, Any] | None = None

    @classmethod
    def of(cls, rep: dict[str, Any]) -> Prediction:
        return cls(rep["verdict"], tuple(rep["findings"]), rep["entrypoint"]["arch"], rep)


@dataclass(frozen=True)
class Prepared:
    spec: RunSpec
    prediction: Prediction
    notes: tuple[str, ...] = field(default_factory=tuple)


# -- argv, env, user, volumes --------------------------------------------------------


def _text(rootfs: Path, name: str) -> str | None:
    try:
        return (rootfs / "etc" / name).read_text(errors="replace")
    except OSError:
        return None


def container_env(
    config: ImageConfig, opts: RunOptions, home: str, hostname: str
) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for item in config.env:
        k, sep, v = item.partition("=")
        if sep:
            env[k] = v
    extra = [line for f in opts.env_files for line in read_env_file(f)] + list(opts.env)
    for item in extra:
        k, sep, v = item.partition("=")
        if not k or any(c.isspace() for c in k):
            raise UsageError(f"-e {item!r}: not VAR=value or VAR", hint="e.g. -e LANG=C.UTF-8")
        if sep:
            env[k] = v
        elif k in os.environ:  # docker: -e VAR passes the caller's value, if any
            env[k] = os.environ[k]
    env.setdefault("HOME", home)
    if opts.tty:
        env.setdefault("TERM", "xterm")
    return tuple(env.items())


# -- prediction and emulation ----------------------------------------------------------


def choose_emulation(arch: str, target: Target) -> Emulation | None:
    """None when the host runs `arch` itself; otherwise the private binfmt_misc (Linux
    6.7+), or an enabled host entry with flag F and a static interpreter; else an error
    that says how to get one."""
    if arch == target.platform.architecture or arch in target.compat_arches:
        return None
    spec = BINFMT.get(arch)
    if spec is None:
        raise UnsupportedError(f"kcompat has no qemu-user binfmt entry for {arch}")
    host_entry = next(
        (e.name for e in target.binfmt if e.arch == arch and e.usable_in_container()), None
    )
    interpreter = target.qemu.get(arch)
    private = private_binfmt_possible(target.kernel, target.userns)
    if interpreter and private:
        return Emulation(arch, interpreter, spec.register_line(interpreter), host_entry)
    if host_entry:
        entry = next(e for e in target.binfmt if e.name == host_entry)
        return Emulation(arch, entry.interpreter, None, host_entry)
    if not interpreter:
        raise UnsupportedError(
            f"the image is {arch} and no static qemu-user for it was found "
            f"(qemu-{spec.qemu}-static)",
            hint="install Debian's package qemu-user-static: apt-get install -y qemu-user-static",
        )
    raise UnsupportedError(
        f"the image is {arch}; Linux {target.kernel} has no private binfmt_misc (needs "
        f"6.7+) and the host has no usable qemu-{spec.qemu} entry",
        hint=f"as root: kcompat binfmt install {arch} (registers {interpreter} with flag F)",
    )


def host_target(profile: Path | None) -> Target:
    """A saved profile when given (it must be of this kernel), else a quick probe."""
    if profile is not None:
        from kcompat.target import load_profile, probe_kernel

        target = load_profile(profile)
        if target.kernel != probe_kernel():
            raise UsageError(
                f"--profile {profile} describes kernel {target.kernel}, not this host's",
                hint="save a new one with: kcompat host --save FILE",
            )
        # binfmt registrations change; read them now
        return _with_binfmt(target)
    return probe_host(syscalls=False, runtimes=False)


def _with_binfmt(target: Target) -> Target:
    from dataclasses import replace

    return replace(target, binfmt=probe_binfmt())


def host_simulation(host: Target, kernel: str, eperm: bool, abi: str) -> Simulation:
    """What `run --kernel` refuses on this host; only an older kernel can be simulated."""
    from kcompat.seccomp import simulation
    from kcompat.target import parse_release

    k = parse_release(kernel)[0]
    if host.kernel and version_key(k) > version_key(host.kernel):
        raise UsageError(
            f"--kernel {kernel} is newer than this host's {host.kernel}",
            hint="only older kernels can be simulated",
        )
    return simulation(abi, k, eperm)


def simulated_target(host: Target, sim: Simulation) -> Target:
    """This host as it behaves under `sim`: the kernel's release, and the syscalls the
    tables date after it answered ENOSYS (or EPERM)."""
    from dataclasses import replace

    eperm = sim.errno == errno.EPERM
    return replace(
        host,
        source="simulated",
        # EPERM reproduces an old runtime's seccomp profile on this kernel: its release
        kernel=host.kernel if eperm else sim.kernel,
        absent_syscalls=() if eperm else sim.names,
        blocked_syscalls=sim.names if eperm else (),
        notes=(f"simulated Linux {sim.kernel} on this host: {len(sim.names)} syscalls newer "
               f"than it answered {'EPERM' if eperm else 'ENOSYS'} by seccomp",),
    )  # fmt: skip



def _profile_program(checked: Checked, target: Target) -> bytes | None:
    """The seccomp program of the container (None: unconfined). It filters the host's
    syscalls, which under emulation are qemu-user's."""
    if checked.seccomp == "unconfined":
        return None
    from kcompat.confine import assemble, default_profile, load_profile_file
    from kcompat.linuxapi import ALL_CAPS
    from kcompat.syscalls import ABI_OF_ARCH

    abi = ABI_OF_ARCH.get(target.platform.architecture)
    if abi is None:
        raise UnsupportedError(
            f"no seccomp profile for {target.platform.architecture}",
            hint="--security-opt seccomp=unconfined runs without one",
        )
    names = frozenset(k for k, v in ALL_CAPS.items() if v in checked.capabilities)
    host_kernel = target.kernel
    profile = (
        default_profile(names, abi, host_kernel)
        if checked.seccomp == "default"
        else load_profile_file(Path(checked.seccomp), names, abi, host_kernel)
    )
    return assemble(profile, abi)


def command_of(opened: OpenImage, opts: RunOptions, checked: Checked) -> Command:
    """What `run` runs, in docker's meaning, with the container's PATH as runc looks it up;
    a usage error when the image gives nothing to run."""
    config = opened.image.config
    path_override = None
    for line in checked.env_lines:
        k, sep, v = line.partition("=")
        if k == "PATH":
            path_override = v if sep else os.environ.get("PATH", path_override)
    if not container_argv(config.entrypoint, config.cmd, opts.command, opts.entrypoint):
        raise UsageError(
            "no command: the image has no Entrypoint or Cmd (docker: No command specified)",
            hint="give one after the image: kcompat run IMAGE -- CMD",
        )
    return Command(opts.command, opts.entrypoint, opts.user, opts.workdir, path_override,
                   tuple(v.container for v in checked.volumes))  # fmt: skip


def first_judgement(
    opened: OpenImage,
    opts: RunOptions,
    target: Target,
    command: Command,
    chosen_because: str | None = None,
) -> tuple[dict[str, Any] | None, str]:
    """`check`'s report for this host (None with --no-predict, unless the image's arch
    or OS must be known) and the arch its entrypoint runs as; an image of another OS is
    refused here, whatever --force says."""
    from kcompat.check import run_check

    config = opened.image.config
    report = None
    if opts.predict or config.platform.architecture not in BINFMT or config.foreign_os:
        report = run_check(opened, target, command, chosen_because)
    arch = (report and report["entrypoint"]["arch"]) or config.platform.architecture
    if config.foreign_os and report is not None:
        refuse(opened.image.reference, Prediction.of(report))
    return report, str(arch)


def refuse(reference: str, prediction: Prediction) -> None:
    """Stop before starting: the runtime's own failure (docker's exit status and runc's
    words) for a command that cannot be exec'd, else exit 10 with the finding."""
    fatal = next((f for f in prediction.findings if f["severity"] == "fatal"), None)
    if fatal is None:
        return
    code = fatal.get("exit_code")
    if code in (1, 125, 126, 127) and fatal["rule"] != "os":
        raise ContainerError(f"{reference}: {fatal['title']}: {fatal['explanation']}",
                             hint=fatal.get("fix"), exit_code=code)  # fmt: skip
    why = f"{fatal['title']}: {fatal['explanation']}"
    fix = fatal.get("fix")
    raise IncompatibleError(
        f"{reference} will not run on this host: {why}",
        hint=(f"{fix}; " if fix else "") + ("--force runs it anyway" if fatal["rule"] != "os"
                                            else "--force cannot help: the kernel differs"),
    )  # fmt: skip


def prepare(
    opened: OpenImage,
    opts: RunOptions,
    store: BlobStore,
    target: Target,
    chosen_because: str | None = None,
    checked: Checked | None = None,
) -> Prepared:
    """Judge the image for this host with `check`'s pipeline (its cached analysis, not
    the rootfs), then pull and flatten it only to run it."""
    from kcompat.check import run_check

    checked = checked or validate(opts)
    config = opened.image.config
    command = command_of(opened, opts, checked)
    argv = container_argv(config.entrypoint, config.cmd, opts.command, opts.entrypoint)
    host_report, arch = first_judgement(opened, opts, target, command, chosen_because)
    if arch not in BINFMT:
        arch = target.platform.architecture
    emulation = choose_emulation(arch, target)
    judged = target
    sim = None
    if opts.kernel:
        from kcompat.syscalls import ABI_OF_ARCH

        # Under emulation the filter sees qemu's host calls, so the host's ABI is simulated.
        sim_abi = ABI_OF_ARCH.get(target.platform.architecture if emulation else arch)
        if sim_abi is None:
            raise UnsupportedError(f"--kernel: no syscall table for {arch}")
        sim = host_simulation(target, opts.kernel, opts.seccomp_eperm, sim_abi)
        judged = simulated_target(target, sim)
    if not opts.predict:
        prediction = Prediction("not judged (--no-predict)", ())
    elif sim is not None:
        prediction = Prediction.of(run_check(opened, judged, command, chosen_because))
    else:
        assert host_report is not None
        prediction = Prediction.of(host_report)
    # A simulated kernel is an experiment: it runs whatever the prediction says.
    if prediction.verdict == "incompatible" and not opts.force and not opts.kernel:
        refuse(opened.image.reference, prediction)
    pull(opened, store)
    rootfs, _issues = unpack(opened, store)  # `check` already reported the layer issues
    try:
        user = resolve_user(opts.user or config.user, _text(rootfs, "passwd"),
                            _text(rootfs, "group"))  # fmt: skip
    except UnknownUser as e:
        raise ContainerError(str(e), hint="give a numeric -u UID[:GID]") from None
    workdir = opts.workdir or config.workdir or "/"
    volumes = checked.volumes
    limits = checked.limits
    hostname = opts.hostname or secrets.token_hex(6)  # docker's short container id look
    keep_dir = None
    if opts.keep:  # one writable layer per image and hostname, never shared across images
        keep_dir = store.root / "containers" / rootfs.name / hostname
        keep_dir.mkdir(parents=True, exist_ok=True)
    env = container_env(config, opts, user.home, hostname)
    notes = []
    seccomp_program = fake_release = release_interpreter = None
    if sim is not None:
        from kcompat.seccomp import assemble

        seccomp_program = assemble(sim)
        fake_release = judged.kernel
        if opts.seccomp_eperm:
            notes.append(
                f"reproducing an old runtime's seccomp profile: {len(sim.denied)} syscalls "
                f"newer than {opts.kernel} answer EPERM; the kernel release stays this one"
            )
        elif emulation is not None:
            env = (*env, ("QEMU_UNAME", str(judged.kernel)))  # every emulated process
            notes.append(
                f"simulating Linux {judged.kernel} under emulation: uname is faked for every "
                f"process (QEMU_UNAME); the seccomp filter sees qemu's host ({sim_abi}) "
                "calls, which mostly but not always match the guest's"
            )
        else:
            release_interpreter = target.qemu.get(arch)
            if release_interpreter is None:
                notes.append(
                    f"uname is NOT faked: no static qemu-user for {arch} (apt-get install "
                    "qemu-user-static); only the syscall table is simulated"
                )
            else:
                notes.append(
                    f"simulating Linux {judged.kernel}: {len(sim.denied)} newer syscalls "
                    f"answer {'EPERM' if opts.seccomp_eperm else 'ENOSYS'} in every process; "
                    f"the release is faked for the first process only ({release_interpreter} "
                    "-r); the programs it starts see the real one"
                )
    spec = RunSpec(
        rootfs=rootfs,
        argv=argv,
        env=env,
        workdir=workdir,
        uid=user.uid,
        gid=user.gid,
        groups=user.groups,
        hostname=hostname,
        volumes=volumes,
        network=opts.network,
        interactive=opts.interactive,
        tty=opts.tty,
        read_only=opts.read_only,
        scratch=store.root / "run",
        keep_dir=keep_dir,
        emulation=emulation,
        limits=limits,
        rootfs_mode=opts.rootfs_mode,
        seccomp_program=seccomp_program,
        fake_release=fake_release if release_interpreter else None,
        release_interpreter=release_interpreter,
        capabilities=checked.capabilities,
        profile_program=_profile_program(checked, target),
        masked_paths=() if opts.privileged else DEFAULTS.masked_paths,
        readonly_paths=() if opts.privileged else DEFAULTS.readonly_paths,
        no_new_privs=checked.no_new_privs,
        tmpfs=checked.tmpfs,
        # under --kernel qemu-user is the first process: as PID 1 it could not die by
        # its guest's signal, so kcompat's init is PID 1 there
        init=opts.init or bool(opts.kernel),
        userns=opts.userns,
    )
    if emulation is not None:
        how = (
            "a private binfmt_misc in the run's user namespace"
            if emulation.register_line
            else f"the host's binfmt_misc entry {emulation.host_entry}"
        )
        notes.append(f"{arch} runs under {emulation.interpreter} through {how}")
    return Prepared(spec, prediction, tuple(notes))
