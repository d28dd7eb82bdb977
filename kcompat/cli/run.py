"""`kcompat run`: judge the image as `check` does, then run it in namespaces (or through
qemu-user), or hand it to docker or podman (`--runtime`, kcompat.handoff). The options
are docker run's; what they mean is kcompat.run's."""

from __future__ import annotations

import sys
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kcompat.cli.common import (
    CredsOpt,
    ImageArg,
    InsecureOpt,
    PlatformOpt,
    VmAppendOpt,
    VmKernelOpt,
    image_options,
    info,
    progress,
    warn,
)
from kcompat.errors import UsageError


class Engine(str, Enum):  # kcompat.handoff.Engine, without importing it for every command
    docker = "docker"
    podman = "podman"


RunCommandArg = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="CMD", help="command and arguments (replace the image's Cmd)"),
]
EnvOpt = Annotated[
    Optional[list[str]],
    typer.Option("-e", "--env", metavar="VAR[=VALUE]",
                 help="set VAR in the container (VAR alone: its value here)"),
]
EnvFileOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--env-file", metavar="FILE", help="read VAR=value lines from FILE"),
]
VolumeOpt = Annotated[
    Optional[list[str]],
    typer.Option("-v", "--volume", metavar="HOST:CTR[:ro]",
                 help="bind-mount a host path (read-only with :ro)"),
]
Flag = bool
WorkdirOpt = Annotated[
    Optional[str],
    typer.Option("-w", "--workdir", metavar="DIR", help="the command's working directory"),
]
UserOpt = Annotated[
    Optional[str],
    typer.Option("-u", "--user", metavar="USER", help="run as UID[:GID] or a name in the image"),
]
EntrypointOpt = Annotated[
    Optional[str],
    typer.Option("--entrypoint", metavar="CMD",
                 help="replace the image's Entrypoint (and drop its Cmd); '' clears it"),
]
HostnameOpt = Annotated[
    Optional[str],
    typer.Option("--hostname", metavar="NAME", help="the container's host name"),
]
MemoryOpt = Annotated[
    Optional[str],
    typer.Option("-m", "--memory", metavar="SIZE", help="memory limit, e.g. 512m"),
]
CpusOpt = Annotated[
    Optional[str], typer.Option("--cpus", metavar="N", help="CPU limit, e.g. 1.5")
]
PidsOpt = Annotated[
    Optional[int],
    typer.Option("--pids-limit", metavar="N", help="most processes at once (-1: unlimited)"),
]
SimKernelOpt = Annotated[
    Optional[str],
    typer.Option("--kernel", metavar="VERSION", help="simulate this older kernel, e.g. 3.10"),
]
TmpfsOpt = Annotated[
    Optional[list[str]],
    typer.Option("--tmpfs", metavar="PATH[:OPTS]", help="mount a tmpfs at PATH"),
]
SecurityOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--security-opt", metavar="OPT",
        help="seccomp=unconfined|PROFILE.json, no-new-privileges[=false]",
    ),
]
CapAddOpt = Annotated[
    Optional[list[str]],
    typer.Option("--cap-add", metavar="CAP", help="add a capability (or ALL)"),
]
CapDropOpt = Annotated[
    Optional[list[str]],
    typer.Option("--cap-drop", metavar="CAP", help="drop a capability (or ALL)"),
]
ProfileOpt = Annotated[
    Optional[Path],
    typer.Option("--profile", metavar="FILE", help="this host's profile from 'host --save'"),
]
EngineOpt = Annotated[
    Optional[Engine],
    typer.Option("--runtime", metavar="docker|podman",
                 help="judge here, then run the judged image with docker or podman "
                 "(default: kcompat's own runner)"),
]
VmInitrdOpt = Annotated[
    Optional[Path],
    typer.Option("--vm-initrd", metavar="FILE",
                 help="with --vm-kernel: an initrd unpacked before kcompat's"),
]
RuntimeArgOpt = Annotated[
    Optional[list[str]],
    typer.Option("--runtime-arg", metavar="ARG",
                 help="with --runtime: pass ARG to the engine's run (repeatable; "
                 "e.g. --runtime-arg=-d --runtime-arg=--name=web)"),
]


def run_cmd(
    image: ImageArg,
    command: RunCommandArg = None,
    platform: PlatformOpt = None,
    creds: CredsOpt = None,
    insecure_registry: InsecureOpt = None,
    env: EnvOpt = None,
    env_file: EnvFileOpt = None,
    workdir: WorkdirOpt = None,
    user: UserOpt = None,
    volume: VolumeOpt = None,
    entrypoint: EntrypointOpt = None,
    hostname: HostnameOpt = None,
    network: Annotated[
        str,
        typer.Option("--network", metavar="NET", help="host or none (with --runtime also "
                     "the engine's networks, e.g. bridge)"),
    ] = "host",
    interactive: Annotated[Flag, typer.Option("-i", "--interactive", help="keep stdin")] = False,
    tty: Annotated[Flag, typer.Option("-t", "--tty", help="allocate a pty")] = False,
    read_only: Annotated[Flag, typer.Option("--read-only", help="read-only root")] = False,
    rm: Annotated[Flag, typer.Option("--rm", help="discard the writable layer (default)")] = False,
    keep: Annotated[
        Flag, typer.Option("--keep", help="keep the writable layer (with --runtime: the "
                           "container)")
    ] = False,
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids_limit: PidsOpt = None,
    force: Annotated[Flag, typer.Option("--force", help="run even if judged incompatible")] = False,
    no_predict: Annotated[
        Flag, typer.Option("--no-predict", help="skip the prediction (implies --force)")
    ] = False,
    profile: ProfileOpt = None,
    rootfs_mode: Annotated[
        str,
        typer.Option("--rootfs-mode", metavar="MODE",
                     help="auto, overlay or copy (the writable layer)"),
    ] = "auto",
    kernel: SimKernelOpt = None,
    seccomp_eperm: Annotated[
        Flag, typer.Option("--seccomp-eperm", help="with --kernel: newer syscalls get EPERM")
    ] = False,
    init: Annotated[
        Flag, typer.Option("--init", help="an init as PID 1: reaps, forwards signals")
    ] = False,
    tmpfs: TmpfsOpt = None,
    security_opt: SecurityOpt = None,
    cap_add: CapAddOpt = None,
    cap_drop: CapDropOpt = None,
    userns: Annotated[
        str,
        typer.Option(
            "--userns", metavar="MODE",
            help="host, or auto (as root: container root is an unprivileged uid)",
        ),
    ] = "host",
    privileged: Annotated[
        Flag,
        typer.Option(
            "--privileged", help="all capabilities, no seccomp, no masked or read-only paths"
        ),
    ] = False,
    engine: EngineOpt = None,
    runtime_arg: RuntimeArgOpt = None,
    vm_kernel: VmKernelOpt = None,
    vm_initrd: VmInitrdOpt = None,
    vm_append: VmAppendOpt = None,
    vm_console: Annotated[
        Flag, typer.Option("--vm-console", help="with --vm-kernel: show the kernel's console")
    ] = False,
) -> None:
    """Run IMAGE: natively in namespaces, or through qemu-user for a foreign arch.

    With --runtime docker|podman the image is judged here the same way, then that
    engine runs exactly the judged image (by digest, or loaded into it) with the same
    options; its exit status is kcompat's."""
    from kcompat.check import open_for
    from kcompat.run import host_target, prepare
    from kcompat.runoptions import RunOptions, validate

    if rm and keep:
        raise UsageError("--rm and --keep contradict each other: give one")
    if runtime_arg and engine is None:
        raise UsageError("--runtime-arg is for the engine of --runtime",
                         hint="add --runtime docker or --runtime podman")  # fmt: skip
    argv = list(command or ())
    if argv[:1] == ["--"]:  # after IMAGE every word is the command's, even "--"
        argv = argv[1:]
    opts = RunOptions(
        command=tuple(argv),
        env=tuple(env or ()),
        env_files=tuple(env_file or ()),
        workdir=workdir,
        user=user,
        volumes=tuple(volume or ()),
        entrypoint=entrypoint,
        hostname=hostname,
        network=network,
        interactive=interactive,
        tty=tty,
        read_only=read_only,
        keep=keep,
        force=force or no_predict,
        predict=not no_predict,
        memory=memory,
        cpus=cpus,
        pids_limit=pids_limit,
        rootfs_mode=rootfs_mode,
        kernel=kernel,
        seccomp_eperm=seccomp_eperm,
        init=init,
        tmpfs=tuple(tmpfs or ()),
        security_opts=tuple(security_opt or ()),
        cap_add=tuple(cap_add or ()),
        cap_drop=tuple(cap_drop or ()),
        privileged=privileged,
        userns=userns,
    )
    if tty and interactive and not sys.stdin.isatty():
        from kcompat.errors import ContainerError

        raise ContainerError("the input device is not a TTY", exit_code=1)
    if vm_kernel is None and (vm_initrd is not None or vm_append is not None or vm_console):
        raise UsageError("--vm-initrd, --vm-append and --vm-console need --vm-kernel")
    if vm_kernel is not None and (engine is not None or profile is not None):
        raise UsageError("--vm-kernel runs on the kernel it boots: not with --runtime "
                         "or --profile")  # fmt: skip
    if engine is not None:
        _run_with_engine(image, opts, engine, tuple(runtime_arg or ()), platform, creds,
                         insecure_registry, profile)  # fmt: skip
        return
    from kcompat.container import run as run_container

    checked = validate(opts)  # before anything is pulled
    if vm_kernel is not None:
        from kcompat import vm

        target = vm.target_for_kernel(vm_kernel, vm_append or "")
        prepare = vm.prepare  # the same run, checked for what a VM run can honour
    else:
        target = host_target(profile)
    from kcompat.store import BlobStore

    store = BlobStore()
    options = image_options(platform, creds, insecure_registry)
    with open_for(image, target, options) as (opened, why):
        prepared = prepare(opened, opts, store, target, why, checked)
        _layer_warnings(prepared.prediction)
    _prediction_warnings(prepared.prediction, image, kernel)
    if kernel:  # a simulation says what it simulates and what it cannot
        for note in prepared.notes:
            warn(note)
        if not no_predict:
            warn(f"prediction for Linux {kernel}: {prepared.prediction.verdict}")
    if vm_kernel is not None:
        code = vm.run_in_vm(prepared, vm.VmOptions(vm_kernel, vm_initrd, vm_append or "",
                                                   verbose=vm_console))  # fmt: skip
        raise typer.Exit(code)
    code = run_container(prepared.spec)
    if keep and prepared.spec.keep_dir is not None:
        warn(f"writable layer kept in {prepared.spec.keep_dir / 'upper'}")
    raise typer.Exit(code)


def _layer_warnings(pred: Any) -> None:
    for f in pred.findings:
        if f["rule"] == "layer-entries":
            for issue in f["evidence"]:
                warn(issue)


def _prediction_warnings(pred: Any, image: str, kernel: str | None) -> None:
    if pred.verdict == "uncertain":
        titles = "; ".join(f["title"] for f in pred.findings if f["severity"] == "uncertain")
        warn(f"prediction uncertain: {titles} (kcompat check {image} for details)")
    elif pred.verdict == "incompatible" and not kernel:
        warn("prediction incompatible, running anyway (--force)")


def _run_with_engine(
    image: str,
    opts: Any,
    engine: Engine,
    runtime_args: tuple[str, ...],
    platform: str | None,
    creds: str | None,
    insecure: list[str] | None,
    profile: Path | None,
) -> None:
    """`run --runtime`: judged here as `run` judges (kcompat.handoff), run by the engine."""
    from kcompat import handoff
    from kcompat.check import open_for
    from kcompat.runoptions import validate

    which = handoff.Engine(engine.value)
    handoff.refuse_unsupported(opts, which)
    binary = handoff.find_engine(which)
    if opts.network not in ("host", "none"):  # the engine's own network: it checks it
        handoff.network_for_engine(opts.network)
        checked = validate(replace(opts, network="host"))
    else:
        checked = validate(opts)  # before anything is pulled
    target = handoff.engine_host(profile)
    options = image_options(platform, creds, insecure)
    with open_for(image, target, options) as (opened, why):
        with progress() as bars:
            if bars is not None:
                bars.status("handoff", f"checking {image}")
            plan = handoff.prepare_handoff(opened, opts, checked, which, target, options,
                                           runtime_args, why, binary=binary)  # fmt: skip
        _layer_warnings(plan.prediction)
    _prediction_warnings(plan.prediction, image, None)
    for note in plan.notes:
        info(note)
    raise typer.Exit(handoff.execute(plan))
