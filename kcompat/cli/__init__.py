"""The command line: parse options, call the core, print. The only package that prints.

`app` is the typer application: its global options, and the commands of the modules
here, one per command group, each only parsing options and calling the core (images:
pull, inspect, scan; check; host; run; binfmt), registered in the order `--help` lists
them. `main` is the `kcompat` command (kcompat.__main__): it turns errors into one line
and the exit status of their kind (kcompat.errors). What a command prints is rendered
by kcompat.render (lines of styled spans) and printed by kcompat.cli.common.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Iterator, MutableMapping
from typing import Annotated, Any, NoReturn

import typer
import typer.main
from typer.core import TyperCommand
from typer.models import CommandInfo, TyperInfo

from kcompat import __version__
from kcompat.cli.binfmt import binfmt_app
from kcompat.cli.check import check_cmd
from kcompat.cli.common import Command, Group, state, stderr_line
from kcompat.cli.host import host_cmd
from kcompat.cli.images import inspect_cmd, pull_cmd, scan_cmd
from kcompat.cli.run import run_cmd
from kcompat.errors import ExitCode, KcompatError

# The commands, registered here in the order `--help` lists them; the app's group
# (_Root) turns one into its click command only when it is run or its help is shown:
# typer reads every parameter of every command to build one, about 9 ms of a start-up
# that runs one command.
_commands = typer.Typer()
_commands.command("pull", cls=Command)(pull_cmd)
_commands.command("inspect", cls=Command)(inspect_cmd)
_commands.command("scan", cls=Command)(scan_cmd)
_commands.command("check", cls=Command)(check_cmd)
_commands.command("host", cls=Command)(host_cmd)
_commands.command("run", cls=Command, context_settings={"allow_interspersed_args": False})(
    run_cmd
)
_commands.add_typer(binfmt_app, name="binfmt")


class _LazyCommands(MutableMapping[str, Any]):
    """The root group's commands by name, each built by typer on first access."""

    def __init__(self, infos: dict[str, CommandInfo | TyperInfo]) -> None:
        self.infos = infos
        self.built: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.built:
            info = self.infos[name]  # KeyError: no such command
            if isinstance(info, TyperInfo):
                self.built[name] = typer.main.get_group_from_info(
                    info, pretty_exceptions_short=True, suggest_commands=True,
                    rich_markup_mode=None)  # fmt: skip
            else:
                self.built[name] = typer.main.get_command_from_info(
                    info, pretty_exceptions_short=True, rich_markup_mode=None
                )
        return self.built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self.infos.setdefault(name, CommandInfo(name=name))
        self.built[name] = command

    def __delitem__(self, name: str) -> None:
        del self.infos[name]
        self.built.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    def short_help(self, name: str, limit: int) -> str:
        """What `--help` lists for a command, from its registration (as click makes
        it from the built command's help), without building it."""
        if name in self.built:
            return str(self.built[name].get_short_help_str(limit))
        info = self.infos[name]
        if isinstance(info, TyperInfo):
            text = typer.main.solve_typer_info_help(info)
        else:
            text = info.help or inspect.getdoc(info.callback) or ""
        stub = TyperCommand(name, help=inspect.cleandoc(text))
        return str(stub.get_short_help_str(limit))

    def hidden(self, name: str) -> bool:
        if name in self.built:
            return bool(self.built[name].hidden)
        return bool(getattr(self.infos[name], "hidden", False))


def _registered() -> dict[str, CommandInfo | TyperInfo]:
    infos: dict[str, CommandInfo | TyperInfo] = {}
    for info in _commands.registered_commands:
        assert info.name is not None
        infos[info.name] = info
    for group in _commands.registered_groups:
        assert isinstance(group.name, str)
        infos[group.name] = group
    return infos


class _Root(Group):
    """The `kcompat` group: its commands built on demand (_LazyCommands)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(_registered())

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # names only: the commands themselves are not built

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        lazy = self.commands
        assert isinstance(lazy, _LazyCommands)
        names = [n for n in lazy if not lazy.hidden(n)]
        if names:  # as click's Group.format_commands lays them out
            limit = formatter.width - 6 - max(len(n) for n in names)
            with formatter.section("Commands"):
                formatter.write_dl([(n, lazy.short_help(n, limit)) for n in names])


app = typer.Typer(
    name="kcompat",
    help="Will this container image run on this host, and if not, why?",
    no_args_is_help=True,
    add_completion=True,  # --install-completion, --show-completion (bash, zsh, fish)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "OS/ARCH[/VARIANT]" is not markup
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_Root,
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
