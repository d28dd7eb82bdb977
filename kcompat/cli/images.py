"""`kcompat pull`, `kcompat inspect` and `kcompat scan`: images and files as they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kcompat.cli.common import (
    CredsOpt,
    Format,
    FormatOpt,
    ImageArg,
    InsecureOpt,
    PlatformOpt,
    image_options,
    print_lines,
    progress,
    warn,
)
from kcompat.errors import NotFoundError, UsageError


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
    from kcompat.pull import open_image, pull, unpack
    from kcompat.store import BlobStore

    store = BlobStore()
    with open_image(image, image_options(platform, creds, insecure_registry)) as opened:
        with progress() as bars:
            pull(opened, store, bars)
        opened.source.verify(opened.image)  # a local source: every blob read and checked
        img = opened.image
        typer.echo(
            f"pulled {img.reference} {img.config.platform} {img.manifest_digest or ''}".rstrip()
        )
        if unpack_rootfs:
            path, issues = unpack(opened, store)
            for issue in issues:
                warn(str(issue))
            typer.echo(f"rootfs {path}")


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
    from kcompat import render as R
    from kcompat.analysis import scan_image
    from kcompat.pull import inspect_report, open_image

    if raw and config_only:
        raise UsageError("--raw and --config each print one document: give one")
    with open_image(image, image_options(platform, creds, insecure_registry)) as opened:
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

            with progress() as bars:
                if bars is not None:
                    bars.status("scan", f"scanning {image}")
                report["binaries"] = binaries_report(scan_image(opened))
    if format is Format.json:
        typer.echo(json.dumps(report, indent=2))
        return
    print_lines(R.inspect_lines(report))
    if binaries:
        print_lines(R.binaries_lines(report["binaries"]))


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
    from kcompat import render as R

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
    print_lines(R.binaries_lines(report))
