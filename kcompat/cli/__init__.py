"""The command line: parse options, call the core, print. The only package that prints.

`app` is the typer application: its global options, and the commands of the modules
here, one per command group, each only parsing options and calling the core (images:
pull, inspect, scan; check; host; run; binfmt), registered in the order `--help` lists
them. `main` is the `kcompat` command (kcompat.__main__): it turns errors into one line
and the exit status of their kind (kcompat.errors). What a command prints is rendered
by kcompat.render (lines of styled spans) and printed by kcompat.cli.common.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated, NoReturn

import typer

from kcompat import __version__
from kcompat.cli.binfmt import binfmt_app
from kcompat.cli.check import check_cmd
from kcompat.cli.common import Command, Group, state, stderr_line
from kcompat.cli.host import host_cmd
from kcompat.cli.images import inspect_cmd, pull_cmd, scan_cmd
from kcompat.cli.run import run_cmd
from kcompat.errors import ExitCode, KcompatError

app = typer.Typer(
    name="kcompat",
    help="Will this container image run on this host, and if not, why?",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "OS/ARCH[/VARIANT]" is not markup
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=Group,
)


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
    state["debug"] = debug
    state["quiet"] = quiet
    state["no_color"] = no_color


app.command("pull", cls=Command)(pull_cmd)
app.command("inspect", cls=Command)(inspect_cmd)
app.command("scan", cls=Command)(scan_cmd)
app.command("check", cls=Command)(check_cmd)
app.command("host", cls=Command)(host_cmd)
app.command("run", cls=Command, context_settings={"allow_interspersed_args": False})(run_cmd)
app.add_typer(binfmt_app, name="binfmt")


def _interrupted() -> NoReturn:
    """Say so and end with 130 at once: an interpreter shutdown would join the scan's
    worker processes and could meet a second SIGINT with the default handler back."""
    import os

    signal_ignore()
    sys.stdout.flush()
    typer.echo("kcompat: interrupted", err=True)
    sys.stderr.flush()
    os._exit(int(ExitCode.INTERRUPTED))


def signal_ignore() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _on_sigint(_sig: int, _frame: object) -> None:
    state["interrupted"] = True
    raise KeyboardInterrupt


def main() -> None:
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _on_sigint)  # `run` forwards it to the container
    try:
        rc = app(standalone_mode=False, prog_name="kcompat")
        if state.get("interrupted"):  # typer turns ^C into a silent exit 130
            _interrupted()
        if isinstance(rc, int) and rc:
            sys.exit(rc)  # typer.Exit(code) comes back as the return value here
    except KcompatError as e:
        if state["debug"]:
            traceback.print_exc()
        stderr_line("error: ", "bold red", str(e))
        sys.exit(int(e.exit_code))
    except KeyboardInterrupt:
        _interrupted()
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
        if state["debug"]:
            raise
        typer.echo(
            f"kcompat: internal error: {e.__class__.__name__}: {e} "
            "(run with --debug for a traceback and report it)",
            err=True,
        )
        sys.exit(70)
