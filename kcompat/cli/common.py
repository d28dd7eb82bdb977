"""What every command module of the CLI shares: the help layout, the global options'
state, printing (plain in pipes and in JSON, in colour on a terminal unless NO_COLOR
(https://no-color.org) is set or --no-color is given), warnings, progress bars and
spinners (on stderr, only on a terminal and never with -q), the image options and what
they parse into."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from enum import Enum
from typing import IO, TYPE_CHECKING, Annotated, Any, Optional

import typer
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:  # the core is imported by the commands that use it: --help stays fast
    from kcompat import render as R
    from kcompat.platform import Platform
    from kcompat.sources import Options


def param_name(param: Any) -> str:
    return str(param.metavar or (param.name or "").upper())


def help_rows(cmd: Any, ctx: Any, formatter: Any) -> None:
    """Arguments by their names and help (no type noise such as <str>), then options."""
    args, opts = [], []
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            args.append((param_name(param), getattr(param, "help", None) or ""))
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


class Command(TyperCommand):
    """A command whose usage line names its arguments plainly: IMAGE [CMD]..."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = param_name(param)
                piece = name if param.required else f"[{name}]"
                pieces.append(piece + ("..." if param.nargs != 1 else ""))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        help_rows(self, ctx, formatter)


class Group(TyperGroup):
    def format_options(self, ctx: Any, formatter: Any) -> None:
        help_rows(self, ctx, formatter)
        self.format_commands(ctx, formatter)


# The global options (--debug, -q, --no-color), set by the app's callback; "interrupted"
# by the SIGINT handler.
state: dict[str, bool] = {"debug": False}


def colour(stream: IO[str]) -> bool:
    """Colour only for a terminal, and not when NO_COLOR is set (to anything but the
    empty string, https://no-color.org), TERM is dumb or --no-color was given."""
    if state.get("no_color") or os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def print_lines(lines: R.Lines, err: bool = False) -> None:
    from kcompat import render as R

    stream = sys.stderr if err else sys.stdout
    if not colour(stream):
        typer.echo(R.text(lines), err=err)
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(file=stream, force_terminal=True, soft_wrap=True, highlight=False,
                      markup=False, emoji=False)  # fmt: skip
    for line in lines:
        console.print(Text(line) if isinstance(line, str) else Text.assemble(*line))


def stderr_line(prefix: str, style: str, message: str) -> None:
    print_lines([((f"kcompat: {prefix}", style), (message, ""))], err=True)


def warn(message: str) -> None:
    if not state.get("quiet"):
        stderr_line("warning: ", "bold yellow", message)


def info(message: str) -> None:
    if not state.get("quiet"):
        stderr_line("", "", message)


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
VmKernelOpt = Annotated[
    Optional[str],
    typer.Option("--vm-kernel", metavar="KERNEL",
                 help="boot KERNEL in qemu and run there: debian: or ubuntu:SUITE[/ARCH], a kernel "
                 "image, a kernel .deb or a directory laid out as its package"),
]
VmAppendOpt = Annotated[
    Optional[str],
    typer.Option("--vm-append", metavar="ARGS", help="with --vm-kernel: more kernel command line"),
]


ImageArg = Annotated[
    str,
    typer.Argument(
        metavar="IMAGE",
        help="docker://, oci:DIR[:REF], oci-archive:, docker-archive:, dir:, "
        "docker-daemon:, containers-storage: or NAME[:TAG]",
    ),
]


FormatOpt = Annotated[
    Format, typer.Option("--format", metavar="text|json", help="text or json")
]


def image_options(platform: str | None, creds: str | None, insecure: list[str] | None) -> Options:
    from kcompat.auth import parse_creds
    from kcompat.platform import parse_platform
    from kcompat.reference import check_registry_host
    from kcompat.sources import Options

    wanted: Platform | None = parse_platform(platform) if platform is not None else None
    for host in insecure or ():
        check_registry_host(host)
    return Options(
        platform=wanted,
        creds=parse_creds(creds) if creds else None,
        insecure_hosts=tuple(insecure or ()),
    )


class RichProgress:
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
            console=Console(stderr=True, color_system="auto" if colour(sys.stderr) else None),
            transient=True,
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
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
def progress() -> Iterator[RichProgress | None]:
    """Bars and spinners for the block, on a terminal and without -q; also for the
    downloads core code makes without being handed a Progress (kcompat.progress)."""
    if state.get("quiet") or not sys.stderr.isatty():
        yield None
        return
    from kcompat.progress import reporting

    with RichProgress() as bars, reporting(bars):
        yield bars
