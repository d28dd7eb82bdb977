"""`kcompat binfmt list|install|remove`: the host's binfmt_misc registrations."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from kcompat.cli.common import Command, Format, FormatOpt, Group

binfmt_app = typer.Typer(help="The host's binfmt_misc registrations for qemu-user (root).",
                         cls=Group, no_args_is_help=True)  # fmt: skip
ArchesArg = Annotated[
    Optional[list[str]], typer.Argument(metavar="ARCH", help="OCI arches, e.g. arm64 s390x")
]


@binfmt_app.command("list", cls=Command)
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


@binfmt_app.command("install", cls=Command)
def binfmt_install_cmd(arches: ArchesArg = None) -> None:
    """Register qemu-user host-wide with flag F (all foreign arches found if none given)."""
    from kcompat.binfmt import install

    for name, interp in install(arches or []):
        typer.echo(f"registered {name}: {interp}")


@binfmt_app.command("remove", cls=Command)
def binfmt_remove_cmd(arches: ArchesArg = None) -> None:
    """Remove kcompat's qemu-user registrations (all of them if no arch is given)."""
    from kcompat.binfmt import remove

    for name in remove(arches or []):
        typer.echo(f"removed {name}")
