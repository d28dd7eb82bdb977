"""The command line: parse options, call the core, print. The only module that prints."""

from __future__ import annotations

import contextlib
import json
import sys
import traceback
from dataclasses import replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from kcompat import __version__
from kcompat.auth import parse_creds
from kcompat.errors import ExitCode, KcompatError, LocalIOError, NotFoundError, UsageError
from kcompat.platform import Platform, parse_platform
from kcompat.pull import inspect_report, open_image, pull, scan_image, unpack
from kcompat.sources import Options
from kcompat.store import BlobStore
from kcompat.target import Target, described, load_profile, probe_host
from kcompat.versions import version_key

app = typer.Typer(
    name="kcompat",
    help="Will this container image run on this host, and if not, why?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "OS/ARCH[/VARIANT]" is not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state: dict[str, bool] = {"debug": False}


class Format(str, Enum):
    text = "text"
    json = "json"


PlatformOpt = Annotated[
    Optional[str],
    typer.Option(
        "--platform",
        help="OS/ARCH[/VARIANT] or a uname -m name, e.g. linux/arm64 "
        "(default: $DOCKER_DEFAULT_PLATFORM, as docker)",
        envvar="DOCKER_DEFAULT_PLATFORM",
    ),
]
CredsOpt = Annotated[
    Optional[str],
    typer.Option("--creds", help="USER:PASSWORD for the registry", envvar="KCOMPAT_CREDS"),
]
InsecureOpt = Annotated[
    Optional[list[str]],
    typer.Option("--insecure-registry", help="HOST[:PORT] to reach over plain HTTP (repeatable)"),
]
ImageArg = Annotated[
    str,
    typer.Argument(
        help="docker://, oci:DIR[:REF], oci-archive:, docker-archive:, dir: or NAME[:TAG]"
    ),
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
    """Progress bars on stderr, only when it is a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self._bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
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

    def advance(self, key: str, amount: int) -> None:
        if key in self._tasks:
            self._bars.advance(self._tasks[key], amount)

    def finish(self, key: str) -> None:
        if key in self._tasks:
            self._bars.remove_task(self._tasks.pop(key))


def _warn(message: str) -> None:
    if not _state.get("quiet"):
        typer.echo(f"kcompat: warning: {message}", err=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    quiet: Annotated[
        bool, typer.Option("-q", "--quiet", help="no warnings on stderr (errors still show)")
    ] = False,
    version: Annotated[bool, typer.Option("--version", help="print the version")] = False,
) -> None:
    _state["debug"] = debug
    _state["quiet"] = quiet
    if version:
        typer.echo(__version__)
        raise typer.Exit()


@app.command("pull")
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
        if sys.stderr.isatty():
            with _RichProgress() as bars:
                pull(opened, store, bars)
        else:
            pull(opened, store)
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


@app.command("inspect")
def inspect_cmd(
    image: ImageArg,
    platform: PlatformOpt = None,
    creds: CredsOpt = None,
    insecure_registry: InsecureOpt = None,
    format: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
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

            report["binaries"] = binaries_report(scan_image(opened))
    if format is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_inspect(report)
    if binaries:
        _print_binaries(report["binaries"])


@app.command("scan")
def scan_cmd(
    target: Annotated[str, typer.Argument(help="a file or a directory")],
    format: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
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
    _print_binaries(report)


def _print_binaries(r: dict[str, Any]) -> None:
    s = r["summary"]
    libcs = ", ".join(
        f"{c['family']} {c['version'] or '(version unknown)'} ({c['path']}, {c['evidence']})"
        for c in s["libc"]
    )
    lines = [
        "Binaries:",
        f"  C library:        {libcs or 'none found'}",
        f"  Formats:          {_counts(s['formats'])}",
        f"  Architectures:    {_counts(s['architectures'])}",
        f"  Max ABI tag:      {s['max_abi_tag'] or '-'}",
        f"  Max GLIBC needed: {s['max_glibc_required'] or '-'}",
    ]
    if s["newest_syscall"]:
        top = s["newest_syscall"]
        lines.append(f"  Newest syscall:   {top['name']} (Linux {top['since']})")
    if s["go_versions"]:
        lines.append(f"  Go:               {', '.join(s['go_versions'])}")
    for interp, present in s["interpreters"].items():
        lines.append(f"  Interpreter:      {interp}{'' if present else '  MISSING'}")
    for path, missing in s["missing_libraries"].items():
        lines.append(f"  Missing libs:     {path}: {', '.join(missing)}")
    for path in s["missing_interpreters"]:
        lines.append(f"  No interpreter:   {path}")
    for path, reason in s["unreadable"].items():
        lines.append(f"  Unreadable:       {path}: {reason}")
    for path in s["windows_or_macos"]:
        lines.append(f"  Not Linux:        {path}")
    lines.append("")
    for b in r["binaries"]:
        lines.append(_binary_line(b))
    typer.echo("\n".join(lines))


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "-"


def _binary_line(b: dict[str, Any]) -> str:
    if b.get("unreadable"):
        return f"{b['path']}  unreadable: {b['unreadable']}"
    if b["format"] == "script":
        found = "  (interpreter MISSING)" if b["interpreter_found"] is False else ""
        return f"{b['path']}  script #!{b['interpreter']}{found}"
    if b["format"] in ("pe", "macho"):
        arch = b["arch"] if isinstance(b["arch"], str) else "+".join(b["arch"])
        return f"{b['path']}  {b['os']} {b['format']} {arch}"
    parts = [b["path"], b["arch"], b["linkage"]]
    if b.get("go_version"):
        parts.append(b["go_version"])
    if b.get("glibc_required"):
        parts.append(f"GLIBC>={b['glibc_required']}")
    if b.get("abi_tag"):
        parts.append(f"ABI-tag {b['abi_tag']}")
    needs = b.get("needs")
    if needs:
        floor = version_key(needs["abi_floor"])
        newer = sorted(
            (x for x in needs["syscalls"] if x["since"] and version_key(x["since"]) > floor),
            key=lambda x: version_key(x["since"]),
        )
        text = f"syscalls {len(needs['syscalls'])}"
        if newer:
            listed = ", ".join(f"{x['name']} {x['since']}" for x in newer)
            text += f" (newer than {needs['abi_floor']}: {listed})"
        if not needs["complete"]:
            text += f" [{needs['method']}]"
        if needs["unresolved_sites"]:
            text += f", {needs['unresolved_sites']} sites unresolved"
        parts.append(text)
    if b.get("missing_libraries"):
        parts.append("MISSING " + ", ".join(b["missing_libraries"]))
    return "  ".join(parts)


class CheckFormat(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"


class FailOn(str, Enum):
    fatal = "fatal"  # an incompatible verdict
    error = "error"  # incompatible or uncertain
    warning = "warning"  # also any warning finding
    never = "never"


def _target(
    host: bool,
    target_file: Path | None,
    kernel: str | None,
    arch: str | None,
    vsyscall: str | None,
    cgroup: str | None,
    runtime: str | None,
    no_binfmt: bool,
) -> Target:
    described_opts = [arch, vsyscall, cgroup, runtime] + ([True] if no_binfmt else [])
    if target_file is not None and (kernel or host or any(described_opts)):
        raise UsageError("--target FILE cannot be combined with --host or --kernel/--arch/...")
    if target_file is not None:
        return load_profile(target_file)
    if kernel is not None:
        if host:
            raise UsageError("--host and --kernel describe different targets: give one")
        return described(kernel, arch, vsyscall, cgroup, runtime, binfmt=not no_binfmt)
    if any(described_opts):
        raise UsageError(
            "a described target needs --kernel", hint="e.g. --kernel 3.10 --arch amd64"
        )
    return probe_host()


CommandArg = Annotated[
    Optional[list[str]], typer.Argument(help="command to judge instead of the image's own")
]
HostOpt = Annotated[bool, typer.Option("--host", help="judge against this machine (default)")]
TargetOpt = Annotated[
    Optional[Path], typer.Option("--target", help="a profile saved by 'kcompat host --save'")
]
KernelOpt = Annotated[
    Optional[str], typer.Option("--kernel", help="described target: kernel version, e.g. 3.10")
]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="described target: architecture")]
VsyscallOpt = Annotated[Optional[str], typer.Option("--vsyscall", help="emulate, xonly or none")]
CgroupOpt = Annotated[Optional[str], typer.Option("--cgroup", help="v1, v2 or hybrid")]
RuntimeOpt = Annotated[Optional[str], typer.Option("--runtime", help="e.g. docker:20.10.7")]
NoBinfmtOpt = Annotated[
    bool, typer.Option("--no-binfmt", help="the described target has no qemu-user handlers")
]
CheckFormatOpt = Annotated[CheckFormat, typer.Option("--format", help="text, json or sarif")]
FailOnOpt = Annotated[
    FailOn,
    typer.Option("--fail-on", help="exit 1 on: fatal (incompatible), error (+uncertain), warning"),
]
SaveOpt = Annotated[
    Optional[Path], typer.Option("--save", help="write the profile to FILE for --target")
]


CheckEntrypointOpt = Annotated[
    Optional[str],
    typer.Option("--entrypoint", help="judge with this Entrypoint (as docker run); '' clears it"),
]
CheckUserOpt = Annotated[
    Optional[str], typer.Option("-u", "--user", help="judge as this UID[:GID] or name")
]
CheckWorkdirOpt = Annotated[
    Optional[str], typer.Option("-w", "--workdir", help="judge with this working directory")
]


@app.command("check")
def check_cmd(
    image: ImageArg,
    command: CommandArg = None,
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

    Arguments after IMAGE replace the image's Cmd, as in docker run."""
    from kcompat.check import BestPlatform, error_report, run_check, sarif
    from kcompat.execve import Command

    what = Command(tuple(command or ()), entrypoint, user, workdir)
    target: Target | None = None
    try:
        target = _target(host, target_file, kernel, arch, vsyscall, cgroup, runtime, no_binfmt)
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
        with open_image(image, options) as opened:
            rep = run_check(opened, target, what, None if platform else best.why)
            chosen = str(opened.image.config.platform)
    except KcompatError as e:
        if format is not CheckFormat.text:  # a CI gate always gets a valid report
            rep = error_report(image, target, e)
            typer.echo(json.dumps(rep if format is CheckFormat.json else sarif(rep), indent=2))
        raise
    verification = None
    if verify:
        from kcompat.verify import compare, observe

        assert target is not None
        extra = [f"--insecure-registry={h}" for h in insecure_registry or ()]
        if entrypoint is not None:
            extra.append(f"--entrypoint={entrypoint}")
        if user is not None:
            extra.append(f"--user={user}")
        if workdir is not None:
            extra.append(f"--workdir={workdir}")
        obs = observe(image, target, chosen, list(what.args), extra)
        verification = compare(rep["verdict"], obs)
        rep["verify"] = verification.to_json()
    if format is CheckFormat.json:
        typer.echo(json.dumps(rep, indent=2))
    elif format is CheckFormat.sarif:
        typer.echo(json.dumps(sarif(rep), indent=2))
    else:
        _print_check(rep)
        if verification is not None:
            _print_verify(verification)
    if verification is not None and verification.agreement == "disagree":
        raise typer.Exit(int(ExitCode.VERIFY_DISAGREED))
    verdict = rep["verdict"]
    failing = {
        FailOn.fatal: verdict == "incompatible",
        FailOn.error: verdict in ("incompatible", "uncertain"),
        FailOn.warning: verdict in ("incompatible", "uncertain")
        or any(f["severity"] == "warning" for f in rep["findings"]),
        FailOn.never: False,
    }[fail_on]
    if failing:
        raise typer.Exit(int(ExitCode.CHECK_FAILED))


def _print_verify(v: Any) -> None:
    o = v.observed
    mark = {"agree": "AGREE", "disagree": "DISAGREEMENT", "uncertain": "UNDECIDED"}
    lines = [
        f"Verify ({o.simulated}): {' '.join(o.command)}",
        f"  observed: {o.outcome}, exit {o.exit_code}"
        + (f", first error: {o.first_error}" if o.first_error else ""),
        f"  {mark[v.agreement]}: {v.summary}",
    ]
    if v.agreement == "disagree":
        lines.insert(0, "!" * 72)
        lines.append("!" * 72)
    typer.echo("\n".join(lines))


_MARK = {"fatal": "FAIL", "uncertain": "MAYBE", "warning": "WARN", "info": "ok"}


def _print_check(rep: dict[str, Any]) -> None:
    t = rep["target"]
    where = "this host" if t["source"] == "host" else t["source"]
    lines = [
        f"{rep['image']['reference']} ({rep['image']['platform']}) on {where}: "
        f"Linux {t['kernel'] or '?'} {t['platform']}",
        f"Entrypoint: {' '.join(rep['entrypoint']['argv']) or '-'}"
        + (f"  -> {rep['entrypoint']['binary']}" if rep["entrypoint"]["binary"] else ""),
        f"Verdict: {rep['verdict'].upper()}",
    ]
    if rep["image"].get("chosen_because"):
        lines.insert(1, f"Platform: {rep['image']['platform']} ({rep['image']['chosen_because']})")
    order = ["fatal", "uncertain", "warning", "info"]
    for f in sorted(rep["findings"], key=lambda f: order.index(f["severity"])):
        lines.append(f"  [{_MARK[f['severity']]}] {f['title']}")
        lines.append(f"      {f['explanation']}")
        for ev in f["evidence"][:6]:
            lines.append(f"      evidence: {ev}")
        if len(f["evidence"]) > 6:
            lines.append(f"      ... {len(f['evidence']) - 6} more (--format json)")
        if f["fix"]:
            lines.append(f"      fix: {f['fix']}")
    for note in t.get("notes", []):
        lines.append(f"  note: {note}")
    typer.echo("\n".join(lines))


@app.command("host")
def host_cmd(
    format: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
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
    lines = [
        f"Kernel:          {profile['kernel'] or 'unknown'}",
        f"Platform:        {profile['platform']}",
        f"Compat modes:    {', '.join(profile['compat_arches']) or 'none'}",
        f"vsyscall:        {profile['vsyscall'] or 'unknown'}",
        f"cgroup:          {profile['cgroup'] or 'unknown'}",
        f"seccomp:         {profile['seccomp'] or 'unknown'}",
        f"user namespaces: {profile['userns']}",
        f"private binfmt:  {profile['private_binfmt']}",
        f"qemu-user:       {', '.join(f'{a}={p}' for a, p in profile['qemu'].items()) or 'none'}",
        "binfmt_misc:",
        *[
            f"  {b['name']}: {'enabled' if b['enabled'] else 'disabled'} flags={b['flags'] or '-'} "
            f"{b['interpreter']} ({'static' if b['interpreter_static'] else 'not static'})"
            for b in profile["binfmt"]
        ],
        f"runtimes:        {_counts(profile['runtimes']) if profile['runtimes'] else 'none'}",
        f"syscalls absent: {' '.join(profile['absent_syscalls'] or []) or '-'}"
        if profile["absent_syscalls"] is not None
        else "syscalls absent: not probed",
        f"syscalls EPERM:  {' '.join(profile['blocked_syscalls'] or []) or '-'}"
        if profile["blocked_syscalls"] is not None
        else "syscalls EPERM:  not probed",
        *[f"note: {n}" for n in profile["notes"]],
    ]
    if save is not None:
        lines.append(f"saved {save}")
    typer.echo("\n".join(lines))


RunCommandArg = Annotated[
    Optional[list[str]], typer.Argument(help="command and arguments (replace the image's CMD)")
]
EnvOpt = Annotated[
    Optional[list[str]], typer.Option("-e", "--env", help="VAR=value, or VAR from here")
]
EnvFileOpt = Annotated[Optional[list[Path]], typer.Option("--env-file", help="file of VAR=value")]
VolumeOpt = Annotated[
    Optional[list[str]], typer.Option("-v", "--volume", help="HOST:CONTAINER[:ro]")
]
Flag = bool
WorkdirOpt = Annotated[Optional[str], typer.Option("-w", "--workdir")]
UserOpt = Annotated[Optional[str], typer.Option("-u", "--user", help="UID[:GID] or name")]
EntrypointOpt = Annotated[Optional[str], typer.Option("--entrypoint")]
HostnameOpt = Annotated[Optional[str], typer.Option("--hostname")]
MemoryOpt = Annotated[Optional[str], typer.Option("-m", "--memory", help="e.g. 512m")]
CpusOpt = Annotated[Optional[str], typer.Option("--cpus", help="e.g. 1.5")]
PidsOpt = Annotated[Optional[int], typer.Option("--pids-limit")]
SimKernelOpt = Annotated[
    Optional[str], typer.Option("--kernel", help="simulate this older kernel, e.g. 3.10")
]
TmpfsOpt = Annotated[
    Optional[list[str]], typer.Option("--tmpfs", help="PATH[:OPTIONS] a tmpfs mount")
]
SecurityOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--security-opt", help="seccomp=unconfined|PROFILE.json, no-new-privileges[=false]"
    ),
]
CapAddOpt = Annotated[
    Optional[list[str]], typer.Option("--cap-add", help="add a capability (or ALL)")
]
CapDropOpt = Annotated[
    Optional[list[str]], typer.Option("--cap-drop", help="drop a capability (or ALL)")
]
ProfileOpt = Annotated[
    Optional[Path], typer.Option("--profile", help="this host's profile from 'host --save'")
]


@app.command(
    "run",
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
    network: Annotated[str, typer.Option("--network", help="host or none")] = "host",
    interactive: Annotated[Flag, typer.Option("-i", "--interactive", help="keep stdin")] = False,
    tty: Annotated[Flag, typer.Option("-t", "--tty", help="allocate a pty")] = False,
    read_only: Annotated[Flag, typer.Option("--read-only", help="read-only root")] = False,
    rm: Annotated[Flag, typer.Option("--rm", help="discard the writable layer (default)")] = False,
    keep: Annotated[Flag, typer.Option("--keep", help="keep the writable layer")] = False,
    memory: MemoryOpt = None,
    cpus: CpusOpt = None,
    pids_limit: PidsOpt = None,
    force: Annotated[Flag, typer.Option("--force", help="run even if judged incompatible")] = False,
    no_predict: Annotated[
        Flag, typer.Option("--no-predict", help="skip the prediction (implies --force)")
    ] = False,
    profile: ProfileOpt = None,
    rootfs_mode: Annotated[
        str, typer.Option("--rootfs-mode", help="auto, overlay or copy (the writable layer)")
    ] = "auto",
    kernel: SimKernelOpt = None,
    seccomp_eperm: Annotated[
        Flag, typer.Option("--seccomp-eperm", help="with --kernel: newer syscalls get EPERM")
    ] = False,
    init: Annotated[
        Flag, typer.Option("--init", help="kcompat's init as PID 1: reaps, forwards signals")
    ] = False,
    tmpfs: TmpfsOpt = None,
    security_opt: SecurityOpt = None,
    cap_add: CapAddOpt = None,
    cap_drop: CapDropOpt = None,
    userns: Annotated[
        str,
        typer.Option(
            "--userns", help="host, or auto (as root: container root is an unprivileged uid)"
        ),
    ] = "host",
    privileged: Annotated[
        Flag,
        typer.Option(
            "--privileged", help="all capabilities, no seccomp, no masked or read-only paths"
        ),
    ] = False,
) -> None:
    """Run IMAGE: natively in namespaces, or through qemu-user for a foreign arch."""
    from kcompat.check import BestPlatform
    from kcompat.container import run as run_container
    from kcompat.run import RunOptions, host_target, prepare, validate

    if rm and keep:
        raise UsageError("--rm and --keep contradict each other: give one")
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
    checked = validate(opts)  # before anything is pulled
    target = host_target(profile)
    store = BlobStore()
    best = BestPlatform(target)
    options = replace(_options(platform, creds, insecure_registry), choose=best)
    with open_image(image, options) as opened:
        prepared = prepare(opened, opts, store, target, None if platform else best.why, checked)
        for f in prepared.prediction.findings:
            if f["rule"] == "layer-entries":
                for issue in f["evidence"]:
                    _warn(issue)
    pred = prepared.prediction
    if pred.verdict == "uncertain":
        titles = "; ".join(f["title"] for f in pred.findings if f["severity"] == "uncertain")
        _warn(f"prediction uncertain: {titles} (kcompat check {image} for details)")
    elif pred.verdict == "incompatible" and not kernel:
        _warn("prediction incompatible, running anyway (--force)")
    if kernel:  # a simulation says what it simulates and what it cannot
        for note in prepared.notes:
            _warn(note)
        if not no_predict:
            _warn(f"prediction for Linux {kernel}: {pred.verdict}")
    code = run_container(prepared.spec)
    if keep and prepared.spec.keep_dir is not None:
        _warn(f"writable layer kept in {prepared.spec.keep_dir / 'upper'}")
    raise typer.Exit(code)


binfmt_app = typer.Typer(help="The host's binfmt_misc registrations for qemu-user (root).")
app.add_typer(binfmt_app, name="binfmt")
ArchesArg = Annotated[Optional[list[str]], typer.Argument(help="OCI arches, e.g. arm64 s390x")]


@binfmt_app.command("list")
def binfmt_list_cmd(
    format: Annotated[Format, typer.Option("--format", help="text or json")] = Format.text,
) -> None:
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


@binfmt_app.command("install")
def binfmt_install_cmd(arches: ArchesArg = None) -> None:
    """Register qemu-user host-wide with flag F (all foreign arches found if none given)."""
    from kcompat.binfmt import install

    for name, interp in install(arches or []):
        typer.echo(f"registered {name}: {interp}")


@binfmt_app.command("remove")
def binfmt_remove_cmd(arches: ArchesArg = None) -> None:
    """Remove kcompat's qemu-user registrations (all of them if no arch is given)."""
    from kcompat.binfmt import remove

    for name in remove(arches or []):
        typer.echo(f"removed {name}")


def _print_inspect(r: dict[str, Any]) -> None:
    cfg = r["config"]
    platform = "/".join(x for x in (r["os"], r["architecture"], r["variant"]) if x)
    lines = [
        f"Reference:    {r['reference']}",
        f"Digest:       {r['digest'] or '(none: local archive)'}",
        f"Media type:   {r['mediaType'] or '-'}",
    ]
    if r["index"]:
        lines.append(f"Index:        {r['index']['digest']}")
        lines.append(f"Platforms:    {', '.join(r['index']['platforms'])}")
    lines += [
        f"Platform:     {platform}",
        f"Created:      {cfg['created'] or '-'}",
        f"Entrypoint:   {json.dumps(cfg['entrypoint'])}",
        f"Cmd:          {json.dumps(cfg['cmd'])}",
        f"Workdir:      {cfg['workdir'] or '/'}",
        f"User:         {cfg['user'] or '(root)'}",
        "Env:",
        *[f"  {e}" for e in cfg["env"]],
        "Labels:" if cfg["labels"] else "Labels:       -",
        *[f"  {k}={v}" for k, v in cfg["labels"].items()],
        f"Layers ({len(r['layers'])}):",
        *[
            f"  {layer['digest']}  {layer['size']:>12}  {layer['mediaType']}"
            for layer in r["layers"]
        ],
    ]
    typer.echo("\n".join(lines))


def _on_sigint(_sig: int, _frame: object) -> None:
    _state["interrupted"] = True
    raise KeyboardInterrupt


def main() -> None:
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)  # `run` forwards it to the container
    try:
        rc = app(standalone_mode=False)
        if _state.get("interrupted"):  # typer turns ^C into a silent exit 130
            typer.echo("kcompat: interrupted", err=True)
            sys.exit(int(ExitCode.INTERRUPTED))
        if isinstance(rc, int) and rc:
            sys.exit(rc)  # typer.Exit(code) comes back as the return value here
    except KcompatError as e:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"kcompat: error: {e}", err=True)
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
