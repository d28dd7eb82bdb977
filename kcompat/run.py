"""`kcompat run`: from docker-style options and an image to a checked RunSpec.

The image is pulled and flattened (cached per chain of layers), judged for this host by
the same rules as `check` (an `incompatible` verdict stops the run unless forced), and
the container's argv, environment, user, workdir, volumes and emulation are resolved
the way docker resolves them.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kcompat.binfmt import BINFMT
from kcompat.cgroups import Limits, parse_cpus, parse_memory
from kcompat.container import Emulation, RunSpec, Volume
from kcompat.errors import IncompatibleError, NotFoundError, UnsupportedError, UsageError
from kcompat.image import ImageConfig
from kcompat.pull import OpenImage, pull, unpack
from kcompat.store import BlobStore
from kcompat.target import Target, probe_binfmt, probe_host
from kcompat.versions import version_key

if TYPE_CHECKING:
    from kcompat.seccomp import Simulation

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PREDICTION_VERSION = 2  # bump when rules or their data change


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


@dataclass(frozen=True)
class Prediction:
    verdict: str
    findings: tuple[dict[str, Any], ...]
    arch: str | None = None  # of the ELF file the entrypoint finally runs
    cached: bool = False


@dataclass(frozen=True)
class Prepared:
    spec: RunSpec
    prediction: Prediction
    notes: tuple[str, ...] = field(default_factory=tuple)


# -- argv, env, user, volumes --------------------------------------------------------


def container_argv(config: ImageConfig, opts: RunOptions) -> tuple[str, ...]:
    """docker's rule: --entrypoint replaces the image's entrypoint and drops its CMD;
    the command after the image replaces CMD."""
    if opts.entrypoint is not None:
        entry: tuple[str, ...] = (opts.entrypoint,) if opts.entrypoint else ()
        cmd: tuple[str, ...] = opts.command
    else:
        entry = tuple(config.entrypoint or ())
        cmd = opts.command or tuple(config.cmd or ())
    argv = (*entry, *cmd)
    if not argv:
        raise UsageError(
            "no command: the image has no Entrypoint or Cmd",
            hint="give one after the image: kcompat run IMAGE -- CMD",
        )
    return argv


def _env_file(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except OSError as e:
        raise UsageError(f"--env-file {path}: {e.strerror}") from None
    return [
        line.rstrip("\n")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def container_env(
    config: ImageConfig, opts: RunOptions, home: str, hostname: str
) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
    for item in config.env:
        k, sep, v = item.partition("=")
        if sep:
            env[k] = v
    extra = [line for f in opts.env_files for line in _env_file(f)] + list(opts.env)
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


def _passwd(rootfs: Path, name: str) -> list[list[str]]:
    try:
        text = (rootfs / "etc" / name).read_text(errors="replace")
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line.count(":") >= 2]


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def resolve_user(rootfs: Path, spec: str | None) -> User:
    """-u / the config's User: name or uid, optionally :group or :gid, looked up in the
    image's /etc/passwd and /etc/group as runc does."""
    if not spec:
        spec = "0"
    user, _, group = spec.partition(":")
    passwd = _passwd(rootfs, "passwd")
    entry = next((p for p in passwd if len(p) >= 6 and user in (p[0], p[2])), None)
    if entry is not None:
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5] or "/"
        name = entry[0]
    elif user.isdigit():
        uid, gid, home, name = int(user), 0, "/", None
    else:
        raise NotFoundError(
            f"unable to find user {user}: no matching entries in the image's passwd file",
            hint="use a numeric -u UID[:GID]",
        )
    groups_db = _passwd(rootfs, "group")
    if group:
        g = next((e for e in groups_db if len(e) >= 3 and group in (e[0], e[2])), None)
        if g is not None:
            gid = int(g[2])
        elif group.isdigit():
            gid = int(group)
        else:
            raise NotFoundError(
                f"unable to find group {group}: no matching entries in the image's group file"
            )
    extra = tuple(
        int(e[2])
        for e in groups_db
        if len(e) >= 4 and name and name in e[3].split(",") and e[2].isdigit()
    )
    return User(uid, gid, tuple(sorted({gid, *extra})), home)


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


# -- prediction and emulation ----------------------------------------------------------


def _fingerprint(target: Target) -> str:
    data = target.to_json()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def predict(
    rootfs: Path, config: ImageConfig, target: Target, argv: tuple[str, ...], store: BlobStore
) -> Prediction:
    """The verdict of `check` for this host, cached per (rootfs, config, host, argv)."""
    key_src = json.dumps(
        [PREDICTION_VERSION, rootfs.name, repr(config), _fingerprint(target), list(argv)]
    )
    key = hashlib.sha256(key_src.encode()).hexdigest()
    cache = store.root / "predictions" / f"{key}.json"
    try:
        raw = json.loads(cache.read_text())
        return Prediction(raw["verdict"], tuple(raw["findings"]), raw.get("arch"), cached=True)
    except (OSError, ValueError, KeyError):
        pass
    from kcompat.rules import check  # the scanner and rules load only on a cache miss
    from kcompat.scan import scan_path

    env = dict(e.split("=", 1) for e in config.env if "=" in e)
    result = check(scan_path(rootfs, env), config, target, list(argv))
    findings = tuple(
        {"rule": f.rule, "severity": f.severity.value, "title": f.title,
         "explanation": f.explanation, "fix": f.fix}
        for f in result.findings
    )  # fmt: skip
    binary = result.entrypoint.binary if result.entrypoint else None
    arch = binary.elf.arch.platform.architecture if binary and binary.elf else None
    prediction = Prediction(result.verdict.value, findings, arch)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"verdict": prediction.verdict, "findings": findings,
                                   "arch": arch}))  # fmt: skip
        os.replace(tmp, cache)
    except OSError:
        pass  # a cache we cannot write only costs time
    return prediction


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
    private = bool(
        target.kernel and version_key(target.kernel) >= (6, 7, 0) and target.userns is not False
    )
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
    from kcompat.target import _kernel

    k = _kernel(kernel)
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


def prepare(opened: OpenImage, opts: RunOptions, store: BlobStore, target: Target) -> Prepared:
    pull(opened, store)
    rootfs, _issues = unpack(opened, store)
    config = opened.image.config
    if opts.network not in ("host", "none"):
        raise UsageError(
            f"--network {opts.network!r} is not supported", hint="use --network host or none"
        )
    if opts.hostname is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,63}",
                                                      opts.hostname):  # fmt: skip
        raise UsageError(f"--hostname {opts.hostname!r} is not a valid host name")
    argv = container_argv(config, opts)
    arch = config.platform.architecture
    if arch not in BINFMT:  # a dir: rootfs has no config: the entrypoint's ELF tells
        arch = predict(rootfs, config, target, argv, store).arch or target.platform.architecture
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
    prediction = (
        predict(rootfs, config, judged, argv, store)
        if opts.predict
        else Prediction("not judged (--no-predict)", ())
    )
    # A simulated kernel is an experiment: it runs whatever the prediction says.
    if prediction.verdict == "incompatible" and not opts.force and not opts.kernel:
        fatal = next((f for f in prediction.findings if f["severity"] == "fatal"), None)
        why = f"{fatal['title']}: {fatal['explanation']}" if fatal else "see kcompat check"
        fix = fatal.get("fix") if fatal else None
        raise IncompatibleError(
            f"{opened.image.reference} will not run on this host: {why}",
            hint=(f"{fix}; " if fix else "") + "--force runs it anyway",
        )
    user = resolve_user(rootfs, opts.user or config.user)
    workdir = opts.workdir or config.workdir or "/"
    if not workdir.startswith("/"):
        raise UsageError(f"--workdir {workdir!r} is not an absolute path")
    volumes = tuple(parse_volume(v) for v in opts.volumes)
    limits = Limits(
        memory=parse_memory(opts.memory) if opts.memory else None,
        cpus=parse_cpus(opts.cpus) if opts.cpus else None,
        pids=opts.pids_limit,
    )
    hostname = opts.hostname or secrets.token_hex(6)  # docker's short container id look
    keep_dir = None
    if opts.keep:
        keep_dir = store.root / "containers" / hostname
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
    )
    if emulation is not None:
        how = (
            "a private binfmt_misc in the run's user namespace"
            if emulation.register_line
            else f"the host's binfmt_misc entry {emulation.host_entry}"
        )
        notes.append(f"{arch} runs under {emulation.interpreter} through {how}")
    return Prepared(spec, prediction, tuple(notes))
