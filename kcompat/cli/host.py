"""`kcompat host`: this machine as a target, and its profile for `check --target`."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from kcompat.cli.common import Format, FormatOpt, print_lines
from kcompat.errors import LocalIOError

SaveOpt = Annotated[
    Optional[Path],
    typer.Option("--save", metavar="FILE", help="write the profile to FILE for --target"),
]


def host_cmd(
    format: FormatOpt = Format.text,
    save: SaveOpt = None,
) -> None:
    """Probe this machine: kernel, arch, compat modes, binfmt_misc, vsyscall, cgroups..."""
    from kcompat import render as R
    from kcompat.target import probe_host

    profile = probe_host().to_json()
    if save is not None:
        _save(profile, save)
    if format is Format.json:
        typer.echo(json.dumps(profile, indent=2))
        return
    lines = R.host_lines(profile)
    if save is not None:
        lines.append(f"saved {save}")
    print_lines(lines)


def _save(profile: dict[str, object], save: Path) -> None:
    # Profile writing belongs with load_profile in kcompat.target (target.save_profile);
    # here until that module is free to edit.
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
