"""The CLI run inside the test process: `kcompat.cli.main` with its argv, its output
captured, its exit status returned. The same code path as `python -m kcompat` (option
parsing, the one top-level error handler, rendering), without the interpreter start-up
and imports a subprocess pays each time (most of a warm `check`): for tests that make
many checks of one image. Tests of the process itself (signals, pipes, exit on ^C) start
a real one."""

from __future__ import annotations

import contextlib
import io
import signal
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str


def kcompat(*args: str) -> Result:
    from kcompat.cli import main
    from kcompat.cli.common import state

    out, err = io.StringIO(), io.StringIO()
    argv, handler = sys.argv, signal.getsignal(signal.SIGINT)
    saved = dict(state)
    sys.argv = ["kcompat", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = argv
        signal.signal(signal.SIGINT, handler)
        state.clear()
        state.update(saved)
    return Result(code, out.getvalue(), err.getvalue())
