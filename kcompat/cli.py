"""The command line: parse options, call the core, print. The only module that prints.

What it prints is rendered by kcompat.render (lines of styled spans): plain in pipes and
in JSON, in colour on a terminal unless NO_COLOR (https://no-color.org) is set or
--no-color is given. Progress bars and spinners go to stderr, only on a terminal and
never with -q.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Iterator
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import IO, Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from kcompat import __version__
from kcompat import render as R
from kcompat.auth import parse_creds
from kcompat.errors import ExitCode, KcompatError, LocalIOError, NotFoundError, UsageError
from kcompat.platform import Platform, parse_platform
from kcompat.pull import inspect_report, open_image, pull, scan_image, unpack
from kcompat.sources import Options
from kcompat.store import BlobStore
from kcompat.target import Target, described, load_profile, probe_host


def _param_name(param: Any) -> str:
    return str(param.metavar or (param.name or "").upper())


def _help_rows(cmd: Any, ctx: Any, formatter: Any) -> None:
    """Arguments by their names and help (no type noise such as <str>), then options."""
    args, opts = [], []
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            args.append((_param_name(param), getattr(param, "help", None) or ""))
        else:
            record = param.get_help_record(ctx)
            if record is not None:
                opts.append(record)
    if args:
        with formatter.section("Arguments"):
            formatter.write_dl(args)
    if opts:
        with formatter.section("Options"):
            formatter.write_dl(opts)


class _Command(TyperCommand):
    """A command whose usage line names its arguments plainly: IMAGE [CMD]..."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = _param_name(param)
                piece = name if param.required else f"[{name}]"
                pieces.append(piece + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _help_rows(self, ctx, formatter)


class _Group(TyperGroup):
    def format_options(self, ctx: Any, formatter: Any) -> None:
        _help_rows(self, ctx, formatter)
        self.format_commands(ctx, formatter)


app = typer.Typer(
    name="kcompat",
    help="Will this container image run on this host, and if not, why?",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "OS/ARCH[/VARIANT]" is not markup
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_Group,
)

_state: dict[str, bool] = {"debug": False}


def _colour(stream: IO[str]) -> bool:
    """Colour only for a terminal, and not when NO_COLOR is set (to anything but the
    empty string, https://no-color.org), TERM is dumb or --no-color was given."""
    if _state.get("no_color") or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _print(lines: R.Lines, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    if not _colour(stream):
        typer.echo(R.text(lines), err=err)
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, force_terminal=True, soft_wrap=True, highlight=False,
                      markup=False, emoji=False)  # fmt: skip
    for line in lines:
        console.print(Text(line) if isinstance(line, str) else Text.assemble(*line))


def _stderr_line(prefix: str, style: str, message: str) -> None:
    _print([((f"kcompat: {prefix}", style), (message, ""))], err=True)


def _warn(message: str) -> None:
    if not _state.get("quiet"):
        _stderr_line("warning: ", "bold yellow", message)


def _info(message: str) -> None:
    if not _state.get("quiet"):
        _stderr_line("", "", message)


class Format(str, Enum):
    text = "text"
    json = "json"


PlatformOpt = Annotated[
    Optional[str],
    typer.Option(
        "--platform",
        metavar="OS/ARCH",
        help="OS/ARCH[/VARIANT] or a uname -m name, e.g. linux/arm64 "
        "(default: $DOCKER_DEFAULT_PLATFORM, as docker)",
        envvar="DOCKER_DEFAULT_PLATFORM",
    ),
]
CredsOpt = Annotated[
    Optional[str],
    typer.Option("--creds", metavar="USER:PASS", help="USER:PASSWORD for the registry",
                 envvar="KCOMPAT_CREDS"),
]
InsecureOpt = Annotated[
    Optional[list[str]],
    typer.Option("--insecure-registry", metavar="HOST",
                 help="HOST[:PORT] to reach over plain HTTP (repeatable)"),
]
ImageArg = Annotated[
    str,
    typer.Argument(
        metavar="IMAGE",
        help="docker://, oci:DIR[:REF], oci-archive:, docker-archive:, dir: or NAME[:TAG]",
    ),
]
FormatOpt = Annotated[
    Format, typer.Option("--format", metavar="text|json", help="text or json")
]


def _options(platform: str | None, creds: str | None, insecure: list[str] | None) -> Options:
    from kcompat.reference import check_registry_host

    wanted: Platform | None = parse_platform(platform) if platform is not None else None
    for host in insecure or ():
        check_registry_host(host)
    return Options(
        platform=wanted,
        creds=parse_creds(creds) if creds else None,
        insecure_hosts=tuple(insecure or ()),
    )


class _RichProgress:
    """Progress bars (downloads) and spinners (scans, with the time they have taken) on
    stderr: only used when it is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TransferSpeedColumn,
        )
        from rich.text import Text

        download, speed = DownloadColumn(), TransferSpeedColumn()

        class Amount(ProgressColumn):
            def render(self, task: Any) -> Text:
                if task.fields.get("status"):
                    return Text(f"{int(task.elapsed or 0)}s", style="progress.elapsed")
                return Text.assemble(download.render(task), " ", speed.render(task))

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            Amount(),
            console=Console(stderr=True, color_system="auto" if _colour(sys.stderr) else None),
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> _RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def start(self, key: str, description: str, total: int | None) -> None:
        self._tasks[key] = self._bars.add_task(description, total=total)

    def status(self, key: str, description: str) -> None:
        """A spinner for work of unknown length (a scan), with its elapsed time."""
        self._tasks[key] = self._bars.add_task(description, total=None, status=True)

    def advance(self, key: str, amount: int) -> None:
        if key in self._tasks:
            self._bars.advance(self._tasks[key], amount)

    def finish(self, key: str) -> None:
        if key in self._tasks:
            self._bars.remove_task(self._tasks.pop(key))


@contextlib.contextmanager
def _progress() -> Iterator[_RichProgress | None]:
    """Bars and spinners for the block, on a terminal and without -q; also for the
    downloads core code makes without being handed a Progress (kcompat.progress)."""
    if _state.get("quiet") or not sys.stderr.isatty():
        yield None
        return
    from kcompat.progress import reporting

    with _RichProgress() as bars, reporting(bars):
        yield bars


def _version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="no warnings or progress on stderr "
                           "(errors still show)")
    ] = False,
    no_color: Annotated[
        bool, typer.Option("--no-color", help="no colour, even on a terminal (also: NO_COLOR=1)")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                           callback=_version)
    ] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet
    _state["no_color"] = no_color


@app.command("pull", cls=_Command)
def pull_cmd(
    image: ImageArg,
    platform: PlatformOpt = None,
    creds: CredsOpt = None,
    insecure_registry: InsecureOpt = None,
    unpack_rootfs: Annotated[
        bool, typer.Option("--unpack", help="also flatten to a cached rootfs and print its path")
    ] = False,
) -> None:
    """Download an image's layers into the cache (digest-checked, resumable)."""
    store = BlobStore()
    with open_image(image, _options(platform, creds, insecure_registry)) as opened:
        with _progress() as bars:
            pull(opened, store, bars)
        opened.source.verify(opened.image)  # a local source: every blob read and checked
        img = opened.image
        typer.echo(
            f"pulled {img.reference} {img.config.platform} {img.manifest_digest or ''}".rstrip()
        )
        if unpack_rootfs:
            path, issues = unpack(opened, store)
            for issue in issues:
                _warn(str(issue))
            typer.echo(f"rootfs {path}")


@app.command("inspect", cls=_Command)
def inspect_cmd(
    image: ImageArg,
    platform: PlatformOpt = None,
    creds: CredsOpt = None,
    insecure_registry: InsecureOpt = None,
    format: FormatOpt = Format.text,
    binaries: Annotated[
        bool,
        typer.Option(
            "--binaries", help="scan every file: executables, their libc, interpreters, syscalls"
        ),
    ] = False,
    raw: Annotated[
        bool, typer.Option("--raw", help="print the index or manifest as stored (as skopeo)")
    ] = False,
    config_only: Annotated[
        bool, typer.Option("--config", help="print the image's config as stored (as skopeo)")
    ] = False,
) -> None:
    """Show what a reference resolves to: digest, platforms, config, layers."""
    if raw and config_only:
        raise UsageError("--raw and --config each print one document: give one")
    with open_image(image, _options(platform, creds, insecure_registry)) as opened:
        if raw or config_only:  # as skopeo inspect --raw / --config: the stored bytes
            blob = opened.image.raw_root if raw else opened.image.raw_config
            if blob is None:
                raise UsageError(f"{image} has no {'manifest' if raw else 'config'}",
                                 hint="a plain root file system (dir:) has neither")  # fmt: skip
            typer.echo(blob, nl=False)  # byte for byte, as skopeo prints it
            return
        report = inspect_report(opened.image)
        if binaries:
            from kcompat.binaries import binaries_report

            with _progress() as bars:
                if bars is not None:
                    bars.status("scan", f"scanning {image}")
                report["binaries"] = binaries_report(scan_image(opened))
    if format is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(R.inspect_lines(report))
    if binaries:
        _print(R.binaries_lines(report["binaries"]))


@app.command("scan", cls=_Command)
def scan_cmd(
    target: Annotated[str, typer.Argument(metavar="PATH", help="a file or a directory")],
    format: FormatOpt = Format.text,
    root: Annotated[
        bool,
        typer.Option(
            "--root", help="judge the directory as a root file system (loaders, libraries)"
        ),
    ] = False,
) -> None:
    """Scan local files as `inspect --binaries` scans an image.

    Without --root only the files themselves are described; with it, the directory is
    judged as an image's root: missing loaders, libraries and interpreters are named."""
    if not target:
        raise UsageError("scan needs a path", hint="e.g. kcompat scan /usr/bin")
    path = Path(target)
    if not path.exists():
        raise NotFoundError(f"{path}: no such file or directory", hint="give an existing path")
    from kcompat.binaries import binaries_report
    from kcompat.scan import scan_path

    report = binaries_report(scan_path(path), as_root=root and path.is_dir())
    if format is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(R.binaries_lines(report))


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


class FailOn(str, Enum):
    fatal = "fatal"  # an incompatible verdict
    error = "error"  # incompatible or uncertain
    warning = "warning"  # also any warning finding
    never = "never"


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
        help="docker://, oci:DIR[:REF], oci-archive:, docker-archive:, dir: or NAME[:TAG] "
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
SaveOpt = Annotated[
    Optional[Path],
    typer.Option("--save", metavar="FILE", help="write the profile to FILE for --target"),
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


@app.command("check", cls=_Command)
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
    fail_on: FailOnOpt = FailOn.fatal,
    verify: Annotated[
        bool, typer.Option("--verify", help="then run it under the simulated target and compare")
    ] = False,
) -> None:
    """Predict whether IMAGE runs on a target, why not, and how to fix it.

    Arguments after IMAGE replace the image's Cmd, as in docker run. Many images
    (--image, repeated) and many targets (--host, --target FILE and --kernel K, each
    repeatable) make a matrix: every image is judged on every target, printed as one
    table (or one JSON document, --format json), and the exit status is the worst
    cell's."""
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
    if len(refs) > 1 or host + len(files) + len(kernels) > 1:
        if verify:
            raise UsageError("--verify runs one image on one target",
                             hint="give one IMAGE and one target")  # fmt: skip
        _check_matrix(refs, what, platform, creds, insecure_registry, format, fail_on,
                      lambda: _targets(host, files, kernels, arch, vsyscall, cgroup, runtime,
                                       no_binfmt))  # fmt: skip
        return
    ref = refs[0]
    from kcompat.check import BestPlatform, error_report, run_check, sarif

    target: Target | None = None
    try:
        target = _targets(host, files, kernels, arch, vsyscall, cgroup, runtime, no_binfmt)[0][1]
        if verify:
            from kcompat.platform import host_platform

            if target.platform.architecture != host_platform().architecture:
                raise UsageError(
                    f"--verify runs the image on this host: the target's arch "
                    f"({target.platform.architecture}) must be this host's"
                )
        options = _options(platform, creds, insecure_registry)
        best = BestPlatform(target)
        options = replace(options, choose=best)
        with _progress() as bars, open_image(ref, options) as opened:
            if bars is not None:
                bars.status("check", f"checking {ref}")
            rep = run_check(opened, target, what, None if platform else best.why)
            chosen = str(opened.image.config.platform)
    except KcompatError as e:
        if format is not CheckFormat.text:  # a CI gate always gets a valid report
            rep = error_report(ref, target, e)
            typer.echo(json.dumps(rep if format is CheckFormat.json else sarif(rep), indent=2))
        raise
    verification = None
    if verify:
        from kcompat.verify import compare, observe, settle

        assert target is not None
        extra = [f"--insecure-registry={h}" for h in insecure_registry or ()]
        if entrypoint is not None:
            extra.append(f"--entrypoint={entrypoint}")
        if user is not None:
            extra.append(f"--user={user}")
        if workdir is not None:
            extra.append(f"--workdir={workdir}")
        obs = observe(ref, target, chosen, list(what.args), extra)
        verification = compare(rep["verdict"], obs)
        rep["verify"] = verification.to_json()
        settle(rep, verification)
    if format is CheckFormat.json:
        typer.echo(json.dumps(rep, indent=2))
    elif format is CheckFormat.sarif:
        typer.echo(json.dumps(sarif(rep), indent=2))
    else:
        _print(R.check_lines(rep))
        if verification is not None:
            _print(R.verify_lines(verification))
    if verification is not None and verification.agreement == "disagree":
        raise typer.Exit(int(ExitCode.VERIFY_DISAGREED))
    code = R.cell_exit(rep, fail_on.value)
    if code:
        raise typer.Exit(code)


def _check_matrix(
    refs: list[str],
    what: Any,
    platform: str | None,
    creds: str | None,
    insecure: list[str] | None,
    format: CheckFormat,
    fail_on: FailOn,
    make_targets: Any,
) -> None:
    """Every image on every target: each image opened once (one source: one registry
    session, one archive index) and judged against each target (its best index entry
    for that target); an image that cannot be judged is an error cell, the others go on."""
    from kcompat.check import error_report, sarif

    try:
        targets: list[tuple[str | None, Target]] = make_targets()
        options = _options(platform, creds, insecure)
    except KcompatError as e:
        if format is CheckFormat.json:
            doc = R.matrix_document(refs, [], {}, fail_on.value,
                                    error={"message": str(e), "exit_code": int(e.exit_code)})
            typer.echo(json.dumps(doc, indent=2))
        elif format is CheckFormat.sarif:
            typer.echo(json.dumps(sarif(error_report(refs[0], None, e)), indent=2))
        raise
    reports: dict[tuple[int, int], dict[str, Any]] = {}
    with _progress() as bars:
        for i, ref in enumerate(refs):
            reports.update(_judge_each(i, ref, targets, what, options, bars))
    named = [(R.target_label(t.to_json(), given), t.to_json()) for given, t in targets]
    doc = R.matrix_document(refs, named, reports, fail_on.value)
    if format is CheckFormat.json:
        typer.echo(json.dumps(doc, indent=2))
    elif format is CheckFormat.sarif:
        typer.echo(json.dumps(R.matrix_sarif(doc), indent=2))
    else:
        _print(R.matrix_lines(doc))
    if doc["exit_code"]:
        raise typer.Exit(doc["exit_code"])


def _judge_each(
    i: int,
    ref: str,
    targets: list[tuple[str | None, Target]],
    what: Any,
    options: Options,
    bars: _RichProgress | None,
) -> dict[tuple[int, int], dict[str, Any]]:
    from kcompat.check import BestPlatform, error_report, run_check
    from kcompat.platform import host_platform
    from kcompat.pull import OpenImage
    from kcompat.reference import parse_reference
    from kcompat.sources import open_source

    out: dict[tuple[int, int], dict[str, Any]] = {}
    try:
        source = open_source(parse_reference(ref), options)
    except KcompatError as e:
        return {(i, t): error_report(ref, target, e) for t, (_, target) in enumerate(targets)}
    try:
        for t, (given, target) in enumerate(targets):
            key = f"check {i} {t}"
            if bars is not None:
                where = given or ("this host" if target.source == "host" else target.source)
                bars.status(key, f"checking {ref} for {where}")
            try:
                best = BestPlatform(target)
                image = source.resolve(options.platform, host_platform(), best)
                out[(i, t)] = run_check(OpenImage(source, image), target, what,
                                        None if options.platform else best.why)  # fmt: skip
            except KcompatError as e:
                out[(i, t)] = error_report(ref, target, e)
            finally:
                if bars is not None:
                    bars.finish(key)
    finally:
        source.close()
    return out


@app.command("host", cls=_Command)
def host_cmd(
    format: FormatOpt = Format.text,
    save: SaveOpt = None,
) -> None:
    """Probe this machine: kernel, arch, compat modes, binfmt_misc, vsyscall, cgroups..."""
    profile = probe_host().to_json()
    if save is not None:
        tmp = save.with_name(save.name + ".partial")
        try:
            tmp.write_text(json.dumps(profile, indent=2) + "\n")
            tmp.replace(save)
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise LocalIOError(
                f"cannot write {save}: {e.strerror}", hint="give a writable path to --save"
            ) from None
    if format is Format.json:
        typer.echo(json.dumps(profile, indent=2))
        return
    lines = R.host_lines(profile)
    if save is not None:
        lines.append(f"saved {save}")
    _print(lines)


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
RuntimeArgOpt = Annotated[
    Optional[list[str]],
    typer.Option("--runtime-arg", metavar="ARG",
                 help="with --runtime: pass ARG to the engine's run (repeatable; "
                 "e.g. --runtime-arg=-d --runtime-arg=--name=web)"),
]


@app.command(
    "run",
    cls=_Command,
    context_settings={"allow_interspersed_args": False},
)
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
) -> None:
    """Run IMAGE: natively in namespaces, or through qemu-user for a foreign arch.

    With --runtime docker|podman the image is judged here the same way, then that
    engine runs exactly the judged image (by digest, or loaded into it) with the same
    options; its exit status is kcompat's."""
    from kcompat.check import BestPlatform
    from kcompat.run import RunOptions, host_target, prepare, validate

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
    if engine is not None:
        _run_with_engine(image, opts, engine, tuple(runtime_arg or ()), platform, creds,
                         insecure_registry, profile)  # fmt: skip
        return
    from kcompat.container import run as run_container

    checked = validate(opts)  # before anything is pulled
    target = host_target(profile)
    store = BlobStore()
    best = BestPlatform(target)
    options = replace(_options(platform, creds, insecure_registry), choose=best)
    with open_image(image, options) as opened:
        prepared = prepare(opened, opts, store, target, None if platform else best.why, checked)
        _layer_warnings(prepared.prediction)
    _prediction_warnings(prepared.prediction, image, kernel)
    if kernel:  # a simulation says what it simulates and what it cannot
        for note in prepared.notes:
            _warn(note)
        if not no_predict:
            _warn(f"prediction for Linux {kernel}: {prepared.prediction.verdict}")
    code = run_container(prepared.spec)
    if keep and prepared.spec.keep_dir is not None:
        _warn(f"writable layer kept in {prepared.spec.keep_dir / 'upper'}")
    raise typer.Exit(code)


def _layer_warnings(pred: Any) -> None:
    for f in pred.findings:
        if f["rule"] == "layer-entries":
            for issue in f["evidence"]:
                _warn(issue)


def _prediction_warnings(pred: Any, image: str, kernel: str | None) -> None:
    if pred.verdict == "uncertain":
        titles = "; ".join(f["title"] for f in pred.findings if f["severity"] == "uncertain")
        _warn(f"prediction uncertain: {titles} (kcompat check {image} for details)")
    elif pred.verdict == "incompatible" and not kernel:
        _warn("prediction incompatible, running anyway (--force)")


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
    from kcompat.check import BestPlatform
    from kcompat.run import validate

    which = handoff.Engine(engine.value)
    handoff.refuse_unsupported(opts, which)
    binary = handoff.find_engine(which)
    if opts.network not in ("host", "none"):  # the engine's own network: it checks it
        handoff.network_for_engine(opts.network)
        checked = validate(replace(opts, network="host"))
    else:
        checked = validate(opts)  # before anything is pulled
    target = handoff.engine_host(profile)
    best = BestPlatform(target)
    options = replace(_options(platform, creds, insecure), choose=best)
    with open_image(image, options) as opened:
        with _progress() as bars:
            if bars is not None:
                bars.status("handoff", f"checking {image}")
            why = None if platform else best.why
            plan = handoff.prepare_handoff(opened, opts, checked, which, target, options,
                                           runtime_args, why, binary=binary)  # fmt: skip
        _layer_warnings(plan.prediction)
    _prediction_warnings(plan.prediction, image, None)
    for note in plan.notes:
        _info(note)
    raise typer.Exit(handoff.execute(plan))


binfmt_app = typer.Typer(help="The host's binfmt_misc registrations for qemu-user (root).",
                         cls=_Group, no_args_is_help=True)  # fmt: skip
app.add_typer(binfmt_app, name="binfmt")
ArchesArg = Annotated[
    Optional[list[str]], typer.Argument(metavar="ARCH", help="OCI arches, e.g. arm64 s390x")
]


@binfmt_app.command("list", cls=_Command)
def binfmt_list_cmd(format: FormatOpt = Format.text) -> None:
    """Show the registered binfmt_misc entries and whether containers can use them."""
    from kcompat.target import probe_binfmt

    entries = probe_binfmt()
    if format is Format.json:
        typer.echo(json.dumps([e.__dict__ | {"arch": e.arch} for e in entries], indent=2))
        return
    if not entries:
        typer.echo("no binfmt_misc entries (or binfmt_misc is not mounted)")
    for e in entries:
        usable = "usable in containers" if e.usable_in_container() else "not usable in containers"
        typer.echo(
            f"{e.name}: {'enabled' if e.enabled else 'disabled'} flags={e.flags or '-'} "
            f"{e.interpreter} ({usable})"
        )


@binfmt_app.command("install", cls=_Command)
def binfmt_install_cmd(arches: ArchesArg = None) -> None:
    """Register qemu-user host-wide with flag F (all foreign arches found if none given)."""
    from kcompat.binfmt import install

    for name, interp in install(arches or []):
        typer.echo(f"registered {name}: {interp}")


@binfmt_app.command("remove", cls=_Command)
def binfmt_remove_cmd(arches: ArchesArg = None) -> None:
    """Remove kcompat's qemu-user registrations (all of them if no arch is given)."""
    from kcompat.binfmt import remove

    for name in remove(arches or []):
        typer.echo(f"removed {name}")


def _on_sigint(_sig: int, _frame: object) -> None:
    _state["interrupted"] = True
    raise KeyboardInterrupt


def main() -> None:
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)  # `run` forwards it to the container
    try:
        rc = app(standalone_mode=False, prog_name="kcompat")
        if _state.get("interrupted"):  # typer turns ^C into a silent exit 130
            typer.echo("kcompat: interrupted", err=True)
            sys.exit(int(ExitCode.INTERRUPTED))
        if isinstance(rc, int) and rc:
            sys.exit(rc)  # typer.Exit(code) comes back as the return value here
    except KcompatError as e:
        if _state["debug"]:
            traceback.print_exc()
        _stderr_line("error: ", "bold red", str(e))
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt:
        typer.echo("kcompat: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except BrokenPipeError:
        # the reader went away (`kcompat inspect ... | head -1`): end quietly, as other
        # CLIs do when SIGPIPE ends them; stdout is pointed at /dev/null so the final
        # flush cannot fail again
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(128 + 13)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except SystemExit as e:
        # click answers a closed stdout (EPIPE) with exit 1, which here means "failed
        # its --fail-on": it marks the case by wrapping stdout; end as SIGPIPE would
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            sys.exit(128 + 13)
        raise e
    except typer.Abort:
        typer.echo("kcompat: aborted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except Exception as e:
        # Usage errors from the option parser (click, vendored in newer typer) show
        # themselves; recognise them by that interface, whichever click it is.
        show = getattr(e, "show", None)
        if callable(show) and isinstance(getattr(e, "exit_code", None), int):
            show()
            sys.exit(int(ExitCode.USAGE))
        if _state["debug"]:
            raise
        typer.echo(
            f"kcompat: internal error: {e.__class__.__name__}: {e} "
            "(run with --debug for a traceback and report it)",
            err=True,
        )
        sys.exit(70)
