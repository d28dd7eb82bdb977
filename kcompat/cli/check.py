"""`kcompat check`: one image on one target, or a matrix of images on targets.

The options name the image, the command to judge and the targets (this host, saved
profiles, described kernels); the judgement is kcompat.check's, `--verify`'s run is
kcompat.verify's, `--fail-on` is kcompat.failon's."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from kcompat.cli.common import (
    CredsOpt,
    InsecureOpt,
    PlatformOpt,
    VmAppendOpt,
    VmKernelOpt,
    image_options,
    print_lines,
    progress,
)
from kcompat.errors import KcompatError, UsageError
from kcompat.failon import FailOn

if TYPE_CHECKING:
    from kcompat.execve import Command
    from kcompat.target import Target


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


def _targets(
    host: bool,
    target_files: list[Path],
    kernels: list[str],
    arch: str | None,
    vsyscall: str | None,
    cgroup: str | None,
    runtime: str | None,
    no_binfmt: bool,
) -> list[tuple[str | None, Target]]:
    """The targets to judge against, each with the name the user gave it: --host, each
    --target FILE, each --kernel K (described with the shared --arch, --vsyscall, ...);
    this host when none is given."""
    from kcompat.target import described, load_profile, probe_host

    described_opts = [arch, vsyscall, cgroup, runtime] + ([True] if no_binfmt else [])
    if any(described_opts) and not kernels:
        raise UsageError(
            "a described target needs --kernel", hint="e.g. --kernel 3.10 --arch amd64"
        )
    targets: list[tuple[str | None, Target]] = []
    if host:
        targets.append((None, probe_host()))
    for path in target_files:
        targets.append((str(path), load_profile(path)))
    for kernel in kernels:
        targets.append((f"--kernel {kernel}",
                        described(kernel, arch, vsyscall, cgroup, runtime,
                                  binfmt=not no_binfmt)))  # fmt: skip
    return targets or [(None, probe_host())]


CommandArg = Annotated[
    Optional[list[str]],
    typer.Argument(metavar="CMD", help="command to judge instead of the image's Cmd "
                   "(after --, as docker run)"),
]
OptionalImageArg = Annotated[
    Optional[str],
    typer.Argument(
        metavar="IMAGE",
        help="docker://, oci:DIR[:REF], oci-archive:, docker-archive:, dir:, "
        "docker-daemon:, containers-storage: or NAME[:TAG] "
        "(with --image: the first word of CMD)",
    ),
]
ImagesOpt = Annotated[
    Optional[list[str]],
    typer.Option("--image", metavar="IMAGE", help="judge this image too (repeatable: a "
                 "matrix of every image on every target); then every word after the "
                 "options is CMD"),
]
HostOpt = Annotated[
    bool, typer.Option("--host", help="judge against this machine (the default target)")
]
TargetOpt = Annotated[
    Optional[list[Path]],
    typer.Option("--target", metavar="FILE",
                 help="a profile saved by 'kcompat host --save' (repeatable)"),
]
KernelOpt = Annotated[
    Optional[list[str]],
    typer.Option("--kernel", metavar="VERSION",
                 help="described target: kernel version, e.g. 3.10 (repeatable)"),
]
ArchOpt = Annotated[
    Optional[str],
    typer.Option("--arch", metavar="ARCH", help="described target: architecture, e.g. arm64"),
]
VsyscallOpt = Annotated[
    Optional[str],
    typer.Option("--vsyscall", metavar="MODE", help="described target: emulate, xonly or none"),
]
CgroupOpt = Annotated[
    Optional[str],
    typer.Option("--cgroup", metavar="VERSION", help="described target: v1, v2 or hybrid"),
]
RuntimeOpt = Annotated[
    Optional[str],
    typer.Option("--runtime", metavar="NAME:VERSION",
                 help="described target: its container runtime, e.g. docker:20.10.7"),
]
NoBinfmtOpt = Annotated[
    bool, typer.Option("--no-binfmt", help="the described target has no qemu-user handlers")
]
CheckFormatOpt = Annotated[
    CheckFormat, typer.Option("--format", metavar="text|json|sarif", help="text, json or sarif")
]
FailOnOpt = Annotated[
    FailOn,
    typer.Option("--fail-on", metavar="fatal|error|warning|never",
                 help="exit 1 on: fatal (incompatible), error (+uncertain), warning, "
                 "or never"),
]
CheckEntrypointOpt = Annotated[
    Optional[str],
    typer.Option("--entrypoint", metavar="CMD",
                 help="judge with this Entrypoint (as docker run); '' clears it"),
]
CheckUserOpt = Annotated[
    Optional[str],
    typer.Option("-u", "--user", metavar="USER", help="judge as this UID[:GID] or name"),
]
CheckWorkdirOpt = Annotated[
    Optional[str],
    typer.Option("-w", "--workdir", metavar="DIR", help="judge with this working directory"),
]


def check_cmd(
    image: OptionalImageArg = None,
    command: CommandArg = None,
    images: ImagesOpt = None,
    platform: PlatformOpt = None,
    creds: CredsOpt = None,
    insecure_registry: InsecureOpt = None,
    host: HostOpt = False,
    target_file: TargetOpt = None,
    kernel: KernelOpt = None,
    arch: ArchOpt = None,
    vsyscall: VsyscallOpt = None,
    cgroup: CgroupOpt = None,
    runtime: RuntimeOpt = None,
    no_binfmt: NoBinfmtOpt = False,
    entrypoint: CheckEntrypointOpt = None,
    user: CheckUserOpt = None,
    workdir: CheckWorkdirOpt = None,
    format: CheckFormatOpt = CheckFormat.text,
    fail_on: FailOnOpt = FailOn.FATAL,
    verify: Annotated[
        bool, typer.Option("--verify", help="then run it under the simulated target and compare")
    ] = False,
    vm_kernel: VmKernelOpt = None,
    vm_append: VmAppendOpt = None,
) -> None:
    """Predict whether IMAGE runs on a target, why not, and how to fix it.

    Arguments after IMAGE replace the image's Cmd, as in docker run. Many images
    (--image, repeated) and many targets (--host, --target FILE and --kernel K, each
    repeatable) make a matrix: every image is judged on every target, printed as one
    table (or one JSON document, --format json), and the exit status is the worst
    cell's."""
    from kcompat import render as R
    from kcompat.execve import Command

    words = ([image] if image is not None else []) + list(command or ())
    if images:
        refs, cmd = list(images), words
    elif words:
        refs, cmd = words[:1], words[1:]
    else:
        raise UsageError("check needs an IMAGE", hint="e.g. kcompat check debian:12")
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    what = Command(tuple(cmd), entrypoint, user, workdir)
    kernels, files = list(kernel or ()), list(target_file or ())
    if vm_append is not None and vm_kernel is None:
        raise UsageError("--vm-append needs --vm-kernel")
    if vm_kernel is not None and (host or files or kernels or len(refs) > 1):
        raise UsageError("--vm-kernel is the target: not with --host, --target, --kernel "
                         "or many images")  # fmt: skip
    if len(refs) > 1 or host + len(files) + len(kernels) > 1:
        if verify:
            raise UsageError("--verify runs one image on one target",
                             hint="give one IMAGE and one target")  # fmt: skip
        _check_matrix(refs, what, platform, creds, insecure_registry, format, fail_on,
                      lambda: _targets(host, files, kernels, arch, vsyscall, cgroup, runtime,
                                       no_binfmt))  # fmt: skip
        return
    ref = refs[0]
    from kcompat.check import check_image, error_report, sarif

    target: Target | None = None
    try:
        if vm_kernel is not None:
            from kcompat.vm import target_for_kernel

            target = target_for_kernel(vm_kernel, vm_append or "")
        else:
            target = _targets(host, files, kernels, arch, vsyscall, cgroup, runtime,
                              no_binfmt)[0][1]  # fmt: skip
        if verify and vm_kernel is None:  # a VM boots a kernel of any arch qemu has
            from kcompat.verify import require_host_arch

            require_host_arch(target)
        options = image_options(platform, creds, insecure_registry)
        with progress() as bars:
            if bars is not None:
                bars.status("check", f"checking {ref}")
            rep = check_image(ref, target, what, options)
    except KcompatError as e:
        if format is not CheckFormat.text:  # a CI gate always gets a valid report
            rep = error_report(ref, target, e)
            typer.echo(json.dumps(rep if format is CheckFormat.json else sarif(rep), indent=2))
        raise
    verification = None
    if verify:
        from kcompat.verify import verify_report

        vm_args = ([f"--vm-kernel={vm_kernel}", f"--vm-append={vm_append or ''}"]
                   if vm_kernel is not None else [])  # fmt: skip
        verification = verify_report(rep, ref, target, what, options.insecure_hosts, vm_args)
    if format is CheckFormat.json:
        typer.echo(json.dumps(rep, indent=2))
    elif format is CheckFormat.sarif:
        typer.echo(json.dumps(sarif(rep), indent=2))
    else:
        print_lines(R.check_lines(rep))
        if verification is not None:
            print_lines(R.verify_lines(verification))
    code = fail_on.exit_code(rep)
    if code:
        raise typer.Exit(code)


def _check_matrix(
    refs: list[str],
    what: Command,
    platform: str | None,
    creds: str | None,
    insecure: list[str] | None,
    format: CheckFormat,
    fail_on: FailOn,
    make_targets: Callable[[], list[tuple[str | None, Target]]],
) -> None:
    """Every image on every target (kcompat.check.check_matrix), as one table, one JSON
    document (kcompat/data/matrix.schema.json) or one SARIF log."""
    from kcompat import render as R
    from kcompat.check import check_matrix, error_report, sarif

    try:
        targets = make_targets()
        options = image_options(platform, creds, insecure)
    except KcompatError as e:
        if format is CheckFormat.json:
            doc = R.matrix_document(refs, [], {}, fail_on,
                                    error={"message": str(e), "exit_code": int(e.exit_code)})
            typer.echo(json.dumps(doc, indent=2))
        elif format is CheckFormat.sarif:
            typer.echo(json.dumps(sarif(error_report(refs[0], None, e)), indent=2))
        raise
    with progress() as bars:
        reports = check_matrix(refs, targets, what, options, bars)
    named = [(R.target_label(t.to_json(), given), t.to_json()) for given, t in targets]
    doc = R.matrix_document(refs, named, reports, fail_on)
    if format is CheckFormat.json:
        typer.echo(json.dumps(doc, indent=2))
    elif format is CheckFormat.sarif:
        typer.echo(json.dumps(R.matrix_sarif(doc), indent=2))
    else:
        print_lines(R.matrix_lines(doc))
    if doc["exit_code"]:
        raise typer.Exit(doc["exit_code"])
