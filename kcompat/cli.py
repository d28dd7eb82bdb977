"""The command line: parse options, call the core, print. The only module that prints."""

from __future__ import annotations

import json
import sys
import traceback
from enum import Enum
from typing import Annotated, Any, Optional

import typer

from kcompat import __version__
from kcompat.auth import parse_creds
from kcompat.errors import ExitCode, KcompatError
from kcompat.platform import Platform, parse_platform
from kcompat.pull import inspect_report, open_image, pull, unpack
from kcompat.sources import Options
from kcompat.store import BlobStore

app = typer.Typer(
    name="kcompat",
    help="Will this container image run on this host, and if not, why?",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_state: dict[str, bool] = {"debug": False}


class Format(str, Enum):
    text = "text"
    json = "json"


PlatformOpt = Annotated[
    Optional[str],
    typer.Option("--platform", help="OS/ARCH[/VARIANT] or a uname -m name, e.g. linux/arm64"),
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
    wanted: Platform | None = parse_platform(platform) if platform else None
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
    typer.echo(f"kcompat: warning: {message}", err=True)


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    version: Annotated[bool, typer.Option("--version", help="print the version")] = False,
) -> None:
    _state["debug"] = debug
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
) -> None:
    """Show what a reference resolves to: digest, platforms, config, layers."""
    with open_image(image, _options(platform, creds, insecure_registry)) as opened:
        report = inspect_report(opened.image)
    if format is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_inspect(report)


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
        f"Entrypoint:   {json.dumps(cfg['entrypoint'])}",
        f"Cmd:          {json.dumps(cfg['cmd'])}",
        f"Workdir:      {cfg['workdir'] or '/'}",
        f"User:         {cfg['user'] or '(root)'}",
        "Env:",
        *[f"  {e}" for e in cfg["env"]],
        f"Layers ({len(r['layers'])}):",
        *[
            f"  {layer['digest']}  {layer['size']:>12}  {layer['mediaType']}"
            for layer in r["layers"]
        ],
    ]
    typer.echo("\n".join(lines))


def main() -> None:
    try:
        app(standalone_mode=False)
    except KcompatError as e:
        if _state["debug"]:
            traceback.print_exc()
        typer.echo(f"kcompat: error: {e}", err=True)
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt:
        typer.echo("kcompat: interrupted", err=True)
        sys.exit(int(ExitCode.INTERRUPTED))
    except typer.Exit as e:
        sys.exit(e.exit_code)
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
