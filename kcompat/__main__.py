"""`python -m kcompat` and the `kcompat` command. An interrupt while the CLI is still
importing (typer, rich: a few hundred ms) ends as quietly as one later: "interrupted",
exit 130, no traceback; kcompat.cli.main then handles SIGINT itself."""

from __future__ import annotations

import signal
import sys


def _interrupted(_sig: int, _frame: object) -> None:
    sys.stderr.write("kcompat: interrupted\n")
    raise SystemExit(130)


def run() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted)
    from kcompat.cli import main

    if previous is signal.SIG_IGN:  # started with SIGINT ignored: keep it ignored
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    main()


if __name__ == "__main__":
    run()
